package service

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/rolloutjob"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/proto"
)

// RolloutRequest starts a rollout of the uploaded image to the boards of
// the inventory with every label of Select (the key "model" is the
// model), or among Boards, as `boardlink rollout` takes them: Concurrency
// boards at once in each stage (default 8), no new board once more than
// MaxFailures failed (-1: never), waves of WaveSize boards, each gated by
// Gate ("exec: COMMAND") before the next starts.
type RolloutRequest struct {
	Select        map[string]string `json:"select,omitempty" validate:"max=32,dive,keys,required,max=128,endkeys,max=256"`
	Boards        []string          `json:"boards,omitempty" validate:"max=4096,dive,required,max=63"`
	Concurrency   int               `json:"concurrency,omitempty" validate:"min=0,max=1024"`
	MaxFailures   int               `json:"max_failures,omitempty" validate:"min=-1"`
	WaveSize      int               `json:"wave_size,omitempty" validate:"min=0"`
	Gate          string            `json:"gate,omitempty" validate:"max=4200"`
	GateTimeoutMs int64             `json:"gate_timeout_ms,omitempty" validate:"min=0,max=86400000"`
	// PartWaitMs bounds how long a part waits for its owner to come back
	// before it is given up (default DefaultPartWait, at most MaxPartWait).
	PartWaitMs     int64 `json:"part_wait_ms,omitempty" validate:"min=0,max=2592000000"`
	BoardTimeoutMs int64 `json:"board_timeout_ms,omitempty" validate:"min=0,max=86400000"`
	Force          bool  `json:"force,omitempty"`
	// ID is the id the rollout is recorded under: only a service starting
	// its part of a rollout names it, and a rollout already recorded
	// under it is answered as it is (a part starts at most once).
	ID string `json:"id,omitempty" validate:"max=64"`
}

// RolloutStatus is a rollout as the API shows it: its record (with its
// boards' count per result) and every board's part, as far as it went.
type RolloutStatus struct {
	store.Rollout
	BoardResults []store.BoardResult `json:"board_results"`
	// Parts are the shares of the rollout for the boards the other
	// services sharing the database drive, each a rollout of its own on
	// its owner once started (rollout_parts.go).
	Parts []store.RolloutPart `json:"parts,omitempty"`
}

