package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/boardlink/boardlink/dispatcher/consolelog"
	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/proto"
)

// Errors of actions on boards a caller branches on.
var (
	// ErrOffline: the board's agent does not answer now.
	ErrOffline = errors.New("board offline")
	// ErrNoConsole: the service keeps no console of the board (it is not
	// on a serial line, or no recorder is configured).
	ErrNoConsole = errors.New("no console recorded")
)

// Board is a board as the API shows it.
type Board struct {
	ID       string            `json:"id"`
	Address  string            `json:"address"`
	Source   string            `json:"source"`
	Model    string            `json:"model"`
	Labels   map[string]string `json:"labels,omitempty"`
	State    State             `json:"state"`
	Reason   string            `json:"reason,omitempty"`
	Online   bool              `json:"online"`
	Lease    string            `json:"lease,omitempty"`
	Holder   string            `json:"holder,omitempty"`
	BootID   string            `json:"boot_id,omitempty"`
	Agent    string            `json:"agent,omitempty"`
	Slots    []proto.Slot      `json:"slots,omitempty"`
	LastSeen time.Time         `json:"last_seen,omitzero"`
	Failures int               `json:"failures"`
	Power    bool              `json:"power"`   // it has a power driver
	Console  bool              `json:"console"` // its console is recorded
	// Owner is the service that drives the board, when several share the
	// database; OwnerGone is when its claim expired, if it vanished.
	Owner     string    `json:"owner,omitempty"`
	OwnerGone time.Time `json:"owner_gone,omitzero"`
}

func (s *Service) boardViewLocked(b *board) Board {
	v := Board{ID: b.id, Address: b.address, Source: b.source, Model: b.model, Labels: maps.Clone(b.labels),
		State: b.state, Reason: b.reason, Online: b.online, Lease: b.lease, BootID: b.bootID, Agent: b.agent,
		Slots: slices.Clone(b.slots), LastSeen: b.lastSeen, Failures: b.failures, Power: b.power != nil,
		Console: onLine(b.address), Owner: b.owner, OwnerGone: b.ownerGone}
	if l := s.leases[b.lease]; l != nil {
		v.Holder = l.Holder
	} else if b.hold.Lease == b.lease {
		v.Holder = b.hold.Holder
	}
	return v
}

// Boards returns the inventory, sorted by id.
func (s *Service) Boards() []Board {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Board, 0, len(s.ids))
	for _, id := range s.ids {
		out = append(out, s.boardViewLocked(s.boards[id]))
	}
	return out
}

// boardFilter selects boards of the inventory; a zero field selects all.
type boardFilter struct {
	State State
	Owner string // the service that drives it
	Text  string // in its id, model or a label's key or value, case aside
}

func (f boardFilter) matches(b *board) bool {
	if f.State != "" && b.state != f.State || f.Owner != "" && b.owner != f.Owner {
		return false
	}
	if f.Text == "" || containsFold(b.id, f.Text) || containsFold(b.model, f.Text) {
		return true
	}
	for k, v := range b.labels {
		if containsFold(k, f.Text) || containsFold(v, f.Text) {
			return true
		}
	}
	return false
}

// containsFold reports whether sub is in s, case aside, without the
// copies strings.ToLower would make.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

// boardsPage is a page of the inventory, as the dashboard shows it.
type boardsPage struct {
	Boards  []Board // the page's, sorted by id
	Matched int     // the boards f selects
	Counts  map[State]int
	Owners  []string // the owners of all boards, sorted
}

// pageOfBoards returns the boards f selects from the skip-th on, at most
// limit of them, and the counts of all boards by state. It makes the view
// of the page's boards only: a round of a live page of a large lab costs
// a pass over the inventory, not a copy of it.
func (s *Service) pageOfBoards(f boardFilter, skip, limit int) boardsPage {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := boardsPage{Counts: map[State]int{}}
	for _, id := range s.ids {
		b := s.boards[id]
		p.Counts[b.state]++
		if b.owner != "" && !slices.Contains(p.Owners, b.owner) { // a few services at most
			p.Owners = append(p.Owners, b.owner)
		}
		if !f.matches(b) {
			continue
		}
		if p.Matched >= skip && len(p.Boards) < limit {
			p.Boards = append(p.Boards, s.boardViewLocked(b))
		}
		p.Matched++
	}
	slices.Sort(p.Owners)
	return p
}

// Board returns one board.
func (s *Service) Board(id string) (Board, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.boards[id]
	if b == nil {
		return Board{}, fmt.Errorf("board %s: %w", id, ErrNoSuchBoard)
	}
	return s.boardViewLocked(b), nil
}

