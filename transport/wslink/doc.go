// Package wslink is the WebSocket transport.Link: boardlink's protocol at
// path /v1/ws, JSON-RPC in text messages and stream frames in binary ones.
//
// Each connection has exactly one writer goroutine (gorilla/websocket allows
// one concurrent writer); the reader enforces a per-message limit (an
// oversized message is discarded and reported as transport.ErrTooLarge, the
// connection stays up) under a hard read limit that closes the connection.
// Both ends ping; a peer that stays silent longer than PongWait is dead.
// Close performs the close handshake. The server checks the bearer token in
// constant time before upgrading and answers 401 without it.
package wslink
