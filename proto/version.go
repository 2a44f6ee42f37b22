package proto

// Version is the protocol version this build speaks. A peer announces its
// version in session.hello; the agent answers requests of any version in
// [MinVersion, Version].
const (
	Version    = 3
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
}
