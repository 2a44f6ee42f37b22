package proto

import "time"

// The OTA family (protocol version 3).
const (
	MethodOTAStatus   = "ota.status"
	MethodOTAPlan     = "ota.plan"
	MethodOTAStart    = "ota.start"
	MethodOTAWrite    = "ota.write"
	MethodOTAActivate = "ota.activate"
	MethodOTAWait     = "ota.wait"
	MethodOTAAbort    = "ota.abort"
	// Protocol 5: the host's verdict on a held trial.
	MethodOTACommit   = "ota.commit"
	MethodOTARollback = "ota.rollback"
	CapOTA            = "ota"
)

// Phase is where an update is (OTAUpdate.Phase). An update begins in
// PhasePrepare and ends in PhaseDone with a Result; agent/ota holds the
// table of the moves between phases.
type Phase string

// Phases of an update, in the order an update meets them.
const (
	PhasePrepare  Phase = "prepare"  // writing the inactive slot
	PhasePrepared Phase = "prepared" // every chunk written and the payload verified
	// PhaseHalted: the prepare stopped on an error it cannot get past by
	// itself (a URL that fails or serves other bytes): FailedPhase and
	// Reason say which. ota.start with the same image resumes it (the
	// chunks written are kept), ota.abort ends it.
	PhaseHalted   Phase = "halted"
	PhaseActivate Phase = "activate" // the trial boot is being set up, then the reboot
	PhaseTrial    Phase = "trial"    // booted into the new slot: health check
	// PhaseHeld (protocol 5): the health check passed on a trial
	// activated with a hold; the update waits for ota.commit or
	// ota.rollback and rolls back by itself when HoldUntil passes.
	PhaseHeld     Phase = "held"
	PhaseCommit   Phase = "commit"   // health check passed: committing
	PhaseRollback Phase = "rollback" // health check failed: rolling back, then the reboot
	PhaseDone     Phase = "done"
)

// Phases lists every phase, in order.
var Phases = []Phase{PhasePrepare, PhasePrepared, PhaseHalted, PhaseActivate, PhaseTrial, PhaseHeld, PhaseCommit, PhaseRollback, PhaseDone}

// Abortable reports whether ota.abort may end an update in phase p: only
// before activation.
func (p Phase) Abortable() bool {
	return p == PhasePrepare || p == PhasePrepared || p == PhaseHalted
}

// Result is how an update ended (OTAUpdate.Result, set in PhaseDone).
type Result string

// Results of an update that ended.
const (
	ResultCommitted  Result = "committed"
	ResultRolledBack Result = "rolled_back"
	ResultFailed     Result = "failed"
	ResultAborted    Result = "aborted"
)

// OTAImageParams names an image by its signed manifest: the exact bytes
// that were signed, and the signature (both base64 in JSON).
type OTAImageParams struct {
	Manifest  []byte `json:"manifest" validate:"required,max=4194304"`
	Signature []byte `json:"signature" validate:"required,len=64"`
	// Force allows a downgrade or a reinstall of the running version.
	Force bool `json:"force,omitempty"`
	// URL, on ota.start, makes the agent fetch the chunks it lacks from
	// the image file served at URL (http or https, with Range requests;
	// a server without them is read from the start), instead of over the
	// link; PayloadOffset is where the payload begins in that file. A URL
	// that cannot give the image halts the update (PhaseHalted).
	URL           string `json:"url,omitempty" validate:"omitempty,max=8192,url,startswith=http"`
	PayloadOffset int64  `json:"payload_offset,omitempty" validate:"min=0"`
	// Progress, when set, is echoed in the progress notifications the
	// agent sends while it hashes its active slot (ProgressHash) and, on
	// ota.start, copies from it (ProgressCopy) before it answers.
	Progress string `json:"progress,omitempty" validate:"max=64"`
}

// Progress phases of ota.plan and ota.start (Progress.Phase).
const (
	ProgressHash = "hash" // reading and hashing the active slot, which the agent did not write
	ProgressCopy = "copy" // copying the chunks the active slot holds into the target slot
)

