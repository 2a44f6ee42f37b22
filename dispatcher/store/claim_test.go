package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
)

func boardIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("b%04d", i)
	}
	return ids
}

func claimOwners(cs []Claim) string {
	var out []string
	for _, c := range cs {
		out = append(out, c.BoardID+":"+c.Owner)
	}
	return strings.Join(out, " ")
}

// TestClaimsRace is two services on one database claiming the same boards
// at once, each from several goroutines and in its own order: every board
// gets exactly one owner, and each owner's answers say which.
func TestClaimsRace(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		dsn := newDB(t)
		stores := map[string]*Store{"A": open(t, dsn), "B": open(t, dsn)}
		ids := boardIDs(300)
		now := at(0)
		var (
			mu  sync.Mutex
			won = map[string][]string{}
			wg  sync.WaitGroup
		)
		errs := make(chan error, 8)
		for owner, s := range stores {
			for g := range 4 {
				// Each goroutine asks for an overlapping window, the
				// second service's in reverse order.
				want := slices.Clone(ids[g*50 : g*50+150])
				if owner == "B" {
					slices.Reverse(want)
				}
				wg.Go(func() {
					got, err := s.ClaimBoards(ctx, owner, want, time.Minute, now)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					won[owner] = append(won[owner], got...)
					mu.Unlock()
				})
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		owner := map[string]string{}
		for o, got := range won {
			for _, id := range got {
				if prev, ok := owner[id]; ok && prev != o {
					t.Fatalf("board %s won by both %s and %s", id, prev, o)
				}
				owner[id] = o
			}
		}
		claims, err := stores["A"].Claims(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(claims) != 300 || len(owner) != 300 {
			t.Fatalf("%d claims, %d boards won, want 300", len(claims), len(owner))
		}
		for _, c := range claims {
			if owner[c.BoardID] != c.Owner || !c.Expires.Equal(now.Add(time.Minute)) {
				t.Fatalf("%+v, but %s was told it won it", c, owner[c.BoardID])
			}
		}
		t.Logf("A won %d boards, B %d", len(stores["A"].mustOwn(t, "A")), len(stores["B"].mustOwn(t, "B")))
	})
}

// mustOwn is the boards owner holds, by Claims.
func (s *Store) mustOwn(t *testing.T, owner string) []string {
	t.Helper()
	cs, err := s.Claims(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range cs {
		if c.Owner == owner {
			ids = append(ids, c.BoardID)
		}
	}
	return ids
}

// TestClaimsExpire is a service that stops renewing: after the ttl its
// boards are listed as expired with it as their owner, the other service
// takes them, and the first learns it lost them. The clock is the test's.
func TestClaimsExpire(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		dsn := newDB(t)
		a, b := open(t, dsn), open(t, dsn)
		const ttl = 10 * time.Second
		ids := []string{"b1", "b2", "b3"}
		step := func(name string, got []string, err error, want string) {
			t.Helper()
			if err != nil || strings.Join(got, " ") != want {
				t.Fatalf("%s: %q %v, want %q", name, got, err, want)
			}
		}
		expired := func(now time.Time, want string) {
			t.Helper()
			cs, err := b.ExpiredClaims(ctx, now)
			if err != nil || claimOwners(cs) != want {
				t.Fatalf("expired at %v: %q %v, want %q", now, claimOwners(cs), err, want)
			}
		}

		got, err := a.ClaimBoards(ctx, "A", ids, ttl, at(0))
		step("A claims", got, err, "b1 b2 b3")
		got, err = b.ClaimBoards(ctx, "B", []string{"b3", "b4"}, ttl, at(5*time.Second))
		step("B claims a held board and a free one", got, err, "b4")
		got, err = a.RenewClaims(ctx, "A", ttl, at(8*time.Second))
		step("A renews", got, err, "b1 b2 b3")
		got, err = b.RenewClaims(ctx, "B", ttl, at(14*time.Second))
		step("B renews", got, err, "b4")
		expired(at(17*time.Second), "")

		// A stops renewing: at 18s its claims have expired, and are
		// listed with A as their owner and the time they expired.
		expired(at(18*time.Second), "b1:A b2:A b3:A")
		cs, _ := b.ExpiredClaims(ctx, at(18*time.Second))
		if !cs[0].Expires.Equal(at(18*time.Second)) || !cs[0].Claimed.Equal(at(0)) || !cs[0].Renewed.Equal(at(8*time.Second)) {
			t.Fatalf("%+v", cs[0])
		}
		got, err = b.ClaimBoards(ctx, "B", []string{"b1", "b2", "b3", "b4"}, ttl, at(18*time.Second))
		step("B takes A's expired boards", got, err, "b1 b2 b3 b4")
		expired(at(18*time.Second), "")
		all, err := a.Claims(ctx)
		if err != nil || claimOwners(all) != "b1:B b2:B b3:B b4:B" || !all[0].Claimed.Equal(at(18*time.Second)) ||
			!all[3].Claimed.Equal(at(5*time.Second)) {
			t.Fatalf("%+v %v", all, err)
		}

		// A comes back: its renewal holds nothing, its claims get nothing.
		got, err = a.RenewClaims(ctx, "A", ttl, at(19*time.Second))
		step("A renews after losing", got, err, "")
		got, err = a.ClaimBoards(ctx, "A", ids, ttl, at(19*time.Second))
		step("A claims B's boards", got, err, "")

		// B lets b1 go; A takes it. An expired claim its owner did not
		// lose is claimed back by it.
		if err := b.ReleaseClaims(ctx, "B", "b1", "b9"); err != nil {
			t.Fatal(err)
		}
		got, err = a.ClaimBoards(ctx, "A", ids, ttl, at(20*time.Second))
		step("A claims after B released b1", got, err, "b1")
		got, err = a.RenewClaims(ctx, "A", ttl, at(31*time.Second))
		step("A renews too late", got, err, "")
		got, err = a.ClaimBoards(ctx, "A", []string{"b1"}, ttl, at(31*time.Second))
		step("A claims its own expired board back", got, err, "b1")

		if err := b.ReleaseClaims(ctx, "B"); err != nil {
			t.Fatal(err)
		}
		all, _ = a.Claims(ctx)
		if claimOwners(all) != "b1:A" {
			t.Fatalf("after B released all: %q", claimOwners(all))
		}
		for _, bad := range []error{
			func() error { _, err := a.ClaimBoards(ctx, "", ids, ttl, at(0)); return err }(),
			func() error { _, err := a.ClaimBoards(ctx, "A", ids, 0, at(0)); return err }(),
			func() error { _, err := a.RenewClaims(ctx, "", ttl, at(0)); return err }(),
		} {
			if bad == nil || !strings.Contains(bad.Error(), "an owner and a positive ttl") {
				t.Fatalf("%v", bad)
			}
		}
	})
}

