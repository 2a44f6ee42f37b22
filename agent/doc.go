// Package agent is the on-board service. It serves the boardlink protocol
// over any transport.Link: session.hello (the version, and the board's
// proof of its key), session.auth and pair.* (who may use the board: a
// paired host's key, a token's MAC, a pairing code), board.info, and the
// exec, file, system and ota families, each only to a session that
// negotiated a version that has it.
//
// The agent owns no listener logic beyond small components with Start and
// Stop (WebSocketServer, SerialServer) that cmd/boardlinkd wires with fx.
// Every size and count a peer controls is bounded (Limits). Commands
// started over a connection die with it unless started detached, and their
// results are kept until the connection collects them; Shutdown ends every
// command's process group.
package agent
