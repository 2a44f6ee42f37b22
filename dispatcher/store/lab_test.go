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
)

func TestLeases(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		path := newDB(t)
		s := open(t, path)
		mk := func(i int, state string) Lease {
			return Lease{ID: fmt.Sprint("l-", i), Seq: int64(i), Holder: "alice", State: state,
				Selector: map[string]string{"rack": "r1"}, Count: 2, TTL: 14 * time.Second,
				Created: at(time.Duration(i) * time.Minute), Renewed: at(time.Duration(i) * time.Minute),
				Expires: at(time.Duration(i)*time.Minute + 14*time.Second)}
		}
		active := mk(1, LeaseActive)
		active.Boards, active.Granted, active.Until = []string{"b1", "b2"}, at(time.Minute), at(time.Hour)
		waiting := mk(2, LeaseWaiting)
		waiting.WantIDs, waiting.WaitUntil = []string{"b1", "b3"}, at(30*time.Minute)
		ended := mk(3, LeaseExpired)
		ended.Ended, ended.EndReason = at(4*time.Minute), "not renewed"
		for _, l := range []Lease{active, waiting, ended} {
			if err := s.PutLease(ctx, l); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
		s = open(t, path) // what a restarted service reads
		open, err := s.Leases(ctx, 0)
		if err != nil || len(open) != 2 || fmt.Sprint(open[0]) != fmt.Sprint(active) || fmt.Sprint(open[1]) != fmt.Sprint(waiting) {
			t.Fatalf("open leases\n got %+v\nwant %+v %+v (%v)", open, active, waiting, err)
		}
		all, err := s.Leases(ctx, 10)
		if err != nil || len(all) != 3 || all[2].ID != "l-3" || !all[2].Ended.Equal(ended.Ended) || all[2].Open() {
			t.Fatalf("%+v %v", all, err)
		}
		// Ending a lease is an update of its row.
		active.State, active.Ended, active.EndReason = LeaseReleased, at(10*time.Minute), "released by alice"
		if err := s.PutLease(ctx, active); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetLease(ctx, "l-1")
		if err != nil || got.State != LeaseReleased || got.EndReason != "released by alice" || got.TTL != 14*time.Second {
			t.Fatalf("%+v %v", got, err)
		}
		if _, err := s.GetLease(ctx, "l-9"); !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		if n, err := s.NextLeaseSeq(ctx); err != nil || n != 4 {
			t.Fatalf("the queue goes on after the stored leases at %d (%v), want 4", n, err)
		}
		if err := s.PutLease(ctx, Lease{ID: "l-x"}); err == nil {
			t.Fatal("a lease without holder stored")
		}
	})
}

func TestAudit(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		entries := []AuditEntry{
			{At: at(0), User: "alice", Action: "lease.acquire", Lease: "l-1", Result: "ok"},
			{At: at(time.Minute), User: "bob", Action: "board.exec", Board: "b1", Result: "board b1 is leased by alice"},
			{At: at(2 * time.Minute), User: "alice", Action: "board.exec", Board: "b1", Lease: "l-1", Result: "ok", Detail: "uname -a"},
			{At: at(3 * time.Minute), User: "service", Action: "board.state", Board: "b2", Result: "ok", Detail: "idle -> offline"},
		}
		for i, e := range entries {
			seq, err := s.AddAudit(ctx, e)
			if err != nil || seq != int64(i+1) {
				t.Fatalf("%d %v", seq, err)
			}
		}
		tests := []struct {
			f    AuditFilter
			want string
		}{
			{AuditFilter{}, "4 3 2 1"},
			{AuditFilter{Limit: 2}, "4 3"},
			{AuditFilter{User: "alice"}, "3 1"},
			{AuditFilter{Board: "b1"}, "3 2"},
			{AuditFilter{Board: "b1", User: "bob"}, "2"},
			{AuditFilter{Lease: "l-1", Action: "board.exec"}, "3"},
			{AuditFilter{Since: at(2 * time.Minute)}, "4 3"},
			{AuditFilter{User: "nobody"}, ""},
		}
		for _, tc := range tests {
			es, err := s.Audit(ctx, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range es {
				got = append(got, fmt.Sprint(e.Seq))
			}
			if strings.Join(got, " ") != tc.want {
				t.Errorf("%+v: %q, want %q", tc.f, got, tc.want)
			}
		}
		es, _ := s.Audit(ctx, AuditFilter{Limit: 1, Board: "b1"})
		if e := es[0]; e.User != "alice" || e.Detail != "uname -a" || !e.At.Equal(at(2*time.Minute)) {
			t.Fatalf("%+v", e)
		}
		if _, err := s.AddAudit(ctx, AuditEntry{User: "x"}); err == nil {
			t.Fatal("an entry without action stored")
		}
	})
}

func TestLabBoards(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		b := LabBoard{ID: "b2", Address: "wss://127.0.0.1:7207", Source: "static", Model: "sim",
			Labels: map[string]string{"rack": "r1"}, State: "quarantined", Reason: "5 failed health checks",
			BootID: "boot-1", Failures: 5, LastSeen: at(time.Minute), Updated: at(2 * time.Minute)}
		for _, x := range []LabBoard{b, {ID: "b1", State: "offline", Updated: at(0)}} {
			if err := s.PutLabBoard(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		b.State, b.Reason, b.Failures = "idle", "", 0
		if err := s.PutLabBoard(ctx, b); err != nil {
			t.Fatal(err)
		}
		got, err := s.LabBoards(ctx)
		if err != nil || len(got) != 2 || got[0].ID != "b1" || got[0].Labels != nil || fmt.Sprint(got[1]) != fmt.Sprint(b) {
			t.Fatalf("%+v %v\nwant %+v", got, err, b)
		}
		if err := s.PutLabBoard(ctx, LabBoard{ID: "b3"}); err == nil {
			t.Fatal("a board without a state stored")
		}
	})
}