// TestClaimsMany claims more boards than one statement carries.
func TestClaimsMany(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		ids := boardIDs(3*claimBatch + 7)
		half := ids[:len(ids)/2]
		if got, err := s.ClaimBoards(ctx, "A", half, time.Minute, at(0)); err != nil || len(got) != len(half) {
			t.Fatalf("%d %v", len(got), err)
		}
		got, err := s.ClaimBoards(ctx, "B", ids, time.Minute, at(time.Second))
		if err != nil || !slices.Equal(got, ids[len(ids)/2:]) {
			t.Fatalf("B got %d boards (%v), want the %d A does not hold", len(got), err, len(ids)-len(half))
		}
		if err := s.ReleaseClaims(ctx, "A", half...); err != nil {
			t.Fatal(err)
		}
		if got, err := s.ClaimBoards(ctx, "B", ids, time.Minute, at(2*time.Second)); err != nil || !slices.Equal(got, ids) {
			t.Fatalf("%d %v", len(got), err)
		}
	})
}

// BenchmarkRenewClaims is one service renewing its claims on 10,000
// boards, the lab: one statement per renewal.
func BenchmarkRenewClaims(b *testing.B) {
	for _, e := range engines {
		b.Run(e.name, func(b *testing.B) {
			ctx := context.Background()
			s := open(b, e.newDB(b))
			ids := boardIDs(10000)
			start := time.Now()
			if got, err := s.ClaimBoards(ctx, "A", ids, time.Hour, at(0)); err != nil || len(got) != len(ids) {
				b.Fatalf("%d %v", len(got), err)
			}
			claim := time.Since(start)
			i := 0
			for b.Loop() {
				i++
				if got, err := s.RenewClaims(ctx, "A", time.Hour, at(time.Duration(i)*time.Second)); err != nil || len(got) != len(ids) {
					b.Fatalf("%d %v", len(got), err)
				}
			}
			b.ReportMetric(float64(claim.Milliseconds()), "claim-10k-ms")
		})
	}
}

