// Package auth holds the cryptography both ends of a session share: the
// ed25519 keys that identify boards and hosts, their fingerprints, the
// self-signed TLS certificate a board serves wss:// with, the proofs
// exchanged in session.hello and session.auth (a board's signature, a
// host's signature or a token's MAC, each bound to both nonces and to the
// board's key, so nothing a peer sees can be replayed elsewhere), and the
// SPAKE2 exchange behind pairing with a one-time code.
//
// It imports nothing of boardlink's but internal/atomicfile. The files
// that keep pins and pairings belong to their owners (agent, dispatcher).
package auth
