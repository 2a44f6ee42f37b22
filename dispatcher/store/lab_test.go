package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestLeases(t *testing.T) {
	ctx := context.Background()
	path := tempDB(t)
	s := open(t, path)
	if n, err := s.MaxLeaseSeq(ctx); err != nil || n != 0 {
		t.Fatalf("%d %v", n, err)
	}
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
	if n, err := s.MaxLeaseSeq(ctx); err != nil || n != 3 {
		t.Fatalf("%d %v", n, err)
	}
	if err := s.PutLease(ctx, Lease{ID: "l-x"}); err == nil {
		t.Fatal("a lease without holder stored")
	}
}

func TestAudit(t *testing.T) {
	ctx := context.Background()
	s := open(t, tempDB(t))
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
}

func TestLabBoards(t *testing.T) {
	ctx := context.Background()
	s := open(t, tempDB(t))
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
}
