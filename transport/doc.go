// Package transport carries boardlink's protocol between a host and an
// agent. A Link moves whole messages (text for JSON-RPC, binary for stream
// frames) in order; Conn, built on any Link, multiplexes concurrent
// requests, notifications and flow-controlled byte streams over it, the same
// at both ends.
//
// A Conn holds a bounded amount for whatever its peer sends: requests
// served at once (Config.MaxInflight; one more is answered busy, and every
// request gets exactly one answer), streams (Config.MaxStreams), stream
// data (each stream's credit window), and control frames (one writer per
// connection drains them; credit is coalesced per stream, and the RSTs
// owed for data on unknown streams are dropped beyond a small bound).
//
// Links: package transport/wslink (WebSocket at /v1/ws) and
// transport/seriallink (a CRC-checked, retransmitting framed link over any
// byte stream: a serial port, a pty, a TCP or unix socket, with console
// text kept apart).
package transport
