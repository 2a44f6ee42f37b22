package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/boardlink/boardlink/dispatcher/store"
)

// The dashboard on a board another service owns (several services on one
// database): the browser's form token and origin are checked here, by the
// service it talks to; the action is then asked of the board's owner
// through its API, with the peer token and the signed-in user's name, as
// the API forwards (forward.go). The owner records what it did; an action
// that cannot reach the owner is refused and recorded here.

// peerViewTimeout bounds the wait for the owner's view of one of its
// boards, which a board's page renders (else it shows this service's).
const peerViewTimeout = 5 * time.Second

// boardView is board id as its page shows it: its owner's view if
// another service owns it and answers (it knows the board's power driver,
// agent and slots), else this service's.
func (d *dashboard) boardView(ctx context.Context, id string, v viewer) (Board, error) {
	b, err := d.s.Board(id)
	if err != nil {
		return b, err
	}
	pc, _, _ := d.s.ownerClient(id, v.user)
	if pc == nil || !v.signedIn {
		return b, nil
	}
	ctx, cancel := context.WithTimeout(ctx, peerViewTimeout)
	defer cancel()
	theirs, err := pc.Board(ctx, id)
	if err != nil {
		d.s.log.Debug("dashboard: the owner's view of a board", "board", id, "owner", b.Owner, "err", err)
		return b, nil
	}
	return theirs, nil
}

// powerBoard switches board id's power for v under lease (or none):
// through its owner if another service owns it (which records it), else
// here. An action that cannot reach the owner is refused, and recorded
// here.
func (d *dashboard) powerBoard(ctx context.Context, v viewer, id, lease, action string) error {
	pc, owner, err := d.s.ownerClient(id, v.user)
	switch {
	case pc != nil:
		if err = ownerAnswered(id, owner, pc.Power(ctx, id, lease, action)); !errors.Is(err, errNoAnswer) {
			return err
		}
	case err == nil:
		err = d.s.Power(ctx, v.user, id, lease, action)
	}
	d.s.journal.audit(store.AuditEntry{User: v.user.name, Action: "board.power", Board: id, Lease: lease,
		Result: result(err), Detail: action + " (dashboard)"})
	return err
}

// errNoAnswer marks an action asked of a board's owner that the owner did
// not take (it did not answer, or refused the peer token): the owner has
// no record of it.
var errNoAnswer = errors.New("no answer")

// ownerAnswered is the error of an action asked of board id's owner: its
// own answer, or one that says the owner did not take it.
func ownerAnswered(id, owner string, err error) error {
	var ae *APIError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae) && ae.Status == http.StatusUnauthorized:
		return fmt.Errorf("board %s: %w: its owner %s refused this service's peer token (%w)", id, ErrOffline, owner, errNoAnswer)
	case errors.As(err, &ae):
		return err
	}
	return fmt.Errorf("%w (%w)", unreachable(id, owner, err), errNoAnswer)
}

// console writes board id's console since t to w (and, with follow, what
// comes): from its owner's record if another service owns it, else from
// this service's.
func (d *dashboard) console(ctx context.Context, v viewer, id string, t time.Time, follow bool, w io.Writer) error {
	pc, owner, err := d.s.ownerClient(id, v.user)
	if pc == nil {
		if err != nil {
			return err
		}
		return d.s.Console(ctx, id, t, follow, w, nil)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-d.s.closing: // as the local record's follow ends
			cancel()
		case <-ctx.Done():
		}
	}()
	return ownerAnswered(id, owner, pc.Console(ctx, id, t.UTC().Format(time.RFC3339Nano), follow, w))
}

// tailBuffer keeps the last consoleTail bytes written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > consoleTail {
		t.b = append(t.b[:0], t.b[len(t.b)-consoleTail:]...)
	}
	return len(p), nil
}
