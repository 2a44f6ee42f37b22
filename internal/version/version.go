// Package version holds the build's version, set at link time with
// -ldflags "-X github.com/boardlink/boardlink/internal/version.Version=v1.2.3".
package version

// Version of boardlink and boardlinkd.
var Version = "0.1.0-dev"
