package store

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestRolloutParts: a rollout's parts on record, on both engines: they
// start waiting and hold their parent running; a try is won by one store
// of two, keeps its rollout id across tries and waits for its next try;
// started, the parent reads its own state again; given up, stopped.
func TestRolloutParts(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		dsn := newDB(t)
		a, b := open(t, dsn), open(t, dsn)
		if err := a.CreateRollout(ctx, Rollout{ID: "r-1", State: StateDone, Updated: at(0)}); err != nil {
			t.Fatal(err)
		}
		parts := []RolloutPart{
			{Parent: "r-1", Owner: "B", Home: "A", Boards: []string{"b-1", "b-2"}, Request: []byte(`{"max_failures":-1}`), Requester: "alice"},
			{Parent: "r-1", Owner: "C", Home: "A", Boards: []string{"c-1"}, Requester: "alice"},
		}
		if err := a.CreateRolloutParts(ctx, parts); err != nil {
			t.Fatal(err)
		}
		if err := a.CreateRolloutParts(ctx, parts[:1]); !errors.Is(err, ErrExists) {
			t.Fatalf("a part twice: %v", err)
		}
		state := func(want string) {
			t.Helper()
			r, _, err := b.Rollout(ctx, "r-1")
			if err != nil || r.State != want {
				t.Fatalf("parent: %+v %v, want %s", r, err, want)
			}
			if rs, err := b.Rollouts(ctx, 0); err != nil || len(rs) != 1 || rs[0].State != want {
				t.Fatalf("list: %+v %v, want %s", rs, err, want)
			}
		}
		state(StateRunning)
		got, err := b.RolloutParts(ctx, "r-1")
		if err != nil || len(got) != 2 || got[0].Owner != "B" || got[0].State != PartWaiting || len(got[0].Boards) != 2 ||
			string(got[0].Request) != `{"max_failures":-1}` || got[1].Owner != "C" || string(got[1].Request) != "{}" {
			t.Fatalf("%+v %v", got, err)
		}
		if r, _, _ := b.Rollout(ctx, "r-1"); !r.Updated.Equal(got[0].Updated) {
			t.Fatalf("the parent's updated %v is not its parts' %v", r.Updated, got[0].Updated)
		}

		// Two stores try B's part at once: one wins.
		now := time.Now()
		var wg sync.WaitGroup
		won := make([]int, 2)
		for i, s := range []*Store{a, b} {
			wg.Go(func() {
				n, err := s.MovePart(ctx, PartMove{Parent: "r-1", Owner: "B", From: PartWaiting, To: PartStarting,
					Rollout: []string{"r-x", "r-y"}[i], At: now})
				if err != nil {
					t.Error(err)
				}
				won[i] = n
			})
		}
		wg.Wait()
		if won[0]+won[1] != 1 {
			t.Fatalf("both or neither started it: %v", won)
		}
		got, _ = a.RolloutParts(ctx, "r-1")
		first := got[0].Rollout
		if got[0].State != PartStarting || got[0].Attempts != 1 || (first != "r-x" && first != "r-y") || !got[0].Tried.Equal(now.Truncate(0).UTC()) {
			t.Fatalf("%+v", got[0])
		}
		// Refused: back to waiting until its next try, with its id.
		next := now.Add(time.Minute)
		if n, err := a.MovePart(ctx, PartMove{Parent: "r-1", Owner: "B", From: PartStarting, To: PartWaiting, Error: "no",
			Refused: true, NextTry: next}); err != nil || n != 1 {
			t.Fatalf("%d %v", n, err)
		}
		if n, err := a.MovePart(ctx, PartMove{Parent: "r-1", Owner: "B", From: PartWaiting, To: PartStarting, Rollout: "r-z", At: now}); err != nil || n != 0 {
			t.Fatalf("tried before its next try: %d %v", n, err)
		}
		if n, err := a.MovePart(ctx, PartMove{Parent: "r-1", Owner: "B", From: PartWaiting, To: PartStarting, Rollout: "r-z", At: next}); err != nil || n != 1 {
			t.Fatalf("at its next try: %d %v", n, err)
		}
		if n, err := a.MovePart(ctx, PartMove{Parent: "r-1", Owner: "B", From: PartStarting, To: PartStarted}); err != nil || n != 1 {
			t.Fatalf("%d %v", n, err)
		}
		got, _ = a.RolloutParts(ctx, "r-1")
		if got[0].State != PartStarted || got[0].Rollout != first || got[0].Attempts != 2 || got[0].Refusals != 1 || got[0].Error != "" {
			t.Fatalf("%+v", got[0])
		}
		if _, err := a.MovePart(ctx, PartMove{Parent: "r-1", Owner: "B", From: PartStarted, To: PartWaiting}); err == nil {
			t.Fatal("a started part moved back")
		}
		if _, err := a.MovePart(ctx, PartMove{Parent: "r-1", Owner: "C", From: PartStarting, To: PartCancelled}); err == nil {
			t.Fatal("a starting part cancelled")
		}
		if open, err := a.OpenRolloutParts(ctx, "A"); err != nil || len(open) != 1 || open[0].Owner != "C" {
			t.Fatalf("open parts: %+v %v", open, err)
		}
		state(StateRunning) // C's part still waits
		if n, err := a.MovePart(ctx, PartMove{Parent: "r-1", From: PartWaiting, To: PartCancelled, Error: "stopped"}); err != nil || n != 1 {
			t.Fatalf("%d %v", n, err)
		}
		state(StateStopped)
		if open, err := a.OpenRolloutParts(ctx, "A"); err != nil || len(open) != 0 {
			t.Fatalf("open parts: %+v %v", open, err)
		}
	})
}

