package proto

// Version is the protocol version this build speaks. A peer announces its
// version in session.hello; the agent answers requests of any version in
// [MinVersion, Version], and a session is served only the methods its
// negotiated version has (MethodVersion).
const (
	Version    = 6
	MinVersion = 1
)

// Change is one entry of the protocol's history.
type Change struct {
	Version int
	Date    string // YYYY-MM-DD
	Summary string
	// Methods are the methods this version added: MethodVersion reads
	// them, so a new method is served only from the version that lists it.
	Methods []string
}

// History lists every protocol version, oldest first. A change to the
// wire format appends an entry and bumps Version; nothing is edited in place.
var History = []Change{
	{1, "2026-11-22", "JSON-RPC 2.0 control messages in text frames; binary stream frames " +
		"(DATA, CREDIT, FIN, RST) with per-stream credit flow control; session.hello, " +
		"board.info, exec.start/wait/cancel/log; serial-framed link with COBS, CRC-32C, " +
		"selective-repeat retransmission, beacons and console text outside frames.",
		[]string{MethodHello, MethodBoardInfo, MethodExecStart, MethodExecWait, MethodExecCancel, MethodExecLog}},
	{2, "2026-11-22", "file.stat, file.push and file.pull (resumable, sha256-checked, over " +
		"streams), file.wait, file.download (agent-side fetch with a required sha256, " +
		"package cache, tar extraction), system.reboot, and the progress notification. " +
		"Version 1 clients are still served.",
		[]string{MethodFileStat, MethodFilePush, MethodFilePull, MethodFileWait, MethodFileDownload, MethodSystemReboot}},
	{3, "2026-11-22", "ota.status, ota.plan, ota.start, ota.write, ota.activate, ota.wait and " +
		"ota.abort: signed A/B updates with chunk-level delta, trial boot, health check, commit " +
		"or rollback; board.info reports slots. Earlier clients are still served.",
		[]string{MethodOTAStatus, MethodOTAPlan, MethodOTAStart, MethodOTAWrite, MethodOTAActivate, MethodOTAWait, MethodOTAAbort}},
	{4, "2026-12-01", "Authentication: session.hello carries the host's nonce and answers " +
		"with the board's key, nonce and signature; session.auth takes a paired host's " +
		"signature or a token's MAC (never the token); pair.begin, pair.exchange and " +
		"pair.confirm pair a host with a one-time code (SPAKE2). Until authenticated a " +
		"session is served only these. wss:// with the board's self-signed key; board.info, " +
		"the beacon and the mDNS TXT carry the key's fingerprint. The ota phase halted: " +
		"an update whose fetch cannot go on, with failed_phase and reason in ota.status.",
		[]string{MethodAuth, MethodPairBegin, MethodPairExchange, MethodPairConfirm}},
	{5, "2026-12-02", "A developer's tools: exec.start's tty runs a command on a pseudo-terminal " +
		"(term, rows, cols) and exec.resize changes its size; exec.run runs a short command in one " +
		"round trip, its output in the result; tcp.dial connects a stream to a TCP port on the " +
		"board, tcp.listen listens on one, tcp.accept waits for its next connection and joins it " +
		"to a stream the host opened, tcp.unlisten stops. ota.activate's hold_ms holds a trial whose " +
		"health check passed (phase held) for the host's ota.commit or ota.rollback, rolling back " +
		"by itself when the hold ends.",
		[]string{MethodExecResize, MethodExecRun, MethodTCPDial, MethodTCPListen, MethodTCPAccept, MethodTCPUnlisten,
			MethodOTACommit, MethodOTARollback}},
	{6, "2026-12-02", "Fewer round trips and larger transfer frames, both negotiated: session.hello " +
		"may ride on the WebSocket upgrade (the Boardlink-Hello header, answered on the 101); " +
		"with the agent's capability file.frames, file.pull takes frame (at most 256 KiB) and " +
		"file.push answers the agent's frame. No new methods; version 5 peers are served as before.",
		nil},
}

// methodVersions maps each method to the version that added it.
var methodVersions = func() map[string]int {
	m := map[string]int{}
	for _, c := range History {
		for _, name := range c.Methods {
			m[name] = c.Version
		}
	}
	return m
}()

// MethodVersion returns the protocol version that added method; false for
// a method no version has.
func MethodVersion(method string) (int, bool) {
	v, ok := methodVersions[method]
	return v, ok
}

// CheckMethodVersion refuses method, as method_not_found naming the
// version that added it, when it is newer than version, the version a
// session negotiated. A method no version has passes: whoever serves it
// answers for it.
func CheckMethodVersion(method string, version int) *Error {
	if v, ok := methodVersions[method]; ok && v > version {
		return Errorf(ReasonMethodNotFound, "%s needs protocol %d; this session speaks %d", method, v, version)
	}
	return nil
}
