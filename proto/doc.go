// Package proto defines boardlink's wire protocol: the JSON-RPC 2.0
// envelope, the method names and their request and response types, the
// error codes and stable reasons, the binary stream-frame format and the
// protocol's version history, which names the version that added each
// method (MethodVersion, CheckMethodVersion).
//
// docs/protocol.md describes the same protocol for clients in other
// languages; this package's tests decode its examples and check its tables
// against the code.
//
// Both ends share it; it imports nothing else of boardlink's. Every
// decoder here accepts arbitrary bytes without panicking (see the fuzz
// tests), and every request type carries validator/v10 tags checked by
// DecodeParams through one shared validator instance.
package proto
