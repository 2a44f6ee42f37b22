package transport_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/wslink"
)

// rawConfig is for a raw client link that stops reading before it closes:
// its close need not wait for the server's close frame.
var rawConfig = wslink.Config{CloseWait: time.Millisecond}

// Bounds TestUnknownStreamFloodIsBounded holds a connection to while a
// peer floods it: a few goroutines per connection (reader, writers,
// helpers, the request being served), and the garbage of the frames read
// between two collections.
const (
	floodGoroutines = 32
	floodHeap       = 64 << 20
)

// TestUnknownStreamFloodIsBounded floods one connection with DATA frames
// for streams it does not know, without reading the RSTs they earn, then
// reads. What the connection holds meanwhile stays under fixed bounds,
// and it still serves a request after.
func TestUnknownStreamFloodIsBounded(t *testing.T) {
	frames := 200_000
	if testing.Short() || testenv.Race { // the race detector slows each frame tenfold
		frames = 20_000
	}
	// An hour: the server must keep trying to write the RSTs we do not
	// read instead of ending the connection for it.
	url := testServer(t, "", wslink.Config{WriteTimeout: time.Hour}, testHandler)
	ctx := context.Background()
	l, err := wslink.Dial(ctx, url, "", rawConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	baseHeap, baseG := ms.HeapInuse, runtime.NumGoroutine()
	var peakHeap uint64
	peakG := 0
	sample := func() {
		runtime.ReadMemStats(&ms)
		peakHeap, peakG = max(peakHeap, ms.HeapInuse), max(peakG, runtime.NumGoroutine())
	}

	frame := make([]byte, 0, proto.StreamHeaderLen+16)
	for i := range frames {
		// Odd ids are the client's; the server was never told of any.
		id := uint32(2*(i%50_000) + 1)
		frame = proto.AppendStreamFrame(frame[:0], proto.FrameData, id, []byte("0123456789abcdef"))
		if err := l.WriteMessage(ctx, transport.Binary, frame); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if i%10_000 == 0 {
			sample()
		}
	}
	// The server reads in order: it handled every frame before this.
	if err := l.WriteMessage(ctx, transport.Text, []byte(`{"jsonrpc":"2.0","id":"after","method":"echo","params":{"text":"ok"}}`)); err != nil {
		t.Fatal(err)
	}
	resets := 0
	for n := 0; ; n++ {
		if n%10_000 == 0 {
			sample()
		}
		typ, data, err := l.ReadMessage()
		if err != nil {
			t.Fatalf("after %d RSTs: %v", resets, err)
		}
		if typ == transport.Text {
			sample()
			m, err := proto.Decode(data)
			if err != nil || m.Error != nil || string(m.ID) != `"after"` {
				t.Fatalf("connection unusable after the flood: %s %v", data, err)
			}
			break
		}
		f, err := proto.DecodeStreamFrame(data)
		if err != nil || f.Kind != proto.FrameReset || string(f.Payload) != string(proto.ReasonNotFound) {
			t.Fatalf("unexpected frame %+v %v", f, err)
		}
		resets++
	}
	growth := int64(peakHeap) - int64(baseHeap)
	t.Logf("%d frames: %d RSTs back; peak %d goroutines (%d before), heap in use +%d KiB",
		frames, resets, peakG, baseG, growth>>10)
	if resets == 0 {
		t.Error("no RST came back for data on unknown streams")
	}
	if peakG > baseG+floodGoroutines {
		t.Errorf("peak %d goroutines, %d before: the flood grew them by more than %d", peakG, baseG, floodGoroutines)
	}
	if growth > floodHeap {
		t.Errorf("heap in use grew by %d MiB under the flood (bound %d MiB)", growth>>20, floodHeap>>20)
	}
}

// TestPipelinedRequestsAllAnswered writes many requests without reading,
// then reads: each gets exactly one answer, busy for those beyond the
// requests in flight, even though the busy answers outnumber what the
// connection queues.
func TestPipelinedRequestsAllAnswered(t *testing.T) {
	const requests, inflight = 1000, 16
	gate := make(chan struct{})
	hold := transport.HandlerFunc(func(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
		select {
		case <-gate:
		case <-ctx.Done():
		}
		return map[string]string{"held": "done"}, nil
	})
	url := testServerConfig(t, "", wslink.Config{}, transport.Config{Handler: hold, MaxInflight: inflight})
	ctx := context.Background()
	l, err := wslink.Dial(ctx, url, "", rawConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range requests {
		req := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"hold"}`, i)
		if err := l.WriteMessage(ctx, transport.Text, []byte(req)); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	read := func(want proto.Reason) {
		t.Helper()
		_, data, err := l.ReadMessage()
		if err != nil {
			t.Fatalf("after %d answers: %v", len(seen), err)
		}
		m, err := proto.Decode(data)
		if err != nil || m.Kind() != proto.KindResponse {
			t.Fatalf("not a response: %s %v", data, err)
		}
		if got := proto.ReasonOf(responseErr(m)); got != want {
			t.Fatalf("answer %s: reason %q, want %q", data, got, want)
		}
		if seen[string(m.ID)] {
			t.Fatalf("request %s answered twice", m.ID)
		}
		seen[string(m.ID)] = true
	}
	// The held requests answer only once released: all the others are
	// busy, and must all come first.
	for range requests - inflight {
		read(proto.ReasonBusy)
	}
	close(gate)
	for range inflight {
		read("")
	}
	if len(seen) != requests {
		t.Fatalf("%d requests answered, want %d", len(seen), requests)
	}
}

// responseErr is m's error as an error, or nil.
func responseErr(m *proto.Message) error {
	if m.Error == nil {
		return nil
	}
	return m.Error
}

// TestStreamLimit: a connection holds at most MaxStreams streams; one more,
// attached or opened, is refused busy naming the limit until one ends.
func TestStreamLimit(t *testing.T) {
	const limit = 2
	released := make(chan uint32)
	attach := transport.HandlerFunc(func(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
		var p struct{ In uint32 }
		if err := json.Unmarshal(r.Params, &p); err != nil {
			return nil, err
		}
		in, err := c.AttachStream(p.In)
		if err != nil {
			return nil, err
		}
		go func() {
			_, _ = io.Copy(io.Discard, in)
			in.Close()
			released <- in.ID()
		}()
		return nil, nil
	})
	url := testServerConfig(t, "", wslink.Config{}, transport.Config{Handler: attach, MaxStreams: limit})
	ctx := context.Background()

	t.Run("attach", func(t *testing.T) {
		c := dial(t, url, "", nil)
		var held []*transport.Stream
		for range limit + 1 {
			s, err := c.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, s)
		}
		for _, s := range held[:limit] {
			if err := c.Call(ctx, "attach", map[string]uint32{"In": s.ID()}, nil); err != nil {
				t.Fatal(err)
			}
		}
		extra := held[limit]
		err := c.Call(ctx, "attach", map[string]uint32{"In": extra.ID()}, nil)
		if !proto.IsReason(err, proto.ReasonBusy) || !strings.Contains(err.Error(), fmt.Sprint(limit)) {
			t.Fatalf("stream %d beyond the limit: %v, want busy naming the limit %d", limit+1, err, limit)
		}
		if err := held[0].CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if id := <-released; id != held[0].ID() {
			t.Fatalf("stream %d released, want %d", id, held[0].ID())
		}
		if err := c.Call(ctx, "attach", map[string]uint32{"In": extra.ID()}, nil); err != nil {
			t.Fatalf("after one stream ended: %v", err)
		}
		for _, s := range held[1:] {
			s.CloseWrite()
			<-released
		}
	})

	t.Run("open", func(t *testing.T) {
		l, err := wslink.Dial(ctx, url, "", wslink.Config{})
		if err != nil {
			t.Fatal(err)
		}
		c := transport.NewConn(l, transport.Config{Client: true, MaxStreams: limit})
		c.Start()
		defer c.Close()
		var held []*transport.Stream
		for range limit {
			s, err := c.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, s)
		}
		if _, err := c.OpenStream(); !proto.IsReason(err, proto.ReasonBusy) || !strings.Contains(err.Error(), fmt.Sprint(limit)) {
			t.Fatalf("stream %d beyond the limit: %v, want busy naming the limit %d", limit+1, err, limit)
		}
		held[0].Close()
		if _, err := c.OpenStream(); err != nil {
			t.Fatalf("after one stream closed: %v", err)
		}
	})
}

// A stream reset here reaches the peer with its reason, through the
// connection's writer, and stops counting against MaxStreams once written.
func TestResetReachesPeer(t *testing.T) {
	reject := transport.HandlerFunc(func(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
		var p struct{ In uint32 }
		if err := json.Unmarshal(r.Params, &p); err != nil {
			return nil, err
		}
		in, err := c.AttachStream(p.In)
		if err != nil {
			return nil, err
		}
		r.AfterReply = func() { in.Reset("refused") }
		return nil, nil
	})
	url := testServerConfig(t, "", wslink.Config{}, transport.Config{Handler: reject, MaxStreams: 1})
	c := dial(t, url, "", nil)
	for range 3 { // one at a time: each reset frees the only slot
		s, err := c.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Call(context.Background(), "reject", map[string]uint32{"In": s.ID()}, nil); err != nil {
			t.Fatal(err)
		}
		_, err = s.Read(make([]byte, 1))
		var se *transport.StreamError
		if !errors.As(err, &se) || se.Reason != "refused" || se.Stream != s.ID() {
			t.Fatalf("read after the peer's reset: %v, want a StreamError with reason refused", err)
		}
		s.Close()
	}
}