// SetMaintenance takes board id out of the lab (on) or puts it back. A
// board a lease holds is refused: the lease ends first.
func (s *Service) SetMaintenance(who user, id string, on bool, reason string) (Board, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.boards[id]
	if b == nil {
		return Board{}, fmt.Errorf("board %s: %w", id, ErrNoSuchBoard)
	}
	var err error
	switch {
	case on && b.lease != "":
		err = s.leasedLocked(b)
	case on:
		err = s.setStateLocked(b, Maintenance, fmt.Sprintf("by %s: %s", who.name, reason))
	case b.state == Maintenance:
		err = s.setStateLocked(b, b.settledLocked(), "maintenance ended by "+who.name)
		s.scheduleLocked(time.Now())
	}
	return s.boardViewLocked(b), err
}

// ReleaseQuarantine puts a quarantined board back, its failures
// forgotten.
func (s *Service) ReleaseQuarantine(who user, id string) (Board, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.boards[id]
	if b == nil {
		return Board{}, fmt.Errorf("board %s: %w", id, ErrNoSuchBoard)
	}
	if b.state != Quarantined {
		return s.boardViewLocked(b), &StateError{Board: id, From: b.state, To: b.settledLocked()}
	}
	b.failures = 0
	err := s.setStateLocked(b, b.settledLocked(), "quarantine released by "+who.name)
	s.scheduleLocked(time.Now())
	return s.boardViewLocked(b), err
}

// MarkUpdating says an update through the service (an OTA, a rollout)
// begins on board id (on) or is done with it. Marks count: the board reads
// updating while any holds it, whenever the state table lets it be (not
// while a person holds it out of the lab, nor while it is offline), and
// goes back to its settled state when the last ends.
func (s *Service) MarkUpdating(id string, on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.boards[id]
	if b == nil {
		return fmt.Errorf("board %s: %w", id, ErrNoSuchBoard)
	}
	s.markUpdatingLocked(b, on)
	return nil
}

func (s *Service) markUpdatingLocked(b *board, on bool) {
	if on {
		b.updating++
		s.holdUpdatingLocked(b)
		return
	}
	if b.updating == 0 {
		return
	}
	b.updating--
	if b.updating == 0 && b.state == Updating {
		s.must(s.setStateLocked(b, b.settledLocked(), "update done"))
		s.scheduleLocked(time.Now())
	}
}

// holdUpdatingLocked puts b back in updating when an update marked it and
// it came back from a reboot (offline, then idle or leased).
func (s *Service) holdUpdatingLocked(b *board) {
	if b.updating > 0 && (b.state == Idle || b.state == Leased) {
		s.must(s.setStateLocked(b, Updating, "update under way"))
	}
}

// leasedLocked is the refusal of an action on b, which a lease holds.
func (s *Service) leasedLocked(b *board) error {
	e := &LeasedError{Board: b.id, Lease: b.lease}
	if l := s.leases[b.lease]; l != nil {
		e.Holder, e.Expires = l.Holder, l.Expires
	} else if b.hold.Lease == b.lease {
		e.Holder, e.Expires = b.hold.Holder, b.hold.Expires
	}
	return e
}

// freeLocked is nil if no lease holds b, else the refusal. A lease of
// another service is looked up again in the database: this service
// learns of its end at its next claim round only.
func (s *Service) freeLocked(ctx context.Context, b *board) error {
	if b.lease != "" && s.leases[b.lease] == nil {
		if err := s.readHoldLocked(ctx, b); err != nil {
			return err
		}
	}
	if b.lease != "" {
		return s.leasedLocked(b)
	}
	return nil
}

// readHoldLocked reads which lease of another service holds b, if any,
// from the database's lease table.
func (s *Service) readHoldLocked(ctx context.Context, b *board) error {
	hs, err := s.st.Holds(ctx, time.Now(), b.id)
	if err != nil {
		return err
	}
	s.holdLocked(b, hs[b.id])
	return nil
}

// accessLocked checks that who may act on b under lease (maybe ""): a
// board a lease holds takes only that lease, from its holder. A board
// no lease of this service holds is looked up in the database's lease
// table, which another service sharing it may have granted it from.
func (s *Service) accessLocked(ctx context.Context, who user, b *board, lease string) error {
	if b.lease == "" || s.leases[b.lease] == nil {
		if err := s.readHoldLocked(ctx, b); err != nil {
			return err
		}
	}
	if b.lease != "" && b.lease != lease {
		return s.leasedLocked(b)
	}
	if lease == "" {
		return nil
	}
	l, err := s.lookupLocked(ctx, lease)
	if err != nil {
		return err
	}
	if l.Holder != who.name {
		return fmt.Errorf("lease %s: %w (%s)", lease, ErrNotHolder, l.Holder)
	}
	if b.lease != lease {
		return fmt.Errorf("lease %s does not hold board %s: %w", lease, b.id, ErrNotHolder)
	}
	return nil
}

