// Package transport carries boardlink's protocol between a host and an
// agent. A Link moves whole messages (text for JSON-RPC, binary for stream
// frames) in order; Conn, built on any Link, multiplexes concurrent
// requests, notifications and flow-controlled byte streams over it, the same
// at both ends.
//
// Links: package transport/wslink (WebSocket at /v1/ws) and
// transport/seriallink (a CRC-checked, retransmitting framed link over any
// byte stream: a serial port, a pty, a TCP or unix socket, with console
// text kept apart).
package transport
