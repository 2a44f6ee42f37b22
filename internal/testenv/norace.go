//go:build !race

package testenv

// Race is true when the race detector is on.
const Race = false