// TestMigrateFromVersion5: a database of schema version 5 (before parts)
// gains the parts' table and keeps its rollouts, which read as before.
func TestMigrateFromVersion5(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		dsn := newDB(t)
		s := open(t, dsn)
		if err := s.CreateRollout(ctx, Rollout{ID: "r-1", State: StateDone}); err != nil {
			t.Fatal(err)
		}
		if err := s.PutBoard(ctx, BoardResult{RolloutID: "r-1", BoardID: "a-1", Result: ResultCommitted, Phase: PhaseDone}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		db := raw(t, dsn)
		for _, q := range append(slices.Concat(toVersion7, toVersion6), `DROP TABLE rollout_parts`, `UPDATE schema_version SET version = 5`) {
			if _, err := db.Exec(q); err != nil {
				t.Fatal(err)
			}
		}
		s = open(t, dsn)
		if v := schemaVersion(t, dsn); v != SchemaVersion() {
			t.Fatalf("schema version %d", v)
		}
		if r, bs, err := s.Rollout(ctx, "r-1"); err != nil || r.State != StateDone || len(bs) != 1 || r.Summary[ResultCommitted] != 1 {
			t.Fatalf("%+v %+v %v", r, bs, err)
		}
		if err := s.CreateRolloutParts(ctx, []RolloutPart{{Parent: "r-1", Owner: "B", Home: "A"}}); err != nil {
			t.Fatal(err)
		}
		if r, _, err := s.Rollout(ctx, "r-1"); err != nil || r.State != StateRunning {
			t.Fatalf("%+v %v", r, err)
		}
	})
}

// TestRolloutStopAndRetry, on both engines: a stop on record keeps the
// first reason, and an unknown rollout is ErrNotFound; a part waiting is
// given up, tried again by hand from there only (its refusals reset, it
// waits since the retry), and a part given up is cancelled by a stop.
func TestRolloutStopAndRetry(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		if err := s.CreateRollout(ctx, Rollout{ID: "r-1", State: StateRunning}); err != nil {
			t.Fatal(err)
		}
		for _, why := range []string{"stopped by alice", "stopped by bob"} {
			if _, err := s.StopRollout(ctx, "r-1", why); err != nil {
				t.Fatal(err)
			}
		}
		if r, _, err := s.Rollout(ctx, "r-1"); err != nil || r.Stop != "stopped by alice" {
			t.Fatalf("%+v %v", r, err)
		}
		if rs, err := s.Rollouts(ctx, 0); err != nil || len(rs) != 1 || rs[0].Stop != "stopped by alice" {
			t.Fatalf("the list: %+v %v", rs, err)
		}
		if _, err := s.StopRollout(ctx, "r-", "stopped by alice"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a prefix: %v", err)
		}
		since := at(1)
		if err := s.CreateRolloutParts(ctx, []RolloutPart{{Parent: "r-1", Owner: "B", Home: "A", Waiting: since}}); err != nil {
			t.Fatal(err)
		}
		move := func(from, to PartState, want int) {
			t.Helper()
			n, err := s.MovePart(ctx, PartMove{Parent: "r-1", Owner: "B", From: from, To: to, Refused: true, Error: string(to), At: at(2)})
			if err != nil || n != want {
				t.Fatalf("%s to %s: %d %v", from, to, n, err)
			}
		}
		if ps, err := s.RolloutParts(ctx, "r-1"); err != nil || !ps[0].Waiting.Equal(since) {
			t.Fatalf("%+v %v", ps, err)
		}
		move(PartWaiting, PartGivenUp, 1)
		if _, err := s.MovePart(ctx, PartMove{Parent: "r-1", Owner: "B", From: PartStarted, To: PartWaiting}); err == nil {
			t.Fatal("a started part tried again")
		}
		move(PartGivenUp, PartWaiting, 1)
		ps, err := s.RolloutParts(ctx, "r-1")
		if err != nil || ps[0].State != PartWaiting || ps[0].Refusals != 0 || !ps[0].Waiting.Equal(at(2)) {
			t.Fatalf("tried again: %+v %v", ps, err)
		}
		move(PartWaiting, PartGivenUp, 1)
		move(PartGivenUp, PartCancelled, 1)
		move(PartGivenUp, PartWaiting, 0)
	})
}

