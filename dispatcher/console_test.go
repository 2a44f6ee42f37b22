package dispatcher

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// TestConsoleRing: the ring keeps the newest bytes and counts all of
// them, so a mark taken before a stretch of text gets that text back, or
// as much of its end as is kept.
func TestConsoleRing(t *testing.T) {
	r := newConsoleRing(8)
	if got := r.since(0); len(got) != 0 {
		t.Fatalf("empty ring: %q", got)
	}
	r.Write([]byte("abc"))
	m := r.mark()
	r.Write([]byte("defg"))
	if got := string(r.since(m)); got != "defg" {
		t.Fatalf("since the mark: %q", got)
	}
	if got := string(r.since(0)); got != "abcdefg" {
		t.Fatalf("all: %q", got)
	}
	r.Write([]byte("hijklmnop")) // more than the ring holds, in one write
	if got := string(r.since(m)); got != "ijklmnop" {
		t.Fatalf("since the mark, after wrapping: %q (kept the newest 8)", got)
	}
	if r.mark() != 16 || len(r.since(r.mark())) != 0 {
		t.Fatalf("mark %d", r.mark())
	}
}

// TestNotes: progress notifications go to the call that subscribed with
// their token, and to nobody once it unsubscribed; anything else the
// agent sends is refused.
func TestNotes(t *testing.T) {
	var n notes
	var got []proto.Progress
	tok, done := n.subscribe(func(p proto.Progress) { got = append(got, p) })
	other, doneOther := n.subscribe(func(proto.Progress) { t.Error("the other subscriber was called") })
	defer doneOther()
	if tok == other {
		t.Fatalf("two subscriptions share token %q", tok)
	}
	note := func(p proto.Progress) *transport.Request {
		raw, _ := json.Marshal(p)
		return &transport.Request{Method: proto.NoteProgress, Params: raw, Notification: true}
	}
	ctx := context.Background()
	if _, err := n.Handle(ctx, nil, note(proto.Progress{Token: tok, Phase: "download", Bytes: 10})); err != nil {
		t.Fatal(err)
	}
	done()
	if _, err := n.Handle(ctx, nil, note(proto.Progress{Token: tok, Phase: "download", Bytes: 20})); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Bytes != 10 {
		t.Fatalf("got %+v", got)
	}
	if _, err := n.Handle(ctx, nil, &transport.Request{Method: "exec.start"}); !proto.IsReason(err, proto.ReasonMethodNotFound) {
		t.Fatalf("a request from the agent: %v", err)
	}
	if _, err := n.Handle(ctx, nil, &transport.Request{Method: proto.NoteProgress, Params: []byte("{"), Notification: true}); err == nil ||
		!strings.Contains(err.Error(), "JSON") {
		t.Fatalf("a bad notification: %v", err)
	}
}