// StartRollout plans a rollout of the image file img (an upload spooled
// by the service, which the rollout takes over) to the boards r selects,
// records it and runs it in the background. A board another lease holds
// is refused; boards offline, in maintenance or in quarantine are left
// out. Each board reads updating while the rollout works on it. The
// boards other services drive get a part each, on record with the
// rollout (which is recorded even with no board of this service's),
// tried before the answer and, while its owner cannot be reached, again
// once it is back (rollout_parts.go).
func (s *Service) StartRollout(ctx context.Context, who user, img string, r RolloutRequest) (RolloutStatus, error) {
	if r.ID != "" {
		if !who.peer {
			return RolloutStatus{}, &FieldError{"id", "only a service starting its part of a rollout names its id"}
		}
		if id, err := s.st.ResolveRollout(ctx, r.ID); err == nil && id == r.ID {
			return s.Rollout(ctx, r.ID) // started already
		}
	}
	var gate *dispatcher.Gate
	if r.Gate != "" {
		var err error
		if gate, err = dispatcher.ParseGate(r.Gate); err != nil {
			return RolloutStatus{}, &FieldError{"gate", err.Error()}
		}
		gate.Timeout = time.Duration(r.GateTimeoutMs) * time.Millisecond
	}
	im, err := image.OpenFile(img)
	if err != nil {
		return RolloutStatus{}, &FieldError{UploadFile, err.Error()}
	}
	defer im.Close()
	others := s.othersBoards(who, r)
	targets, err := s.rolloutTargets(ctx, r)
	if err != nil && (len(others) == 0 || !errors.Is(err, ErrUnsatisfiable)) {
		return RolloutStatus{}, err
	}
	boardTimeout := time.Duration(r.BoardTimeoutMs) * time.Millisecond
	cfg := s.rolloutEnv()
	cfg.Image, cfg.Concurrency, cfg.BoardTimeout, cfg.Force = im, r.Concurrency, boardTimeout, r.Force
	plan := dispatcher.PlanRollout(ctx, cfg, targets)
	if err := ctx.Err(); err != nil {
		return RolloutStatus{}, err
	}
	// The image stays beside the database while the rollout may run, so
	// that a restarted service resumes it.
	dir, err := s.dataDir("rollouts")
	if err != nil {
		return RolloutStatus{}, err
	}
	kept := filepath.Join(dir, filepath.Base(img)+".img")
	if err := os.Rename(img, kept); err != nil {
		return RolloutStatus{}, err
	}
	concurrency := r.Concurrency
	if concurrency == 0 {
		concurrency = 8
	}
	sel := dispatcher.Selector(r.Select).String()
	if len(r.Boards) > 0 {
		sel = strings.TrimSpace(sel + " boards=" + strings.Join(r.Boards, ","))
	}
	id, err := rolloutjob.RecordRollout(ctx, s.st, rolloutjob.NewRollout{ID: r.ID, ImagePath: kept, Selector: sel, Plan: plan,
		Concurrency: concurrency, MaxFailures: r.MaxFailures, Spec: rolloutjob.RolloutSpec{Gate: gate, WaveSize: r.WaveSize,
			BoardTimeout: boardTimeout, Force: r.Force, Owner: s.rolloutOwner()}})
	if err != nil {
		os.Remove(kept)
		if r.ID != "" && errors.Is(err, store.ErrExists) {
			return s.Rollout(ctx, r.ID) // another try of the part recorded it first
		}
		return RolloutStatus{}, err
	}
	if err := s.recordParts(ctx, id, who, r, others); err != nil {
		// The rollout runs without them; its answer says why.
		s.log.Error("rollout parts not recorded", "rollout", id, "err", err)
	}
	s.log.Info("rollout started", "rollout", id, "by", who.name, "version", plan.Version, "boards", len(plan.Boards),
		"parts", len(others))
	s.mu.Lock()
	if s.stopped || s.ctx == nil {
		s.mu.Unlock()
		// Recorded as running: the next start runs it.
		return RolloutStatus{}, errServiceStopping
	}
	s.wg.Go(func() { s.runRollout(s.ctx, id) })
	life := s.ctx
	s.mu.Unlock()
	if parts, err := s.st.RolloutParts(ctx, id); err == nil {
		// Tried now, so that the answer names the parts' rollouts; for
		// the service's life, as a try left halfway is retried.
		s.startParts(life, parts)
	}
	s.kickParts() // it learns whom the others wait for
	return s.Rollout(ctx, id)
}

// rolloutTargets are the boards r selects, sorted by id.
func (s *Service) rolloutTargets(ctx context.Context, r RolloutRequest) ([]dispatcher.Target, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range r.Boards {
		if s.boards[id] == nil {
			return nil, fmt.Errorf("board %s: %w", id, ErrNoSuchBoard)
		}
	}
	var out []dispatcher.Target
	for _, id := range s.ids {
		b := s.boards[id]
		t := dispatcher.Target{ID: id, Address: b.address, Model: b.model, Labels: b.labels}
		if len(r.Boards) > 0 && !slices.Contains(r.Boards, id) || !dispatcher.Selector(r.Select).Match(t) {
			continue
		}
		if !b.online || b.state == Maintenance || b.state == Quarantined || b.owner != s.owner {
			continue // as discovery would not find it, a person holds it out, or another service drives it
		}
		if err := s.freeLocked(ctx, b); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no board in service matches (select %v, boards %v)", ErrUnsatisfiable, r.Select, r.Boards)
	}
	return out, nil
}

