package dispatcher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// Target is a board a rollout may update.
type Target struct {
	ID      string            `json:"id"`
	Address string            `json:"address"`
	Model   string            `json:"model,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// Stages of a rollout, each run over every board of a wave before the
// next begins. The gate stage runs only with a Gate.
const (
	StagePlan    = "plan"
	StagePrepare = "prepare"
	StageExecute = "execute"
	StageGate    = "gate"
	// StageVerdict commits a wave's held trials once the gate passed on
	// every board of the wave, or rolls them all back.
	StageVerdict = "verdict"
	StageDone    = "done"
)

// Board results in a rollout report, besides the OTA results (committed,
// rolled_back, failed).
const (
	ResultCurrent      = "current"      // already runs the image's version: nothing to do
	ResultSkipped      = "skipped"      // not started: too many failures before its turn
	ResultInterrupted  = "interrupted"  // the rollout was stopped before the board's update ended
	ResultIncompatible = "incompatible" // the board refused the image (model, version, signature)
	ResultUnreachable  = "unreachable"  // the board did not answer, through every retry
	ResultGateFailed   = "gate_failed"  // the gate command failed on it (rolled back if its trial was held)
)

// PlanFormat is the version of a saved plan's JSON.
const PlanFormat = 1

// Plan is a rollout's plan stage result; it can be saved and run later.
type Plan struct {
	Format      int         `json:"format"`
	Version     string      `json:"version"`
	ImageSHA256 string      `json:"image_sha256"` // the payload's
	Created     time.Time   `json:"created"`
	Boards      []BoardPlan `json:"boards"`
}

// BoardPlan is one board in a plan. Result is set for a board the plan
// stage already settled (current, incompatible, unreachable).
type BoardPlan struct {
	Target
	FromVersion string `json:"from_version,omitempty"`
	Slot        string `json:"slot,omitempty"`
	NeedChunks  int    `json:"need_chunks"`
	NeedBytes   int64  `json:"need_bytes"`
	Result      string `json:"result,omitempty"`
	Reason      string `json:"reason,omitempty"`
}

// BoardReport is how one board fared.
type BoardReport struct {
	ID          string    `json:"id"`
	Address     string    `json:"address"`
	Result      string    `json:"result"`
	Stage       string    `json:"stage"` // where it ended
	Phase       string    `json:"phase,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	FromVersion string    `json:"from_version,omitempty"`
	ToVersion   string    `json:"to_version,omitempty"`
	UpdateID    string    `json:"update_id,omitempty"`
	BytesSent   int64     `json:"bytes_sent"`
	Attempts    int       `json:"attempts"`
	DurationMs  int64     `json:"duration_ms"` // time spent on it, all stages
	Started     time.Time `json:"started,omitzero"`
	Ended       time.Time `json:"ended,omitzero"`
}

// Report is a rollout's outcome.
type Report struct {
	Version        string         `json:"version"`
	Boards         []BoardReport  `json:"boards"`
	Counts         map[string]int `json:"counts"`
	ImageBytesRead int64          `json:"image_bytes_read"`
	TookMs         int64          `json:"took_ms"`
	// Stopped says why boards were left out (skipped): a gate failed, or
	// more boards failed than allowed. "" when every board had its turn.
	Stopped string `json:"stopped,omitempty"`
}

// OK reports whether every board committed (or already ran the version).
func (r Report) OK() bool {
	for _, b := range r.Boards {
		if b.Result != string(proto.ResultCommitted) && b.Result != ResultCurrent {
			return false
		}
	}
	return true
}

