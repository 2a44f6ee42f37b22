// Package seriallink is boardlink's message link over a byte stream that
// also carries a board's console: a serial port, a pty, or a TCP or unix
// socket in front of one (ser2net, QEMU's serial chardev). Its sessions
// implement transport.Link: whole text or binary messages, in order,
// CRC-checked and retransmitted, with console text kept apart.
//
// # Use
//
// An Endpoint owns the stream (OpenPort for a device, OpenLine for a device
// or tcp:// or unix:// address; any io.ReadWriteCloser works). The host
// calls Dial, the agent Accept; each returns a transport.Link. The host
// never writes before it has heard an agent: Dial waits for a BEACON or any
// valid frame (a boot loader waiting for a key must not get one), and Probe
// finds an agent by listening only. Bytes outside frames are console text,
// read from Endpoint.Console.
//
// # Wire format (version 1)
//
// A frame on the line is
//
//	0x00 0xFE L1 L2 ENC 0x00
//
// The leading 0x00 ends a torn frame that came before. 0xFE starts a frame;
// it never occurs in UTF-8 text, so console text never looks like a frame
// start. ENC is the COBS encoding of BODY and so holds no 0x00; its length
// E is at most 4126 and is sent as L1 = 0x80|E>>7, L2 = 0x80|E&0x7F, bytes
// that are never 0x00 or 0xFE. The final 0x00 ends the frame.
//
// BODY, multi-byte fields big-endian:
//
//	offset  size  field
//	0       1     type: 1 DATA, 2 ACK, 3 SYN, 4 SYNACK, 5 RST, 6 BEACON
//	1       1     flags: DATA 0x01 MORE, 0x02 BINARY, 0x04 ABORT;
//	              ACK 0x08 ACKREQ, 0x10 ECHO
//	2       2     session tag (0 in BEACON)
//	4       2     seq: DATA sequence number; ACK probe id
//	6       2     ack: the next DATA seq the sender of this frame expects
//	8       1     wnd: DATA frames it can take beyond ack
//	9       n     payload, n <= 4096
//	9+n     4     CRC-32C (Castagnoli) of bytes 0 to 9+n
//
// Every frame of a session carries ack and wnd. Payloads by type:
//
//	DATA    a message fragment. MORE: the message goes on in the next seq.
//	        BINARY: a binary message (set on all its fragments). ABORT:
//	        empty; drop the partial message (its writer gave up).
//	ACK     SACK bitmap: bit i (LSB first, byte i/8) set means seq ack+1+i
//	        has arrived. ACKREQ makes it a probe with its id in seq; the
//	        peer answers at once with an ACK carrying ECHO and that id.
//	SYN     hello: version (1), max payload (2 bytes), window (1 byte).
//	        The host picks the tag: random, non-zero, not its last one.
//	SYNACK  the agent's hello, with the SYN's tag.
//	RST     reason (1 byte): 0 closed, 1 no such session (the agent
//	        restarted, or a newer session replaced it), 2 version refused.
//	BEACON  the agent's Config.Beacon bytes, typically JSON naming the board.
//
// # Framing 2: forward error correction
//
// Both hellos may carry a fifth byte, the newest framing the end speaks
// (Config.Framing); a session where both offer 2 sends its DATA and ACK
// frames as
//
//	0x00 0xFF L1 L2 P P P BLOCK... 0x00
//
// (see fec.go): 0xFF starts the frame, P = 0x80|p (three copies, majority
// wins) gives p, the Reed-Solomon parity bytes per block, and each BLOCK is
// M M (codeword XOR M): a piece of rate|BODY of up to 252-p bytes and its
// parity, masked with a byte value M it lacks so that it holds no 0x00.
// The receiver corrects up to p/2 bad bytes per block. rate reports the
// byte error rate the sender sees on its incoming line (0: none, else
// 2^(-rate/16)); each end picks p from its peer's report: 0 on a clean
// line, 8 at 0.1% of bytes corrupted (parityFor); 4 for a session's first
// 32 KiB while the peer reports none (except frames with less than 64
// bytes of payload). A frame that would carry no parity, from an end with
// no error to report, goes in framing 1 instead (fewer bytes); the peer
// takes it as a report of a clean line. SYN, SYNACK, RST and BEACON stay
// in framing 1, and an end with Framing 1 (or an older build) sends the
// 4-byte hello, ignores the fifth byte and so keeps framing 1.
//
// # The compact encoding
//
// A sixth hello byte offers (SYN) and accepts (SYNACK) the compact
// encoding of text messages, proto.CompactVersion: a session where the
// agent accepts it carries each JSON-RPC message as CBOR with a fixed
// dictionary (proto.Compact), a quarter of its JSON size for exec.run.
// The link converts at its edge, so everything above it sees JSON: a
// message is turned back into JSON (proto.FromCompact, bounded by
// MaxMessage) before anyone reads it, and validated as any other. One that
// does not decode is handed on as it is, to be answered as bad JSON. An
// end that does not know the byte (or has Config.JSONOnly) answers without
// it, and the session stays JSON.
//
// # Receiving
//
// The receiver is in TEXT or FRAME state. In TEXT, bytes are console text,
// except 0x00 (skipped) and 0xFE or 0xFF (start a candidate of framing 1
// or 2, FRAME state). In FRAME it collects bytes; the candidate ends at
// 0x00 or, if it is a frame, as soon as it reaches the length L1 L2
// announce (so a lost closing 0x00 costs nothing). A candidate is a frame
// if its length matches, it decodes (COBS; in framing 2 the blocks) and
// the CRC holds. A longer candidate may hold console text written into the
// middle of the frame (a kernel printk between two of the agent's writes):
// each window of the excess length (up to 2048 bytes) is cut out in turn,
// the text possibly sitting before or between L1 and L2 too; if what
// remains is a frame, the frame is taken and the window is console text.
// Where several cuts leave the same frame, the one whose text ends with a
// newline wins. In framing 2 with parity only cuts from the first block
// that needed repair to the end of the first that failed are tried, the
// one needing the fewest corrections wins, and the copies of P and M must
// then agree; a frame whose last block was repaired is taken only at its
// closing 0x00 (the repair may have been text written into its tail).
// Failing candidates are dropped and counted (Stats.Corrupt); their frames
// are retransmitted. A failed candidate whose first byte cannot be L1
// (below 0x80) is console text after all (a Latin-1 "þ" or "ÿ"). A
// candidate longer than the longest frame plus 2048 bytes is abandoned.
//
// # Reliability
//
// Each direction numbers DATA frames from 0 per session, wrapping at 2^16.
// The receiver keeps up to its window of frames, acknowledges every DATA
// frame (piggybacked on outgoing DATA, or an ACK: at once with a SACK
// bitmap when there are gaps, else after ackDelay unless DATA carried it
// first), and delivers messages in order. It advertises in wnd
// only the room its read queue allows, so a slow reader holds the sender
// back instead of growing a buffer.
//
// The sender keeps up to min(both windows) frames unacknowledged and
// retransmits selectively. A serial line does not reorder, so a frame is
// lost as soon as one sent after it is acknowledged. When frames go
// unanswered for an RTO (RFC 6298 estimate from unambiguous samples and
// probe round trips, floor 1ms, but never less than the ackDelay the peer
// may hold its ACK), the sender probes (ACKREQ); the echo,
// sent after the peer saw everything before the probe, shows exactly which
// frames are lost. Unanswered probes back off exponentially up to 2s. An
// idle session probes every DeadAfter/5 as a keepalive. An agent waits at
// most BeaconInterval before either probe, so the line is never quieter
// than between beacons: a host that vanished without its RST reaching the
// agent is followed by one that hears the agent as soon as on an idle
// line, and opens its session at once (its SYN replaces the old one). A session that
// makes no progress for DeadAfter (default 15s) fails with ErrDead.
//
// A host that sent Config.QuietAfter SYNs, retransmissions and probes in a
// row without hearing the agent writes nothing more, RST included, until it
// does: the board may have lost its power, and a boot loader reading its
// UART takes any byte as a key. It resumes at the agent's next frame (a
// probe, at least every BeaconInterval) or, on a beacon, ends the session
// for a new one.
//
// The sender splits messages into fragments no larger than the smaller
// max payload and shrinks them on a noisy line: from the share of frames
// that needed retransmission it estimates the byte error rate r and picks
// the size (max payload, halved down to 64 bytes) that maximises
// payload/wire x exp(-r x wire).
//
// # Sessions
//
// The host sends SYN until the SYNACK with its tag arrives; both ends then
// start their sequence numbers at 0. Frames whose tag is not the current
// session's are ignored, so late frames of an old session do no harm; the
// agent answers DATA and ACK of an unknown session with RST (reason 1), so
// a host talking to a restarted agent learns it at once. A new SYN ends the
// agent's current session (its link fails with ErrSessionReset). Close
// sends RST (reason 0). The agent beacons every BeaconInterval while it
// has no session; a host hearing a beacon during its session ends it with
// ErrSessionReset, as the agent evidently lost it.
package seriallink
