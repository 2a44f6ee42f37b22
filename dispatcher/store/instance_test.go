package store

import (
	"context"
	"testing"
	"time"
)

// TestInstancesAndHolds: services record their URLs, a board row keeps
// its owner, and Holds lists the boards active leases hold, whichever
// store granted them, until they expire or end.
func TestInstancesAndHolds(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		dsn := newDB(t)
		a, b := open(t, dsn), open(t, dsn)
		if err := a.PutInstance(ctx, "A", "http://10.77.0.1:7300", at(0)); err != nil {
			t.Fatal(err)
		}
		if err := a.PutInstance(ctx, "A", "http://10.77.0.1:7301", at(time.Second)); err != nil {
			t.Fatal(err)
		}
		ins, err := b.Instances(ctx)
		if err != nil || len(ins) != 1 || ins["A"].URL != "http://10.77.0.1:7301" ||
			!ins["A"].Started.Equal(at(0)) || !ins["A"].Renewed.Equal(at(time.Second)) {
			t.Fatalf("%+v %v", ins, err)
		}

		if err := a.PutLabBoard(ctx, LabBoard{ID: "b1", State: "idle", Owner: "A"}); err != nil {
			t.Fatal(err)
		}
		if bs, err := b.LabBoards(ctx); err != nil || len(bs) != 1 || bs[0].Owner != "A" {
			t.Fatalf("%+v %v", bs, err)
		}

		l := Lease{ID: "l-1", Seq: 1, Holder: "alice", State: LeaseActive, Boards: []string{"b1", "b2"}, Count: 2,
			TTL: 10 * time.Second, Created: at(0), Renewed: at(0), Expires: at(10 * time.Second), Home: "A"}
		if err := a.PutLease(ctx, l); err != nil {
			t.Fatal(err)
		}
		hs, err := b.Holds(ctx, at(5*time.Second))
		if err != nil || len(hs) != 2 || hs["b1"].Lease != "l-1" || hs["b2"].Holder != "alice" ||
			!hs["b1"].Expires.Equal(at(10*time.Second)) {
			t.Fatalf("%+v %v", hs, err)
		}
		if hs, err := b.Holds(ctx, at(5*time.Second), "b2", "b3"); err != nil || len(hs) != 1 || hs["b2"].Lease != "l-1" {
			t.Fatalf("one board: %+v %v", hs, err)
		}
		if hs, err := b.Holds(ctx, at(10*time.Second)); err != nil || len(hs) != 0 {
			t.Fatalf("expired: %+v %v", hs, err)
		}
		if got, err := b.GetLease(ctx, "l-1"); err != nil || got.Home != "A" {
			t.Fatalf("%+v %v", got, err)
		}
		l.State, l.Ended = LeaseReleased, at(6*time.Second)
		if err := a.PutLease(ctx, l); err != nil {
			t.Fatal(err)
		}
		if hs, err := b.Holds(ctx, at(7*time.Second)); err != nil || len(hs) != 0 {
			t.Fatalf("released: %+v %v", hs, err)
		}
	})
}