// OTAPlan says what an update needs: which chunks must cross the link
// (Need, by index), which the board copies from its active slot or already
// holds in the target slot, and the bytes that leaves to send.
type OTAPlan struct {
	ID          string `json:"id,omitempty"` // set by ota.start
	Slot        string `json:"slot"`         // the slot that will be written
	Version     string `json:"version"`
	FromVersion string `json:"from_version"` // the booted slot's version ("" unknown)
	Chunks      int    `json:"chunks"`
	Need        []int  `json:"need"`
	Copy        int    `json:"copy"` // chunks copied from the active slot
	Have        int    `json:"have"` // chunks the target slot already holds
	NeedBytes   int64  `json:"need_bytes"`
	// Hashed is the bytes of the active slot the agent read and hashed
	// for this plan: a slot it did not write (flashed in the factory or
	// by hand), or one that changed since it last read it; 0 when its own
	// record of the slot or the hashes it kept told.
	Hashed int64 `json:"hashed,omitempty"`
}

// OTAWriteParams hands the agent a stream that carries chunks, each as a
// 4-byte big-endian chunk index followed by the chunk's bytes (the chunk
// size from the manifest; the last chunk may be short), then FIN.
type OTAWriteParams struct {
	ID     string `json:"id" validate:"required,max=64"`
	Stream uint32 `json:"stream" validate:"required"`
}

// OTAWriteResult names the transfer that receives the stream: file.wait
// on it returns once the stream is consumed (Bytes: what arrived), or the
// error that stopped it (checksum_mismatch for a chunk that hashed wrong).
type OTAWriteResult struct {
	Transfer string `json:"transfer"`
}

// OTAIDParams names an update.
type OTAIDParams struct {
	ID string `json:"id" validate:"required,max=64"`
}

// OTAActivateParams activates a prepared update. HoldMs (protocol 5), if
// set, keeps the trial after its health check passed (PhaseHeld) for the
// host's verdict, ota.commit or ota.rollback, for at most that long (a
// day at most); then the board rolls back by itself, so a host that went
// away never leaves a board on a trial.
type OTAActivateParams struct {
	ID     string `json:"id" validate:"required,max=64"`
	HoldMs int64  `json:"hold_ms,omitempty" validate:"min=0,max=86400000"`
}

// OTARollbackParams rolls a held trial back, saying why.
type OTARollbackParams struct {
	ID     string `json:"id" validate:"required,max=64"`
	Reason string `json:"reason,omitempty" validate:"max=1024"`
}

// OTAWaitParams waits until the status changes past Since (a Seq seen
// before) or TimeoutMs passes, then returns the status.
type OTAWaitParams struct {
	Since     int64 `json:"since" validate:"min=0"`
	TimeoutMs int64 `json:"timeout_ms,omitempty" validate:"min=0,max=600000"`
}

// OTASlot is one slot as ota.status reports it.
type OTASlot struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"` // "" unknown (a factory image) or being written
	SHA256  string `json:"sha256,omitempty"`  // the payload it holds, when known
	Writing bool   `json:"writing,omitempty"` // an update is writing it: not bootable
	Booted  bool   `json:"booted"`
	Active  bool   `json:"active"`
	Trial   bool   `json:"trial"`
}

// OTAUpdate is the current or the last update.
type OTAUpdate struct {
	ID           string    `json:"id"`
	Version      string    `json:"version"`
	FromVersion  string    `json:"from_version"`
	Slot         string    `json:"slot"`
	Phase        Phase     `json:"phase"`
	Result       Result    `json:"result,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	FailedPhase  Phase     `json:"failed_phase,omitempty"`
	Chunks       int       `json:"chunks"`
	ChunksDone   int       `json:"chunks_done"`
	ChunksCopied int       `json:"chunks_copied"`
	BytesLink    int64     `json:"bytes_link"`          // chunk bytes received over the link
	BytesURL     int64     `json:"bytes_url,omitempty"` // chunk bytes the agent fetched from the URL
	Size         int64     `json:"size"`
	Started      time.Time `json:"started"`
	Updated      time.Time `json:"updated"`
	ElapsedMs    int64     `json:"elapsed_ms"`
	Transitions  int       `json:"transitions"`
	// HoldUntil is when a held trial rolls back by itself (PhaseHeld).
	HoldUntil *time.Time `json:"hold_until,omitempty"`
}

// OTAStatus is the truth about the board's slots and its update. Seq grows
// with every change, so a client resumes its view with ota.wait.
type OTAStatus struct {
	Seq    int64      `json:"seq"`
	Slots  []OTASlot  `json:"slots"`
	Update *OTAUpdate `json:"update,omitempty"`
}
