package service

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/boardlink/boardlink/dispatcher/store"
)

// journal writes what the service records of itself (board rows, its
// own audit entries, sightings) in the background, so that a heartbeat
// never waits for the disk while holding the service's lock. A board's
// row is written once for many changes: only its latest snapshot is kept.
type journal struct {
	st  *store.Store
	log *slog.Logger

	// flushing is held through a whole flush, so that a flush called
	// to read what was recorded waits for one the writer has begun.
	flushing sync.Mutex

	mu     sync.Mutex
	boards map[string]store.LabBoard
	audits []store.AuditEntry
	sights []store.Sighting
	wake   chan struct{}
}

// maxPending bounds the audit entries and sightings waiting to be
// written; beyond it the oldest are dropped (and said so in the log).
const maxPending = 100000

func newJournal(st *store.Store, log *slog.Logger) *journal {
	return &journal{st: st, log: log, boards: map[string]store.LabBoard{}, wake: make(chan struct{}, 1)}
}

func (j *journal) signal() {
	select {
	case j.wake <- struct{}{}:
	default:
	}
}

func (j *journal) board(b store.LabBoard) {
	j.mu.Lock()
	j.boards[b.ID] = b
	j.mu.Unlock()
	j.signal()
}

func (j *journal) audit(e store.AuditEntry) {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	j.mu.Lock()
	if len(j.audits) >= maxPending {
		j.log.Warn("journal: audit entry dropped: the store falls behind", "action", j.audits[0].Action)
		j.audits = j.audits[1:]
	}
	j.audits = append(j.audits, e)
	j.mu.Unlock()
	j.signal()
}

func (j *journal) sight(sg store.Sighting) {
	j.mu.Lock()
	if len(j.sights) < maxPending {
		j.sights = append(j.sights, sg)
	}
	j.mu.Unlock()
	j.signal()
}

// run writes until ctx ends.
func (j *journal) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-j.wake:
		}
		if err := j.flush(context.WithoutCancel(ctx)); err != nil {
			j.log.Error("journal: write", "err", err)
		}
	}
}

// flush writes everything pending, including what another flush has
// taken but not yet written.
func (j *journal) flush(ctx context.Context) error {
	j.flushing.Lock()
	defer j.flushing.Unlock()
	j.mu.Lock()
	boards, audits, sights := j.boards, j.audits, j.sights
	j.boards, j.audits, j.sights = map[string]store.LabBoard{}, nil, nil
	j.mu.Unlock()
	for _, b := range boards {
		if err := j.st.PutLabBoard(ctx, b); err != nil {
			return err
		}
	}
	for _, e := range audits {
		if _, err := j.st.AddAudit(ctx, e); err != nil {
			return err
		}
	}
	for _, sg := range sights {
		if err := j.st.Sight(ctx, sg); err != nil {
			return err
		}
	}
	return nil
}