// TestRolloutCounts: the boards of the running rollouts, counted by
// rollout, phase, result and the owner whose claim holds them at the
// time asked (none: an expired claim, or no claim); a finished rollout,
// and the rollouts past the limit, are left out.
func TestRolloutCounts(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		for i, r := range []Rollout{{ID: "r-1"}, {ID: "r-2"}, {ID: "r-done", State: StateDone}, {ID: "r-3"}} {
			r.Created = at(time.Duration(i) * time.Second)
			if err := s.CreateRollout(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		for _, b := range []BoardResult{
			{RolloutID: "r-1", BoardID: "a1", Phase: PhaseDone, Result: ResultCommitted},
			{RolloutID: "r-1", BoardID: "a2", Phase: PhaseDone, Result: ResultCommitted},
			{RolloutID: "r-1", BoardID: "a3", Phase: PhasePrepare},
			{RolloutID: "r-1", BoardID: "b1", Phase: PhaseDone, Result: ResultFailed},
			{RolloutID: "r-1", BoardID: "gone", Phase: PhasePrepare},
			{RolloutID: "r-1", BoardID: "nobody", Phase: PhasePrepare},
			{RolloutID: "r-2", BoardID: "a1", Phase: PhasePlan},
			{RolloutID: "r-done", BoardID: "a1", Phase: PhaseDone, Result: ResultCommitted},
			{RolloutID: "r-3", BoardID: "a1", Phase: PhasePlan},
		} {
			if err := s.PutBoard(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
		for owner, ids := range map[string][]string{"A": {"a1", "a2", "a3"}, "B": {"b1"}} {
			if _, err := s.ClaimBoards(ctx, owner, ids, time.Minute, at(0)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.ClaimBoards(ctx, "C", []string{"gone"}, time.Second, at(0)); err != nil {
			t.Fatal(err)
		}
		got, err := s.RolloutCounts(ctx, at(30*time.Second), 2)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, c := range got {
			lines = append(lines, fmt.Sprintf("%s %s %s %s %d", c.Rollout, c.Owner, c.Phase, c.Result, c.Boards))
		}
		want := []string{
			"r-1  prepare  2",
			"r-1 A done committed 2",
			"r-1 A prepare  1",
			"r-1 B done failed 1",
			"r-2 A plan  1",
		}
		if strings.Join(lines, "\n") != strings.Join(want, "\n") {
			t.Fatalf("got\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
		}
	})
}

// BenchmarkRolloutCounts: a metrics scrape's read of a running rollout of
// 1,000 boards, all claimed: RolloutCounts (counted in the database)
// against reading the rollout's rows (Boards, what a scrape read before),
// in turn, on each engine; it reports each and their ratio.
func BenchmarkRolloutCounts(b *testing.B) {
	for _, e := range engines {
		b.Run(e.name, func(b *testing.B) {
			ctx := context.Background()
			s := open(b, e.newDB(b))
			if err := s.CreateRollout(ctx, Rollout{ID: "r-bench"}); err != nil {
				b.Fatal(err)
			}
			ids := boardIDs(1000)
			for i, id := range ids {
				br := BoardResult{RolloutID: "r-bench", BoardID: id, Phase: PhaseDone, Result: ResultCommitted}
				if i%4 == 0 {
					br = BoardResult{RolloutID: "r-bench", BoardID: id, Phase: PhasePrepare}
				}
				if err := s.PutBoard(ctx, br); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := s.ClaimBoards(ctx, "A", ids, time.Hour, at(0)); err != nil {
				b.Fatal(err)
			}
			var counted, rows time.Duration
			n := 0
			for b.Loop() {
				start := time.Now()
				if cs, err := s.RolloutCounts(ctx, at(time.Second), 64); err != nil || len(cs) != 2 {
					b.Fatalf("%+v %v", cs, err)
				}
				counted += time.Since(start)
				start = time.Now()
				if bs, err := s.Boards(ctx, "r-bench"); err != nil || len(bs) != 1000 {
					b.Fatalf("%d %v", len(bs), err)
				}
				rows += time.Since(start)
				n++
			}
			b.ReportMetric(float64(counted.Microseconds())/float64(n), "counts-µs")
			b.ReportMetric(float64(rows.Microseconds())/float64(n), "rows-µs")
			b.ReportMetric(float64(counted)/float64(rows), "counts/rows")
		})
	}
}

// A rollout's board writes leave the rollout's row alone, so that the
// boards of a share, written at once, do not queue on its lock: on
// Postgres a board is written while another transaction holds the row
// for an update. The rollout's Updated still follows its boards, in the
// rollout and in the list.
func TestPutBoardLeavesRolloutRow(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		dsn := newDB(t)
		s := open(t, dsn)
		if err := s.CreateRollout(ctx, Rollout{ID: "r-1", Created: at(0)}); err != nil {
			t.Fatal(err)
		}
		db := raw(t, dsn)
		rowUpdated := func() (n int64) {
			if err := db.QueryRow(`SELECT updated FROM rollouts WHERE id = 'r-1'`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		before := rowUpdated()
		if IsPostgres(dsn) {
			// Another writer holds the rollout's row (as an UPDATE of it
			// does) while the board is written.
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(`SELECT 1 FROM rollouts WHERE id = 'r-1' FOR NO KEY UPDATE`); err != nil {
				t.Fatal(err)
			}
			put := make(chan error, 1)
			go func() { put <- s.PutBoard(ctx, BoardResult{RolloutID: "r-1", BoardID: "b1", Phase: PhasePrepare}) }()
			var err2 error
			testenv.Eventually(t, "the board written while the rollout's row is held", func() bool {
				select {
				case err2 = <-put:
					return true
				default:
					return false
				}
			})
			tx.Rollback()
			if err2 != nil {
				t.Fatal(err2)
			}
		} else if err := s.PutBoard(ctx, BoardResult{RolloutID: "r-1", BoardID: "b1", Phase: PhasePrepare}); err != nil {
			t.Fatal(err)
		}
		if after := rowUpdated(); after != before {
			t.Errorf("the rollout's row written by a board's write: updated %d, was %d", after, before)
		}
		r, _, err := s.Rollout(ctx, "r-1")
		if err != nil || !r.Updated.After(at(0)) {
			t.Fatalf("rollout updated %v after a board's write (%v), want later than its creation", r.Updated, err)
		}
		list, err := s.Rollouts(ctx, 10)
		if err != nil || len(list) != 1 || !list[0].Updated.Equal(r.Updated) {
			t.Fatalf("listed %+v (%v), want updated %v", list, err, r.Updated)
		}
		// A later write moves it on; an unknown rollout is refused.
		if err := s.PutBoard(ctx, BoardResult{RolloutID: "r-1", BoardID: "b1", Phase: PhaseExecute}); err != nil {
			t.Fatal(err)
		}
		if r2, _, err := s.Rollout(ctx, "r-1"); err != nil || r2.Updated.Before(r.Updated) {
			t.Fatalf("updated %v after a second write, was %v (%v)", r2.Updated, r.Updated, err)
		}
		if err := s.PutBoard(ctx, BoardResult{RolloutID: "r-none", BoardID: "b1"}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a board of an unknown rollout: %v, want ErrNotFound", err)
		}
	})
}

// PutBoards records a rollout's boards in statements of many rows: every
// board is stored, a second call replaces rows, and a board of another
// rollout or of no rollout is refused.
func TestPutBoards(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		if err := s.CreateRollout(ctx, Rollout{ID: "r-1"}); err != nil {
			t.Fatal(err)
		}
		var bs []BoardResult
		for _, id := range boardIDs(2*boardsPerInsert + 3) {
			bs = append(bs, BoardResult{RolloutID: "r-1", BoardID: id, ToVersion: "2.0.0"})
		}
		if err := s.PutBoards(ctx, "r-1", bs); err != nil {
			t.Fatal(err)
		}
		bs[0].Phase, bs[len(bs)-1].Phase, bs[len(bs)-1].Result = PhasePrepare, PhaseDone, ResultCommitted
		if err := s.PutBoards(ctx, "r-1", []BoardResult{bs[0], bs[len(bs)-1]}); err != nil {
			t.Fatal(err)
		}
		r, rows, err := s.Rollout(ctx, "r-1")
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int{SummaryPending: len(bs) - 2, SummaryRunning: 1, ResultCommitted: 1}
		if r.Boards != len(bs) || fmt.Sprint(r.Summary) != fmt.Sprint(want) || rows[0].ToVersion != "2.0.0" {
			t.Fatalf("%d boards %v, want %d %v", r.Boards, r.Summary, len(bs), want)
		}
		if err := s.PutBoards(ctx, "r-1", []BoardResult{{RolloutID: "r-2", BoardID: "x"}}); err == nil {
			t.Fatal("a board of another rollout stored")
		}
		if err := s.PutBoards(ctx, "r-none", []BoardResult{{RolloutID: "r-none", BoardID: "x"}}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("boards of an unknown rollout: %v, want ErrNotFound", err)
		}
	})
}
