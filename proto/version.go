package proto

// Version is the protocol version this build speaks. A peer announces its
// version in session.hello; the agent answers requests of any version in
// [MinVersion, Version].
const (
	Version    = 4
	MinVersion = 1
)

// Change is one entry of the protocol's history.
type Change struct {
	Version int
	Date    string // YYYY-MM-DD
	Summary string
}

// History lists every protocol version, oldest first. A change to the
// wire format appends an entry and bumps Version; nothing is edited in place.
var History = []Change{
	{1, "2026-11-22", "JSON-RPC 2.0 control messages in text frames; binary stream frames " +
		"(DATA, CREDIT, FIN, RST) with per-stream credit flow control; session.hello, " +
		"board.info, exec.start/wait/cancel/log; serial-framed link with COBS, CRC-32C, " +
		"selective-repeat retransmission, beacons and console text outside frames."},
	{2, "2026-11-22", "file.stat, file.push and file.pull (resumable, sha256-checked, over " +
		"streams), file.wait, file.download (agent-side fetch with a required sha256, " +
		"package cache, tar extraction), system.reboot, and the progress notification. " +
		"Version 1 clients are still served."},
	{3, "2026-11-22", "ota.status, ota.plan, ota.start, ota.write, ota.activate, ota.wait and " +
		"ota.abort: signed A/B updates with chunk-level delta, trial boot, health check, commit " +
		"or rollback; board.info reports slots. Earlier clients are still served."},
	{4, "2026-12-01", "Authentication: session.hello carries the host's nonce and answers " +
		"with the board's key, nonce and signature; session.auth takes a paired host's " +
		"signature or a token's MAC (never the token); pair.begin, pair.exchange and " +
		"pair.confirm pair a host with a one-time code (SPAKE2). Until authenticated a " +
		"session is served only these. wss:// with the board's self-signed key; board.info, " +
		"the beacon and the mDNS TXT carry the key's fingerprint. The ota phase halted: " +
		"an update whose fetch cannot go on, with failed_phase and reason in ota.status."},
}