// rolloutEnv is what the service gives its rollouts: sessions of their
// own with the boards, under the lease rule, and the events that mark the
// boards updating.
func (s *Service) rolloutEnv() dispatcher.RolloutConfig {
	return dispatcher.RolloutConfig{Dial: s.rolloutDial, Events: s.rolloutEvent}
}

// rolloutDial opens a session with the board this service drives at
// addr, unless a lease holds it: a rollout never starts on a leased board
// (its attempts wait for the lease, then it fails naming the holder). One
// a rollout marked updating goes on: no lease takes it meanwhile. Another
// service's board may have the same address (an address is the view of
// the service that drives the board: each service in a network namespace
// of its own, its boards on its loopback), and is never the one meant.
func (s *Service) rolloutDial(ctx context.Context, addr string) (*dispatcher.Client, error) {
	s.mu.Lock()
	var b *board
	for _, id := range s.ids {
		if s.boards[id].address == addr && s.boards[id].owner == s.owner {
			b = s.boards[id]
			break
		}
	}
	var err error
	switch {
	case b == nil:
		err = fmt.Errorf("no board of the inventory is at %s: %w", addr, ErrNoSuchBoard)
	case !s.rolloutHoldsLocked(b.id) && b.lease != "":
		err = s.leasedLocked(b)
	default:
		s.rolloutTakeLocked(b)
	}
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return s.dial(ctx, b, addr)
}

// rolloutEvent follows a rollout run by the service: a board it starts
// on reads updating until it has a result, and those watching the
// rollout are woken.
func (s *Service) rolloutEvent(e dispatcher.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.boards[e.Board]; b != nil && e.Rollout != "" {
		marked := s.rolled[e.Rollout]
		switch {
		case e.Kind == "start" && !marked[e.Board]:
			if marked == nil {
				marked = map[string]bool{}
				s.rolled[e.Rollout] = marked
			}
			// A leased board is marked once its lease is over (rolloutDial).
			marked[e.Board] = b.lease == ""
			if marked[e.Board] {
				s.markUpdatingLocked(b, true)
			}
		case e.Kind == "done" && e.Result != "":
			if marked[e.Board] {
				s.markUpdatingLocked(b, false)
			}
			delete(marked, e.Board)
		case e.Kind == "progress" && marked[e.Board]:
			s.holdUpdatingLocked(b)
		}
	}
	close(s.rolloutChanged)
	s.rolloutChanged = make(chan struct{})
}

// rolloutEnded unmarks the boards rollout id still had marked updating
// (it was interrupted) and, once it is over, removes its image.
func (s *Service) rolloutEnded(id string, rep dispatcher.Report, err error) {
	s.mu.Lock()
	for bid, on := range s.rolled[id] {
		if b := s.boards[bid]; b != nil && on {
			s.markUpdatingLocked(b, false)
		}
	}
	delete(s.rolled, id)
	delete(s.halts, id)
	close(s.rolloutChanged)
	s.rolloutChanged = make(chan struct{})
	s.mu.Unlock()
	ctx := context.WithoutCancel(s.ctx)
	if err == nil && rep.Stopped != "" {
		s.cancelParts(ctx, id, rep.Stopped)
	}
	s.settleParent(ctx, id)
	s.log.Info("rollout ended", "rollout", id, "stopped", rep.Stopped, "err", err)
}

// runRollout runs the recorded rollout id to its end, or until the
// service stops (it stays running then, for the next start).
func (s *Service) runRollout(ctx context.Context, id string) {
	env := s.rolloutEnv()
	var ok bool
	if env.Halt, ok = s.haltFor(id); !ok {
		return // its resume runs it
	}
	rep, err := rolloutjob.RunRecorded(ctx, s.st, id, env)
	s.rolloutEnded(id, rep, err)
}

