// Package agent is the on-board service. It serves the boardlink protocol
// over any transport.Link: session.hello (version negotiation and, on the
// serial link, authentication), board.info and the exec family, with more
// method families added by later protocol versions.
//
// The agent owns no listener logic beyond small components with Start and
// Stop (WebSocketServer, SerialServer) that cmd/boardlinkd wires with fx.
// Commands started over a connection die with it unless started detached;
// Shutdown ends every command's process group.
package agent