// Event is one step of a rollout, for displays and logs.
type Event struct {
	Time    time.Time `json:"time"`
	Rollout string    `json:"rollout,omitempty"` // the recorded rollout's id (rolloutjob.RunRecorded)
	Board   string    `json:"board,omitempty"`   // "" for the rollout itself
	Stage   string    `json:"stage"`
	Wave    int       `json:"wave,omitempty"`   // from 1, when the boards are updated in more than one wave
	Boards  int       `json:"boards,omitempty"` // a stage event: the boards the stage takes
	Kind    string    `json:"kind"`             // stage, start, progress, retry, done
	Result  string    `json:"result,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Phase   string    `json:"phase,omitempty"`
	Sent    int64     `json:"sent,omitempty"`
	ToSend  int64     `json:"to_send,omitempty"`
	Attempt int       `json:"attempt,omitempty"`
}

// RolloutConfig configures a rollout.
type RolloutConfig struct {
	Image *image.Image
	// Concurrency bounds the boards worked on at once in each stage
	// (default 8).
	Concurrency int
	// MaxFailures: once more boards than this have failed, no new board
	// starts; the rest are skipped. Negative: no limit.
	MaxFailures int
	// BoardTimeout bounds one attempt at one stage of one board (default
	// 15 minutes).
	BoardTimeout time.Duration
	// Attempts and Backoff: transient errors (a link that drops, a board
	// that does not answer) are tried again, up to Attempts times in all
	// (default 3), after Backoff, doubled each time (default 1s).
	Attempts int
	Backoff  time.Duration
	Force    bool
	// DialOptions are what the default Dial dials each board with (its
	// Trust, its token or host key).
	DialOptions DialOptions
	// Dial connects to a board; default Dial with DialOptions.
	Dial func(ctx context.Context, addr string) (*Client, error)
	// Events, if set, receives every event; called from many goroutines.
	Events func(Event)
	// Record, if set, is called with a board's report each time it changes
	// (to persist it); called from many goroutines.
	Record func(BoardReport)
	// CacheBytes bounds the chunk cache (default 256 MiB).
	CacheBytes int64
	// WaveSize splits the boards to update into waves of this many, each
	// prepared, executed and gated before the next starts; 0 is one wave
	// of every board, or waves of Concurrency with a Gate.
	WaveSize int
	// Gate, if set, runs on every board of a wave on its trial boot, held
	// for the verdict (OTAOptions.Hold): the wave commits only if it passed
	// on every one of them, else all its trials roll back and no further
	// wave starts. A board older than protocol 5 cannot hold its trial: it
	// commits first and is gated after.
	Gate *Gate
	// Halt, if set, stops the rollout by hand (Halt.Stop).
	Halt *Halt
}

// A Halt stops a rollout by hand, each board at its safe point, before
// its new slot is activated: no board starts a prepare or an execute
// after it (those left are skipped, with the halt's reason); a board
// preparing is cut short and its update aborted (only its inactive slot
// was written); a board whose update was activated goes on to its end,
// through its gate and its wave's verdict (a halt rolls nothing back).
// The report's Stopped is the halt's reason. A nil Halt never stops.
type Halt struct {
	once sync.Once
	done chan struct{}
	why  string // set once, before done is closed
}

// NewHalt returns a Halt not stopped yet.
func NewHalt() *Halt { return &Halt{done: make(chan struct{})} }

// Stop stops the rollout, why (who stopped it); only the first call
// counts.
func (h *Halt) Stop(why string) {
	h.once.Do(func() {
		h.why = why
		close(h.done)
	})
}

// Why is the reason of the stop, "" while there is none.
func (h *Halt) Why() string {
	if h == nil {
		return ""
	}
	select {
	case <-h.done:
		return h.why
	default:
		return ""
	}
}

// Done is closed once the rollout is stopped (never, for a nil Halt).
func (h *Halt) Done() <-chan struct{} {
	if h == nil {
		return nil
	}
	return h.done
}

// Transient reports whether err may go away when the same step is tried
// again: the link or the board was away, not a refusal.
func Transient(err error) bool {
	var oe *OTAError
	if err == nil || errors.As(err, &oe) {
		return false
	}
	switch proto.ReasonOf(err) {
	case "":
	case proto.ReasonBusy, proto.ReasonTimeout, proto.ReasonInternal, proto.ReasonUnavailable, proto.ReasonCanceled:
		return true
	default:
		return false
	}
	var ne net.Error
	return errors.Is(err, transport.ErrClosed) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, ErrNotBack) || errors.As(err, &ne) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, errDial)
}

var errDial = errors.New("dial")

// run is one rollout under way.
type run struct {
	cfg      RolloutConfig
	cache    *ChunkCache
	failures atomic.Int32
	stopped  string // why boards were skipped; only RunRollout's own goroutine touches it
	mu       sync.Mutex
	boards   map[string]*BoardReport
	held     map[string]bool // boards whose trial waits for the wave's verdict
}

func (cfg *RolloutConfig) defaults() {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if cfg.BoardTimeout <= 0 {
		cfg.BoardTimeout = 15 * time.Minute
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 3
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = time.Second
	}
	if cfg.WaveSize <= 0 && cfg.Gate != nil {
		cfg.WaveSize = cfg.Concurrency
	}
	if cfg.Dial == nil {
		opts := cfg.DialOptions
		cfg.Dial = func(ctx context.Context, addr string) (*Client, error) { return Dial(ctx, addr, opts) }
	}
}

func (r *run) emit(e Event) {
	if r.cfg.Events != nil {
		e.Time = time.Now()
		r.cfg.Events(e)
	}
}

// PlanRollout is the plan stage: it asks every target, at most
// Concurrency at once, whether the image fits and what it would take.
func PlanRollout(ctx context.Context, cfg RolloutConfig, targets []Target) Plan {
	cfg.defaults()
	r := &run{cfg: cfg, boards: map[string]*BoardReport{}}
	plan := Plan{Format: PlanFormat, Version: cfg.Image.Manifest.Version, ImageSHA256: cfg.Image.Manifest.PayloadSHA256,
		Created: time.Now().UTC(), Boards: make([]BoardPlan, len(targets))}
	r.emit(Event{Stage: StagePlan, Kind: "stage", Boards: len(targets)})
	var wg sync.WaitGroup
	sem := make(chan struct{}, cfg.Concurrency)
	for i, t := range targets {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			plan.Boards[i] = r.planBoard(ctx, t)
		})
	}
	wg.Wait()
	return plan
}

func (r *run) planBoard(ctx context.Context, t Target) BoardPlan {
	bp := BoardPlan{Target: t}
	r.emit(Event{Board: t.ID, Stage: StagePlan, Kind: "start"})
	err := r.attempts(ctx, t.ID, StagePlan, func(ctx context.Context, c *Client) error {
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		for _, s := range info.Slots {
			if s.Booted {
				bp.FromVersion = s.Version
			}
		}
		if bp.FromVersion == r.cfg.Image.Manifest.Version && !r.cfg.Force {
			bp.Result = ResultCurrent
			return nil
		}
		p, err := c.OTAPlan(ctx, r.cfg.Image, r.cfg.Force)
		if err != nil {
			return err
		}
		bp.Slot, bp.NeedChunks, bp.NeedBytes = p.Slot, len(p.Need), p.NeedBytes
		return nil
	}, t.Address)
	if err != nil {
		bp.Result, bp.Reason = failureResult(err), err.Error()
	}
	r.emit(Event{Board: t.ID, Stage: StagePlan, Kind: "done", Result: bp.Result, Reason: bp.Reason})
	return bp
}

// failureResult names a board's failure.
func failureResult(err error) string {
	var (
		oe *OTAError
		ge *GateError
	)
	switch {
	case errors.As(err, &oe):
		return string(oe.Result)
	case errors.As(err, &ge):
		return ResultGateFailed
	case Transient(err):
		return ResultUnreachable
	}
	switch proto.ReasonOf(err) {
	case proto.ReasonIncompatible, proto.ReasonSignatureInvalid:
		return ResultIncompatible
	}
	return string(proto.ResultFailed)
}

// attempts runs step on a fresh connection to addr, again after a
// backoff while it fails transiently.
func (r *run) attempts(ctx context.Context, board, stage string, step func(context.Context, *Client) error, addr string) error {
	bound := r.cfg.BoardTimeout
	if g := r.cfg.Gate; stage == StageGate && g.timeout()+gateGrace < bound {
		bound = g.timeout() + gateGrace // a board that goes silent in its gate fails on the gate's timeout
	}
	backoff := r.cfg.Backoff
	var err error
	for attempt := 1; attempt <= r.cfg.Attempts; attempt++ {
		if attempt > 1 {
			r.emit(Event{Board: board, Stage: stage, Kind: "retry", Attempt: attempt, Reason: err.Error()})
			select {
			case <-ctx.Done():
				return errors.Join(err, ctx.Err())
			case <-time.After(backoff):
			}
			backoff *= 2
		}
		r.note(board, func(b *BoardReport) { b.Attempts++ })
		err = func() error {
			actx, cancel := context.WithTimeout(ctx, bound)
			defer cancel()
			c, err := r.cfg.Dial(actx, addr)
			if err != nil {
				return fmt.Errorf("%w %s: %w", errDial, addr, err)
			}
			defer c.Close()
			return step(actx, c)
		}()
		if err == nil || !Transient(err) || ctx.Err() != nil || stage == StagePrepare && r.cfg.Halt.Why() != "" {
			return err
		}
	}
	return err
}

// note changes a board's report under the lock and records it.
func (r *run) note(board string, change func(*BoardReport)) {
	r.mu.Lock()
	b := r.boards[board]
	if b == nil {
		r.mu.Unlock()
		return
	}
	change(b)
	snap := *b
	r.mu.Unlock()
	if r.cfg.Record != nil {
		r.cfg.Record(snap)
	}
}

// RunRollout runs the prepare and execute stages of plan, and the gate
// stage with a Gate, wave by wave (RolloutConfig.WaveSize): a wave starts
// once the one before it passed; after a gate failed on any board of a
// wave the boards of later waves are skipped, with the reason. Boards the
// plan settled keep their result; done (from an earlier, interrupted run
// of the same rollout) names boards to leave alone and the reports they
// ended with, and carries the update ids of boards to resume.
func RunRollout(ctx context.Context, cfg RolloutConfig, plan Plan, done []BoardReport) Report {
	cfg.defaults()
	start := time.Now()
	r := &run{cfg: cfg, cache: NewChunkCache(cfg.Image, cfg.CacheBytes), boards: map[string]*BoardReport{}, held: map[string]bool{}}
	prior := map[string]BoardReport{}
	for _, b := range done {
		prior[b.ID] = b
	}
	var order []string
	addr := map[string]string{}
	var todo []string
	for _, bp := range plan.Boards {
		order = append(order, bp.ID)
		addr[bp.ID] = bp.Address
		rep := &BoardReport{ID: bp.ID, Address: bp.Address, FromVersion: bp.FromVersion,
			ToVersion: plan.Version, Stage: StagePlan, Result: bp.Result, Reason: bp.Reason}
		if p, ok := prior[bp.ID]; ok {
			rep = &p
		}
		r.boards[bp.ID] = rep
		switch {
		case rep.Result == "" || rep.Result == ResultSkipped || rep.Result == ResultInterrupted: // never finished: this run does it
			rep.Result, rep.Reason = "", ""
			todo = append(todo, bp.ID)
		case RolloutFailure(rep.Result):
			r.failures.Add(1)
		}
	}
	prepare := func(ctx context.Context, c *Client, b string) error {
		if r.resumeLater(ctx, c, b) {
			return nil // past its safe point: it goes on even after a halt
		}
		if why := cfg.Halt.Why(); why != "" {
			return errors.New(why)
		}
		// A halt cuts the prepare short: only the inactive slot is written.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-cfg.Halt.Done():
				cancel()
			case <-ctx.Done():
			}
		}()
		rep, err := c.Prepare(ctx, cfg.Image, OTAOptions{Force: cfg.Force, Chunks: r.cache, Progress: r.progress(b, StagePrepare)})
		r.note(b, func(br *BoardReport) {
			br.UpdateID = rep.Plan.ID
			br.BytesSent += rep.BytesSent
			if rep.Update != nil {
				br.Phase = string(rep.Update.Phase)
			}
		})
		return err
	}
	execute := func(ctx context.Context, c *Client, b string) error {
		r.mu.Lock()
		rep := OTAReport{Plan: proto.OTAPlan{ID: r.boards[b].UpdateID}}
		r.mu.Unlock()
		opts := OTAOptions{Progress: r.progress(b, StageExecute)}
		if cfg.Gate != nil && c.Hello().Protocol >= 5 {
			opts.Hold = r.hold()
		}
		err := c.Execute(ctx, &rep, opts)
		if rep.Update != nil {
			r.note(b, func(br *BoardReport) { br.Phase = string(rep.Update.Phase) })
			if rep.Update.Phase == proto.PhaseHeld {
				r.mu.Lock()
				r.held[b] = true
				r.mu.Unlock()
			}
		}
		if err == nil && cfg.Gate == nil { // with a gate, the board is done once it passed
			r.note(b, func(br *BoardReport) { br.Result, br.Ended = string(proto.ResultCommitted), time.Now() })
		}
		return err
	}
	gateFailed := false // no further wave starts
	all := waves(todo, cfg.WaveSize)
	for i, wave := range all {
		if ctx.Err() != nil {
			break
		}
		n := i + 1 // the wave's number in events; 0 (none) when there is one
		if len(all) == 1 {
			n = 0
		}
		if gateFailed {
			for _, b := range wave {
				r.note(b, func(br *BoardReport) { br.Result, br.Reason = ResultSkipped, r.stopped })
				r.emit(Event{Board: b, Stage: StagePrepare, Wave: n, Kind: "done", Result: ResultSkipped, Reason: r.stopped})
			}
			continue
		}
		prepared := r.stage(ctx, n, StagePrepare, wave, addr, prepare)
		committed := r.stage(ctx, n, StageExecute, prepared, addr, execute)
		if cfg.Gate == nil {
			continue
		}
		passed := r.stage(ctx, n, StageGate, committed, addr, r.gate)
		if ctx.Err() != nil {
			break // held trials stay held: a resume gates them again, or they roll back when the hold ends
		}
		var failed []string
		for _, b := range committed {
			if !slices.Contains(passed, b) {
				failed = append(failed, b)
			}
		}
		verdict := ""
		if len(failed) > 0 {
			gateFailed = true
			verdict = fmt.Sprintf("the gate failed in wave %d on %s", i+1, strings.Join(failed, ", "))
			r.stopped = "not started: " + verdict
		}
		r.verdict(ctx, n, committed, addr, verdict)
	}
	out := Report{Version: plan.Version, Counts: map[string]int{}, ImageBytesRead: r.cache.BytesRead(),
		TookMs: time.Since(start).Milliseconds(), Stopped: cmp.Or(cfg.Halt.Why(), r.stopped)}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range order {
		b := *r.boards[id]
		if b.Result == "" {
			b.Result, b.Reason = ResultInterrupted, "the rollout was interrupted before its turn"
			if b.UpdateID != "" {
				b.Reason = "interrupted after its prepare stage; --resume goes on from there"
			}
		}
		out.Counts[b.Result]++
		out.Boards = append(out.Boards, b)
	}
	r.emit(Event{Stage: StageDone, Kind: "stage"})
	return out
}

// resumeLater reports whether the board's update from an interrupted run
// of this rollout went past prepare: the execute stage then picks it up
// where it is (activating it, waiting for it, or reading its result).
func (r *run) resumeLater(ctx context.Context, c *Client, b string) bool {
	r.mu.Lock()
	id := r.boards[b].UpdateID
	r.mu.Unlock()
	if id == "" {
		return false
	}
	st, err := c.OTAStatus(ctx)
	if err != nil || st.Update == nil || st.Update.ID != id ||
		st.Update.Phase == proto.PhasePrepare || st.Update.Phase == proto.PhaseHalted {
		return false
	}
	r.note(b, func(br *BoardReport) { br.Phase = string(st.Update.Phase) })
	return true
}

// progress turns a board's OTA progress into events.
func (r *run) progress(board, stage string) func(OTAProgress) {
	return func(p OTAProgress) {
		r.emit(Event{Board: board, Stage: stage, Kind: "progress", Phase: p.Phase, Sent: p.Sent, ToSend: p.ToSend})
	}
}

// waves splits boards, in order, into waves of size (one wave when size
// is not positive).
func waves(boards []string, size int) [][]string {
	if size <= 0 || size >= len(boards) {
		return [][]string{boards}
	}
	return slices.Collect(slices.Chunk(boards, size))
}

// stage runs step on every board, at most Concurrency at once, in order,
// and returns the boards that passed. Once failures exceed MaxFailures no
// further board starts; those left are skipped.
func (r *run) stage(ctx context.Context, wave int, name string, boards []string, addr map[string]string,
	step func(context.Context, *Client, string) error) []string {
	r.emit(Event{Stage: name, Wave: wave, Kind: "stage", Boards: len(boards)})
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		passed []string
	)
	sem := make(chan struct{}, r.cfg.Concurrency)
	for _, b := range boards {
		sem <- struct{}{}
		if ctx.Err() != nil {
			// Interrupted: the board keeps what it had, reported as
			// interrupted at the end, and a resume goes on from there.
			<-sem
			continue
		}
		if r.tooMany() {
			<-sem
			reason := "more than the allowed failures before its turn"
			r.stopped = reason
			r.note(b, func(br *BoardReport) { br.Result, br.Reason, br.Stage = ResultSkipped, reason, name })
			r.emit(Event{Board: b, Stage: name, Wave: wave, Kind: "done", Result: ResultSkipped, Reason: reason})
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if why := r.haltsBefore(name, b); why != "" {
				r.abandon(ctx, wave, name, b, addr[b], why)
				return
			}
			started := time.Now()
			r.note(b, func(br *BoardReport) {
				br.Stage = name
				if br.Started.IsZero() {
					br.Started = started
				}
			})
			r.emit(Event{Board: b, Stage: name, Wave: wave, Kind: "start"})
			err := r.attempts(ctx, b, name, func(ctx context.Context, c *Client) error { return step(ctx, c, b) }, addr[b])
			r.note(b, func(br *BoardReport) { br.DurationMs += time.Since(started).Milliseconds() })
			if err != nil {
				if ctx.Err() != nil {
					return // interrupted: the board stays as it was, to resume
				}
				if why := r.cfg.Halt.Why(); why != "" && name == StagePrepare {
					r.abandon(ctx, wave, name, b, addr[b], why+" during its prepare")
					return
				}
				r.failures.Add(1)
				res := failureResult(err)
				r.note(b, func(br *BoardReport) { br.Result, br.Reason, br.Ended = res, err.Error(), time.Now() })
				r.emit(Event{Board: b, Stage: name, Wave: wave, Kind: "done", Result: res, Reason: err.Error()})
				return
			}
			r.mu.Lock()
			res := r.boards[b].Result
			r.mu.Unlock()
			r.emit(Event{Board: b, Stage: name, Wave: wave, Kind: "done", Result: res})
			mu.Lock()
			passed = append(passed, b)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.SortFunc(passed, func(a, b string) int { return slices.Index(boards, a) - slices.Index(boards, b) })
	return passed
}

// haltsBefore is the halt's reason when board b must not start stage
// name: a halt came, and b has not passed its safe point ("": it goes
// on). A board with an update of an earlier run prepares (its prepare
// step finds out how far its update went); one whose update was
// activated executes to its end.
func (r *run) haltsBefore(name, b string) string {
	why := r.cfg.Halt.Why()
	if why == "" {
		return ""
	}
	r.mu.Lock()
	rep := *r.boards[b]
	r.mu.Unlock()
	switch {
	case name == StagePrepare && rep.UpdateID == "":
		return why
	case name == StageExecute && !slices.Contains(activated, proto.Phase(rep.Phase)):
		return why
	}
	return ""
}

// activated are the phases of an update past its safe point: the board
// boots, or booted, its new slot.
var activated = []proto.Phase{proto.PhaseActivate, proto.PhaseTrial, proto.PhaseHeld, proto.PhaseCommit,
	proto.PhaseRollback, proto.PhaseDone}

// abandon skips board b at stage name, why (a halt): an update it
// prepared, or began to (its prepare cut short, in this run or an
// earlier one, maybe before the board named its update), is aborted on
// it, so that none is left behind (its running slot was never touched).
func (r *run) abandon(ctx context.Context, wave int, name, b, addr, why string) {
	r.mu.Lock()
	id, began := r.boards[b].UpdateID, r.boards[b].Stage == StagePrepare
	r.mu.Unlock()
	if id != "" || began {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.BoardTimeout)
		aborted := false
		c, err := r.cfg.Dial(actx, addr)
		if err == nil {
			aborted, err = r.abort(actx, c, id)
			c.Close()
		}
		cancel()
		switch {
		case err != nil:
			why += "; its update was not aborted: " + err.Error()
		case aborted:
			why += "; its update aborted"
		}
	}
	r.note(b, func(br *BoardReport) { br.Result, br.Reason, br.Stage, br.Ended = ResultSkipped, why, name, time.Now() })
	r.emit(Event{Board: b, Stage: name, Wave: wave, Kind: "done", Result: ResultSkipped, Reason: why})
}

// abort aborts update id on the board of c; with no id, the board's
// update of the rollout's version not yet activated, if it has one. It
// reports whether it aborted one.
func (r *run) abort(ctx context.Context, c *Client, id string) (bool, error) {
	if id == "" {
		st, err := c.OTAStatus(ctx)
		if err != nil {
			return false, err
		}
		u := st.Update
		if u == nil || !u.Phase.Abortable() || u.Version != r.cfg.Image.Manifest.Version {
			return false, nil
		}
		id = u.ID
	}
	_, err := c.OTAAbort(ctx, id)
	return err == nil, err
}

func (r *run) tooMany() bool {
	return r.cfg.MaxFailures >= 0 && int(r.failures.Load()) > r.cfg.MaxFailures
}

// RolloutFailure reports whether a board's result in a rollout counts
// against its MaxFailures: anything but committed, already current, and
// the results of a board not finished (none yet, skipped, interrupted).
func RolloutFailure(result string) bool {
	switch result {
	case "", string(proto.ResultCommitted), ResultCurrent, ResultSkipped, ResultInterrupted:
		return false
	}
	return true
}