// resumeRollouts runs on the rollouts the service ran that a stop or a
// crash left unfinished.
func (s *Service) resumeRollouts(ctx context.Context) {
	var wg sync.WaitGroup
	// Its own, and those of a database older than several services.
	for _, owner := range []string{s.rolloutOwner(), rolloutjob.OwnerService} {
		wg.Go(func() {
			outs, err := rolloutjob.ResumeRollouts(ctx, s.st, owner, s.rolloutEnv(), s.haltFor)
			if err != nil {
				s.log.Error("rollouts not resumed", "err", err)
			}
			for _, o := range outs {
				s.rolloutEnded(o.ID, o.Report, o.Err)
			}
		})
	}
	wg.Wait()
}

// Rollout returns rollout id (or a unique prefix of one) with its boards.
func (s *Service) Rollout(ctx context.Context, id string) (RolloutStatus, error) {
	rec, boards, err := s.st.Rollout(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return RolloutStatus{}, &APIError{Status: http.StatusNotFound, Reason: string(proto.ReasonNotFound),
			Message: "no such rollout: " + id}
	case errors.Is(err, store.ErrAmbiguous):
		return RolloutStatus{}, &FieldError{"id", err.Error()}
	case err != nil:
		return RolloutStatus{}, err
	}
	rec.Plan = nil // the boards say it
	if boards == nil {
		boards = []store.BoardResult{}
	}
	return s.withParts(ctx, RolloutStatus{Rollout: rec, BoardResults: boards})
}

// WaitRollout returns rollout id once it changed from updated (its last
// Updated time as the caller saw it), once it is over, or after wait.
func (s *Service) WaitRollout(ctx context.Context, id string, updated time.Time, wait time.Duration) (RolloutStatus, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	// A share another service runs moves in the database only: it is
	// read again every rolloutPoll.
	poll := time.NewTicker(rolloutPoll)
	defer poll.Stop()
	for {
		s.mu.Lock()
		changed := s.rolloutChanged
		s.mu.Unlock()
		st, err := s.Rollout(ctx, id)
		if err != nil || wait <= 0 || st.State != store.StateRunning || !st.Updated.Equal(updated) {
			return st, err
		}
		select {
		case <-changed:
		case <-poll.C:
		case <-deadline.C:
			return st, nil
		case <-ctx.Done():
			return st, nil
		case <-s.closing:
			return st, nil
		}
	}
}

func (s *Service) hStartRollout(w http.ResponseWriter, r *http.Request, c *call) error {
	var req RolloutRequest
	img, err := s.readUpload(r, &req)
	if err != nil {
		return err
	}
	defer os.Remove(img) // a no-op once the rollout took it
	c.detail = fmt.Sprintf("select %v boards %v gate %q", req.Select, req.Boards, req.Gate)
	st, err := s.StartRollout(r.Context(), c.user, img, req)
	if err != nil {
		return err
	}
	c.detail = fmt.Sprintf("rollout %s of %s to %d boards; %s", st.ID, st.Version, st.Boards, c.detail)
	writeJSON(w, http.StatusCreated, st)
	return nil
}

func (s *Service) hRollouts(w http.ResponseWriter, r *http.Request, c *call) error {
	limit, err := queryInt(r, "limit", 100, 1, 10000)
	if err != nil {
		return err
	}
	rs, err := s.st.Rollouts(r.Context(), int(limit))
	if err != nil {
		return err
	}
	if rs == nil {
		rs = []store.Rollout{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"rollouts": rs})
	return nil
}

func (s *Service) hRollout(w http.ResponseWriter, r *http.Request, c *call) error {
	wait, err := queryInt(r, "wait_ms", 0, 0, maxLongPoll.Milliseconds())
	if err != nil {
		return err
	}
	var updated time.Time
	if u := r.URL.Query().Get("updated"); u != "" {
		if updated, err = time.Parse(time.RFC3339Nano, u); err != nil {
			return &FieldError{"updated", "must be an RFC 3339 time (the rollout's updated, as last seen)"}
		}
	}
	st, err := s.WaitRollout(r.Context(), r.PathValue("id"), updated, time.Duration(wait)*time.Millisecond)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}