// ExecRequest is a command to run on a board through the service.
type ExecRequest struct {
	Argv       []string          `json:"argv" validate:"required,min=1,max=4096,argv"`
	Shell      bool              `json:"shell,omitempty"`
	Env        map[string]string `json:"env,omitempty" validate:"max=1024,dive,keys,required,envkey,endkeys,excludes=\x00"`
	Cwd        string            `json:"cwd,omitempty" validate:"omitempty,max=4096,excludes=\x00"`
	TimeoutMs  int64             `json:"timeout_ms,omitempty" validate:"min=0"`
	KillSignal string            `json:"kill_signal,omitempty" validate:"omitempty,oneof=HUP INT QUIT KILL USR1 USR2 TERM"`
}

// ExecOutcome is how a command run through the service ended: its record
// and, if the service canceled it, why (its lease ended, the board was
// given to a lease, the connection failed).
type ExecOutcome struct {
	Result   proto.ExecResult `json:"result"`
	Canceled string           `json:"canceled,omitempty"`
}

// Power switches board id's power: "on", "off" or "cycle".
func (s *Service) Power(ctx context.Context, who user, id, lease, action string) error {
	s.mu.Lock()
	b := s.boards[id]
	if b == nil {
		s.mu.Unlock()
		return fmt.Errorf("board %s: %w", id, ErrNoSuchBoard)
	}
	if err := s.accessLocked(ctx, who, b, lease); err != nil {
		s.mu.Unlock()
		return err
	}
	p := b.power
	s.mu.Unlock()
	if p == nil {
		return fmt.Errorf("board %s: %w", id, power.ErrNoPower)
	}
	a, err := power.ParseAction(action)
	if err != nil {
		return &FieldError{"action", err.Error()}
	}
	return p.Do(ctx, a)
}

// Console writes board id's console text recorded since t to w and, with
// follow, then what comes, until ctx ends or the service stops. A line
// still arriving is written as far as it came (its newline once the next
// line begins). flush, if set, is called after each write.
func (s *Service) Console(ctx context.Context, id string, t time.Time, follow bool, w io.Writer, flush func()) error {
	s.mu.Lock()
	b := s.boards[id]
	var addr string
	if b != nil {
		addr = b.address
	}
	s.mu.Unlock()
	if b == nil {
		return fmt.Errorf("board %s: %w", id, ErrNoSuchBoard)
	}
	if !onLine(addr) {
		return fmt.Errorf("board %s (%s is no serial line): %w", id, addr, ErrNoConsole)
	}
	l, err := s.consoles.Log(id)
	if err != nil {
		return err
	}
	w = s.metrics.countWriter(movedConsole, fromBoard, w)
	cur := consoleCursor{since: t}
	for {
		lines, err := l.Since(cur.since)
		if err != nil {
			return err
		}
		if text := cur.next(lines); len(text) > 0 {
			if _, err := w.Write(text); err != nil {
				return err
			}
			if flush != nil {
				flush()
			}
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.closing:
			return nil
		case <-time.After(consolePoll):
		}
	}
}

// consolePoll is how often a followed console is read again.
const consolePoll = 200 * time.Millisecond

// consoleCursor is how far a reader of a console record got: the time of
// the last line it saw, how many lines before it had that same time, and
// how much of that last line it wrote (a line may still be arriving).
type consoleCursor struct {
	since   time.Time
	skip    int
	partial int
	started bool
}

// next is the text of lines (the record since c.since) not written yet,
// and moves c past it. The last line goes without its newline, which
// comes when a line after it does.
func (c *consoleCursor) next(lines []consolelog.Line) []byte {
	if c.started {
		lines = lines[min(c.skip, len(lines)):]
	}
	if len(lines) == 0 {
		return nil
	}
	var out []byte
	first := lines[0].Text
	if c.started {
		first = first[min(c.partial, len(first)):]
	}
	out = append(out, first...)
	for _, ln := range lines[1:] {
		out = append(append(out, '\n'), ln.Text...)
	}
	last := lines[len(lines)-1]
	same := 0
	for _, ln := range lines {
		if ln.Time.Equal(last.Time) {
			same++
		}
	}
	if c.started && c.since.Equal(last.Time) {
		same += c.skip // lines at that time skipped above
	}
	c.since, c.skip, c.partial, c.started = last.Time, same-1, len(last.Text), true
	return out
}

// Audit returns audit entries, newest first.
func (s *Service) Audit(ctx context.Context, f store.AuditFilter) ([]store.AuditEntry, error) {
	if err := s.journal.flush(ctx); err != nil {
		return nil, err
	}
	return s.st.Audit(ctx, f)
}
