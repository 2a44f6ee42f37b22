// Package wslink is the WebSocket transport.Link: boardlink's protocol at
// path /v1/ws, JSON-RPC in text messages and stream frames in binary ones.
//
// Messages are written one at a time, each in its caller's goroutine
// (gorilla/websocket allows one writer); pings, pongs and the close frame go
// out beside them from the link's own goroutine, so the reader never waits
// on a write. Every write is bounded by WriteTimeout, and one that fails ends
// the link. The reader enforces a per-message limit (an oversized message is
// discarded and reported as transport.ErrTooLarge, the connection stays up)
// under a hard read limit that closes the connection. Both ends ping; a peer
// that stays silent longer than PongWait is dead.
// Close performs the close handshake. The server checks the bearer token in
// constant time before upgrading and answers 401 without it.
//
// Over TLS a large message goes out in one write of the TCP connection
// (Dial's, or a BatchListener's beneath a TLS listener), not one per TLS
// record: a 256 KiB transfer frame was 17 system calls.
package wslink