// TestRolloutStopOnlyWhileItRuns, on both engines: a stop is recorded on
// a rollout while a stop changes something (it runs, or a part of it
// waits, was given up, or runs on its owner), and refused with ErrOver
// once it is over, in one statement with the check: a stop that crosses
// the rollout's end is refused, never left on a rollout that ended.
func TestRolloutStopOnlyWhileItRuns(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		for _, r := range []Rollout{{ID: "r-done", State: StateDone}, {ID: "r-given", State: StateDone},
			{ID: "r-parent", State: StateDone}, {ID: "r-child", State: StateRunning}} {
			if err := s.CreateRollout(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.CreateRolloutParts(ctx, []RolloutPart{{Parent: "r-given", Owner: "B", Home: "A"},
			{Parent: "r-parent", Owner: "B", Home: "A"}}); err != nil {
			t.Fatal(err)
		}
		for _, m := range []PartMove{{Parent: "r-given", Owner: "B", From: PartWaiting, To: PartGivenUp},
			{Parent: "r-parent", Owner: "B", From: PartWaiting, To: PartStarting},
			{Parent: "r-parent", Owner: "B", From: PartStarting, To: PartStarted, Rollout: "r-child"}} {
			if n, err := s.MovePart(ctx, m); n != 1 || err != nil {
				t.Fatalf("%+v: %d %v", m, n, err)
			}
		}
		stop := func(id string) (bool, error) { return s.StopRollout(ctx, id, "stopped by alice") }
		if ok, err := stop("r-done"); ok || !errors.Is(err, ErrOver) {
			t.Errorf("a rollout over: %v %v", ok, err)
		}
		if r, _, err := s.Rollout(ctx, "r-done"); err != nil || r.Stop != "" {
			t.Errorf("a rollout over, after its stop was refused: %+v %v", r, err)
		}
		// The parent of a part that runs is stopped while the part runs.
		if err := s.SetRolloutState(ctx, "r-child", StateDone); err != nil {
			t.Fatal(err)
		}
		if ok, err := stop("r-parent"); ok || !errors.Is(err, ErrOver) {
			t.Errorf("a rollout whose part ended: %v %v", ok, err)
		}
		if err := s.SetRolloutState(ctx, "r-child", StateRunning); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"r-given", "r-parent", "r-child"} {
			if ok, err := stop(id); !ok || err != nil {
				t.Errorf("%s: %v %v", id, ok, err)
			}
			// Stopped already: answered as it is, whatever its state.
			if ok, err := stop(id); ok || err != nil {
				t.Errorf("%s, stopped again: %v %v", id, ok, err)
			}
		}
	})
}

// TestMigrateFromVersion7: a database of schema version 7 (before
// stops) gains the rollouts' stop, empty, and its parts wait since
// their creation.
func TestMigrateFromVersion7(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		dsn := newDB(t)
		s := open(t, dsn)
		if err := s.CreateRollout(ctx, Rollout{ID: "r-1", State: StateDone}); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateRolloutParts(ctx, []RolloutPart{{Parent: "r-1", Owner: "B", Home: "A"}}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		db := raw(t, dsn)
		for _, q := range append(slices.Clone(toVersion7), `UPDATE schema_version SET version = 7`) {
			if _, err := db.Exec(q); err != nil {
				t.Fatal(err)
			}
		}
		s = open(t, dsn)
		if v := schemaVersion(t, dsn); v != 8 {
			t.Fatalf("schema version %d", v)
		}
		r, _, err := s.Rollout(ctx, "r-1")
		if err != nil || r.State != StateRunning || r.Stop != "" {
			t.Fatalf("%+v %v", r, err)
		}
		ps, err := s.RolloutParts(ctx, "r-1")
		if err != nil || len(ps) != 1 || !ps[0].Waiting.Equal(ps[0].Created) {
			t.Fatalf("%+v %v", ps, err)
		}
	})
}

// toVersion7 takes a database of schema version 8 back to version 7 (its
// version number aside), for the tests of the migrations from before.
var toVersion7 = []string{`ALTER TABLE rollouts DROP COLUMN stop`, `ALTER TABLE rollout_parts DROP COLUMN waiting_since`}