// TestLeaseBoardsExclusive is two services on one database granting
// leases on the same boards at once: a board is never held by two open
// leases, whatever the interleaving; the losers get ErrConflict and are
// not stored. Then a board comes free when its lease ends, or when its
// lease expires unrenewed, and an expired lease cannot renew its way back.
func TestLeaseBoardsExclusive(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		dsn := newDB(t)
		stores := []*Store{open(t, dsn), open(t, dsn)}
		grant := func(s *Store, id string, seq int64, boards []string, now time.Time) error {
			return s.PutLease(ctx, Lease{ID: id, Seq: seq, Holder: "alice", State: LeaseActive, Count: len(boards),
				Boards: boards, TTL: 10 * time.Second, Created: now, Granted: now, Renewed: now, Expires: now.Add(10 * time.Second)})
		}
		const contenders = 12
		var wg sync.WaitGroup
		errs := make([]error, contenders)
		for i := range contenders {
			// Overlapping pairs of three boards: b0+b1, b1+b2, b2+b0...
			boards := []string{fmt.Sprint("b", i%3), fmt.Sprint("b", (i+1)%3)}
			wg.Go(func() { errs[i] = grant(stores[i%2], fmt.Sprint("l-", i), int64(i+1), boards, at(0)) })
		}
		wg.Wait()
		holder := map[string]string{}
		winners := 0
		for i, err := range errs {
			id := fmt.Sprint("l-", i)
			if err != nil {
				if !errors.Is(err, ErrConflict) {
					t.Fatalf("lease %s: %v", id, err)
				}
				if _, err := stores[0].GetLease(ctx, id); !errors.Is(err, ErrNotFound) {
					t.Fatalf("the refused lease %s was stored: %v", id, err)
				}
				continue
			}
			winners++
			l, err := stores[1].GetLease(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range l.Boards {
				if holder[b] != "" {
					t.Fatalf("board %s held by both %s and %s", b, holder[b], id)
				}
				holder[b] = id
			}
		}
		// Three boards in pairs: one lease at most can win.
		if winners != 1 {
			t.Fatalf("%d leases granted", winners)
		}
		var won string
		for _, id := range holder {
			won = id
		}
		l, _ := stores[0].GetLease(ctx, won)
		free := slices.DeleteFunc([]string{"b0", "b1", "b2"}, func(b string) bool { return slices.Contains(l.Boards, b) })[0]

		// The free board can be granted; the winner's cannot, until it ends.
		if err := grant(stores[1], "l-free", 100, []string{free}, at(time.Second)); err != nil {
			t.Fatal(err)
		}
		if err := grant(stores[1], "l-next", 101, l.Boards[:1], at(time.Second)); !errors.Is(err, ErrConflict) {
			t.Fatalf("a held board granted again: %v", err)
		}
		l.State, l.Ended = LeaseReleased, at(2*time.Second)
		if err := stores[0].PutLease(ctx, l); err != nil {
			t.Fatal(err)
		}
		if err := grant(stores[1], "l-next", 101, l.Boards, at(2*time.Second)); err != nil {
			t.Fatalf("after its lease ended: %v", err)
		}

		// l-next is not renewed: past its expiry (12s) another lease
		// takes its boards, and l-next's late renewal is refused.
		if err := grant(stores[0], "l-late", 102, l.Boards[:1], at(11*time.Second)); !errors.Is(err, ErrConflict) {
			t.Fatalf("granted before the holder expired: %v", err)
		}
		if err := grant(stores[0], "l-late", 102, l.Boards[:1], at(12*time.Second)); err != nil {
			t.Fatalf("after the holder expired: %v", err)
		}
		next, _ := stores[1].GetLease(ctx, "l-next")
		next.Renewed, next.Expires = at(13*time.Second), at(23*time.Second)
		if err := stores[1].PutLease(ctx, next); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "held by lease l-late") {
			t.Fatalf("an expired lease renewed over its successor: %v", err)
		}
		// A queue number another lease has is ErrExists.
		if err := grant(stores[0], "l-dup", 102, []string{"bx"}, at(13*time.Second)); !errors.Is(err, ErrExists) {
			t.Fatalf("a second lease with seq 102: %v", err)
		}
	})
}

// TestNextLeaseSeq is two services numbering their leases from one
// queue at once: every number is given once, and none is below a lease
// stored with its own.
func TestNextLeaseSeq(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		dsn := newDB(t)
		a, b := open(t, dsn), open(t, dsn)
		if n, err := a.NextLeaseSeq(ctx); err != nil || n != 1 {
			t.Fatalf("first number %d %v", n, err)
		}
		// A lease numbered without the counter (a service from before it).
		if err := a.PutLease(ctx, Lease{ID: "l-old", Seq: 10, Holder: "alice", State: LeaseReleased}); err != nil {
			t.Fatal(err)
		}
		var (
			mu   sync.Mutex
			seen = map[int64]bool{}
			wg   sync.WaitGroup
		)
		errs := make(chan error, 4)
		for _, s := range []*Store{a, b, a, b} {
			wg.Go(func() {
				for range 50 {
					n, err := s.NextLeaseSeq(ctx)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					if seen[n] {
						errs <- fmt.Errorf("number %d given twice", n)
					}
					seen[n] = true
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for n := int64(11); n <= 210; n++ {
			if !seen[n] {
				t.Fatalf("%d numbers given, %d not among them", len(seen), n)
			}
		}
	})
}
