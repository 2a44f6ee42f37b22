// Package bootstrap puts the agent on a board that has only a shell on
// its serial console, and starts it there: `boardlink bootstrap`.
//
// Run never writes to a line before it knows what listens there: it
// listens first (an agent's beacon: ErrAgentPresent, nothing typed), then
// types one newline and expects a shell or login prompt (Detect), logs in
// if asked, and drives the shell with commands whose output is delimited
// by markers holding a random token, typed split by an empty quoted
// string so that the echo of a command never holds them; console text
// around them (kernel messages) is no output. Echo is turned off first.
//
// The agent for the board's `uname -m` (FindAgent, or Options.Agent) goes
// gzipped when the board can decompress, in chunks of Options.ChunkSize,
// each written by one command (a here-document through base64 -d, or
// printf octal escapes) and checked by the board's sha256sum; a chunk
// that arrives wrong is sent again. With rz on the board and sz on the
// host the chunks go by ZMODEM instead, and any that did not arrive whole
// by typing. Chunks live in a directory named by the upload's hash, so an
// interrupted run (an *InterruptedError saying how much is on the board)
// is resumed by the next: the chunks there with the right hash are kept.
// The joined, decompressed agent is checked as a whole before it is put
// in place, with Options.Install also into the system with a systemd
// unit or an init script; then the shell execs it on its own tty and Run
// returns at its first beacon, the line free for a client.
//
// Detect and Hint serve the dial path: an agent that does not answer on a
// line whose console text ends in a prompt points the user to bootstrap.
package bootstrap
