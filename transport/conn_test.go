package transport_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/wslink"
)

// testServer serves h over a real WebSocket on loopback.
func testServer(t testing.TB, token string, cfg wslink.Config, h transport.Handler) string {
	t.Helper()
	return testServerConfig(t, token, cfg, transport.Config{Handler: h})
}

// testServerConfig is testServer with the server's connection configured.
func testServerConfig(t testing.TB, token string, cfg wslink.Config, ccfg transport.Config) string {
	t.Helper()
	srv := &wslink.Server{Token: token, Config: cfg, Serve: func(ctx context.Context, l *wslink.Link) {
		c := transport.NewConn(l, ccfg)
		c.Start()
		select {
		case <-c.Done():
		case <-ctx.Done():
			c.Close()
		}
	}}
	mux := http.NewServeMux()
	mux.Handle(wslink.Path, srv)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return "ws" + strings.TrimPrefix(ts.URL, "http")
}

func dial(t testing.TB, url, token string, h transport.Handler) *transport.Conn {
	t.Helper()
	l, err := wslink.Dial(context.Background(), url, token, wslink.Config{})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c := transport.NewConn(l, transport.Config{Client: true, Handler: h})
	c.Start()
	t.Cleanup(func() { c.Close() })
	return c
}

type echoParams struct {
	Text string `json:"text" validate:"required"`
	Seq  int    `json:"seq,omitempty" validate:"min=0"`
}

// testHandler echoes, fails on request, and pumps streams, to exercise the mux.
var testHandler = transport.HandlerFunc(func(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
	switch r.Method {
	case "echo":
		var p echoParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		return p, nil
	case "fail":
		return nil, errors.New("plain failure")
	case "busy":
		return nil, proto.Errorf(proto.ReasonBusy, "try later")
	case "upper": // read stream "in" to EOF, write it back transformed to stream "out"
		var p struct{ In, Out uint32 }
		if err := json.Unmarshal(r.Params, &p); err != nil {
			return nil, err
		}
		in, err := c.AttachStream(p.In)
		if err != nil {
			return nil, err
		}
		out, err := c.AttachStream(p.Out)
		if err != nil {
			return nil, err
		}
		go func() {
			defer in.Close()
			defer out.Close()
			buf := make([]byte, 4096)
			for {
				n, err := in.Read(buf)
				if n > 0 {
					if _, werr := out.Write(flip(buf[:n])); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		return nil, nil
	case "produce": // write N bytes to stream, counting progress
		var p struct {
			Out uint32
			N   int
		}
		if err := json.Unmarshal(r.Params, &p); err != nil {
			return nil, err
		}
		out, err := c.AttachStream(p.Out)
		if err != nil {
			return nil, err
		}
		go func() {
			defer out.Close()
			chunk := make([]byte, 1024)
			for sent := 0; sent < p.N; sent += len(chunk) {
				if _, err := out.Write(chunk); err != nil {
					return
				}
				produced.Add(int64(len(chunk)))
			}
		}()
		return nil, nil
	}
	return nil, proto.Errorf(proto.ReasonMethodNotFound, "method not found: %s", r.Method)
})

var produced atomic.Int64

// flip returns a copy of b with every byte inverted.
func flip(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		out[i] = ^c
	}
	return out
}

func TestCallsAndErrors(t *testing.T) {
	c := dial(t, testServer(t, "", wslink.Config{}, testHandler), "", nil)
	ctx := context.Background()
	tests := []struct {
		name, method string
		params       any
		reason       proto.Reason
		field        string
	}{
		{"ok", "echo", echoParams{Text: "hi"}, "", ""},
		{"handler error", "fail", nil, proto.ReasonInternal, ""},
		{"typed error", "busy", nil, proto.ReasonBusy, ""},
		{"unknown method", "nope", nil, proto.ReasonMethodNotFound, ""},
		{"missing field", "echo", map[string]any{}, proto.ReasonInvalidParams, "text"},
		{"wrong type", "echo", map[string]any{"text": 5}, proto.ReasonInvalidParams, "text"},
		{"negative", "echo", map[string]any{"text": "x", "seq": -1}, proto.ReasonInvalidParams, "seq"},
		{"unknown field", "echo", map[string]any{"text": "x", "bogus": 1}, proto.ReasonInvalidParams, "bogus"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out echoParams
			err := c.Call(ctx, tc.method, tc.params, &out)
			if tc.reason == "" {
				if err != nil || out.Text != "hi" {
					t.Fatalf("got %+v, %v", out, err)
				}
				return
			}
			var pe *proto.Error
			if !errors.As(err, &pe) || pe.Reason() != tc.reason {
				t.Fatalf("got %v, want reason %s", err, tc.reason)
			}
			if tc.field != "" && (pe.Data == nil || len(pe.Data.Fields) == 0 || pe.Data.Fields[0].Field != tc.field) {
				t.Fatalf("fields %+v, want %s", pe.Data, tc.field)
			}
		})
	}
}

func TestConcurrentCallsAreMultiplexed(t *testing.T) {
	const n = 100
	// Every call is held until all n are in, then they are answered in
	// the reverse order of their arrival: the responses cross the calls.
	var (
		mu      sync.Mutex
		arrived int
		all     = make(chan struct{})
		done    [n + 1]chan struct{} // done[k]: the k-th arrival was answered
	)
	for k := range done {
		done[k] = make(chan struct{})
	}
	close(done[n])
	reversed := transport.HandlerFunc(func(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
		mu.Lock()
		k := arrived
		if arrived++; arrived == n {
			close(all)
		}
		mu.Unlock()
		defer close(done[k])
		for _, ch := range []chan struct{}{all, done[k+1]} {
			select {
			case <-ch:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return testHandler(ctx, c, r)
	})
	c := dial(t, testServer(t, "", wslink.Config{}, reversed), "", nil)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			want := echoParams{Text: strings.Repeat("x", i+1), Seq: i}
			var out echoParams
			if err := c.Call(context.Background(), "echo", want, &out); err != nil {
				errs <- err
			} else if out != want {
				errs <- fmt.Errorf("call %d got the response %+v", i, out)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestStreamsRoundTrip(t *testing.T) {
	c := dial(t, testServer(t, "", wslink.Config{}, testHandler), "", nil)
	in, _ := c.OpenStream()
	out, _ := c.OpenStream()
	if err := c.Call(context.Background(), "upper", map[string]uint32{"In": in.ID(), "Out": out.ID()}, nil); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3<<20) // beyond the window, so credit must flow back
	rand.Read(data)
	go func() {
		in.Write(data)
		in.CloseWrite()
	}()
	got, err := io.ReadAll(out)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(flip(data)) {
		t.Fatalf("stream data differs (%d bytes back)", len(got))
	}
}

// creditCounter is a client's link that counts the credit it grants.
type creditCounter struct {
	*wslink.Link
	granted atomic.Int64
}

func (l *creditCounter) WriteMessage(ctx context.Context, t transport.MessageType, p []byte) error {
	if f, err := proto.DecodeStreamFrame(p); t == transport.Binary && err == nil && f.Kind == proto.FrameCredit {
		l.granted.Add(1)
	}
	return l.Link.WriteMessage(ctx, t, p)
}

func TestSlowReaderBoundsSender(t *testing.T) {
	l, err := wslink.Dial(context.Background(), testServer(t, "", wslink.Config{}, testHandler), "", wslink.Config{})
	if err != nil {
		t.Fatal(err)
	}
	link := &creditCounter{Link: l}
	c := transport.NewConn(link, transport.Config{Client: true})
	c.Start()
	defer c.Close()
	produced.Store(0)
	out, _ := c.OpenStream()
	if err := c.Call(context.Background(), "produce", map[string]any{"Out": out.ID(), "N": 4 * proto.StreamWindow}, nil); err != nil {
		t.Fatal(err)
	}
	// Nobody reads. Once the window has arrived and every goroutine of the
	// connections is parked (the readers have handled all they got, the
	// writers sent all they were handed, the producer waits), any credit
	// the arrival granted has been written, and a producer that got any
	// would not be waiting.
	testenv.Eventually(t, "a window's worth to arrive and the connections to go quiet", func() bool {
		return c.Stats().StreamBytesIn >= proto.StreamWindow && (link.granted.Load() > 0 || produced.Load() > proto.StreamWindow ||
			testenv.Parked("transport.(*Conn).readLoop", "transport.(*Conn).writeLoop", "wslink.(*Link).pingLoop", "transport.(*Stream).Write"))
	})
	if n := link.granted.Load(); n != 0 {
		t.Fatalf("the client granted credit %d times with nobody reading", n)
	}
	if p, in := produced.Load(), c.Stats().StreamBytesIn; p != proto.StreamWindow || in != proto.StreamWindow {
		t.Fatalf("the producer wrote %d bytes and the client got %d with nobody reading; the window is %d", p, in, proto.StreamWindow)
	}
	n, err := io.Copy(io.Discard, out)
	if err != nil || n != 4*proto.StreamWindow {
		t.Fatalf("read %d, %v", n, err)
	}
}

// Grow lets the peer send that much more before this side reads, and
// no more.
func TestGrowWidensWindow(t *testing.T) {
	c := dial(t, testServer(t, "", wslink.Config{}, testHandler), "", nil)
	produced.Store(0)
	out, _ := c.OpenStream()
	if err := c.Call(context.Background(), "produce", map[string]any{"Out": out.ID(), "N": 4 * proto.StreamWindow}, nil); err != nil {
		t.Fatal(err)
	}
	out.Grow(proto.StreamWindow) // after the answer: the producer holds the stream
	want := int64(2 * proto.StreamWindow)
	testenv.Eventually(t, "the grown window to arrive and the connections to go quiet", func() bool {
		return c.Stats().StreamBytesIn >= want && (produced.Load() > want ||
			testenv.Parked("transport.(*Conn).readLoop", "transport.(*Conn).writeLoop", "wslink.(*Link).pingLoop", "transport.(*Stream).Write"))
	})
	if p, in := produced.Load(), c.Stats().StreamBytesIn; p != want || in != want {
		t.Fatalf("the producer wrote %d bytes and the client got %d with nobody reading; the window is %d", p, in, want)
	}
	n, err := io.Copy(io.Discard, out)
	if err != nil || n != 4*proto.StreamWindow {
		t.Fatalf("read %d, %v", n, err)
	}
}

func TestTokenCheckedBeforeUpgrade(t *testing.T) {
	url := testServer(t, "s3cret", wslink.Config{}, testHandler)
	for _, tok := range []string{"", "wrong", "s3cret-but-longer"} {
		_, err := wslink.Dial(context.Background(), url, tok, wslink.Config{})
		if !proto.IsReason(err, proto.ReasonUnauthorized) {
			t.Fatalf("token %q: got %v, want unauthorized", tok, err)
		}
	}
	resp, err := http.Get("http" + strings.TrimPrefix(url, "ws") + wslink.Path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("plain GET without token: %d, want 401", resp.StatusCode)
	}
	c := dial(t, url, "s3cret", nil)
	if err := c.Call(context.Background(), "echo", echoParams{Text: "hi"}, nil); err != nil {
		t.Fatal(err)
	}
}

// rawExchange sends one raw message and returns the decoded reply.
func rawExchange(t *testing.T, l *wslink.Link, mt transport.MessageType, msg []byte) *proto.Message {
	t.Helper()
	if err := l.WriteMessage(context.Background(), mt, msg); err != nil {
		t.Fatal(err)
	}
	typ, data, err := l.ReadMessage()
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if typ == transport.Text {
		m, err := proto.Decode(data)
		if err != nil {
			t.Fatalf("undecodable reply %q: %v", data, err)
		}
		return m
	}
	f, err := proto.DecodeStreamFrame(data)
	if err != nil || f.Kind != proto.FrameReset {
		t.Fatalf("unexpected binary reply %v %v", f, err)
	}
	return &proto.Message{Error: proto.Errorf(proto.Reason(f.Payload), "stream reset")}
}

func TestBadInputGetsSpecificErrors(t *testing.T) {
	testenv.CheckLeaks(t)
	url := testServer(t, "", wslink.Config{MaxMessage: 64 << 10}, testHandler)
	l, err := wslink.Dial(context.Background(), url, "", wslink.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tests := []struct {
		name   string
		mt     transport.MessageType
		msg    string
		reason proto.Reason
	}{
		{"malformed json", transport.Text, `{"jsonrpc":"2.0",`, proto.ReasonParseError},
		{"not an object", transport.Text, `42`, proto.ReasonInvalidRequest},
		{"batch", transport.Text, `[{"jsonrpc":"2.0","id":1,"method":"echo"}]`, proto.ReasonInvalidRequest},
		{"wrong version", transport.Text, `{"jsonrpc":"1.0","id":1,"method":"echo"}`, proto.ReasonInvalidRequest},
		{"method not a string", transport.Text, `{"jsonrpc":"2.0","id":1,"method":7}`, proto.ReasonInvalidRequest},
		{"params not an object", transport.Text, `{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}`, proto.ReasonInvalidRequest},
		{"unknown method", transport.Text, `{"jsonrpc":"2.0","id":1,"method":"x.y"}`, proto.ReasonMethodNotFound},
		{"invalid params", transport.Text, `{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":""}}`, proto.ReasonInvalidParams},
		{"oversized", transport.Text, `{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"` + strings.Repeat("a", 100<<10) + `"}}`, proto.ReasonTooLarge},
		{"short binary frame", transport.Binary, "\x00\x01", proto.ReasonInvalidRequest},
		{"data for unknown stream", transport.Binary, "\x00\x00\x00\x00\x63hello", proto.ReasonNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := rawExchange(t, l, tc.mt, []byte(tc.msg))
			if m.Error == nil || m.Error.Reason() != tc.reason {
				t.Fatalf("got %+v, want reason %s", m.Error, tc.reason)
			}
			// The connection keeps serving.
			m = rawExchange(t, l, transport.Text, []byte(`{"jsonrpc":"2.0","id":"after","method":"echo","params":{"text":"ok"}}`))
			if m.Error != nil || string(m.ID) != `"after"` {
				t.Fatalf("connection unusable after bad input: %+v", m)
			}
		})
	}
}

func TestDeadPeerIsNoticed(t *testing.T) {
	// A server that upgrades and then never reads or answers pings.
	stall := make(chan struct{})
	defer close(stall)
	srv := &wslink.Server{Serve: func(ctx context.Context, l *wslink.Link) { <-stall }}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	l, err := wslink.Dial(context.Background(), "ws"+strings.TrimPrefix(ts.URL, "http"), "",
		wslink.Config{PingInterval: 50 * time.Millisecond, PongWait: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewConn(l, transport.Config{Client: true})
	c.Start()
	<-c.Done() // would hang forever without keepalive
	if !errors.Is(c.Err(), transport.ErrClosed) {
		t.Fatalf("err = %v", c.Err())
	}
}

// TestGrowIsBounded: the windows Grow adds on one connection stay within
// Config.MaxGrow together, since the peer may fill them all: with room
// for one more window, two streams grown by two windows each take three
// windows beyond their own in all, and nobody reading, the producers stop
// there.
func TestGrowIsBounded(t *testing.T) {
	l, err := wslink.Dial(context.Background(), testServer(t, "", wslink.Config{}, testHandler), "", wslink.Config{})
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewConn(l, transport.Config{Client: true, MaxGrow: 3 * proto.StreamWindow})
	c.Start()
	t.Cleanup(func() { c.Close() })
	produced.Store(0)
	var outs []*transport.Stream
	for range 2 {
		out, _ := c.OpenStream()
		if err := c.Call(context.Background(), "produce", map[string]any{"Out": out.ID(), "N": 8 * proto.StreamWindow}, nil); err != nil {
			t.Fatal(err)
		}
		out.Grow(2 * proto.StreamWindow)
		outs = append(outs, out)
	}
	want := int64(5 * proto.StreamWindow) // two windows of their own, three grown
	testenv.Eventually(t, "the grown windows to arrive and the connections to go quiet", func() bool {
		return c.Stats().StreamBytesIn >= want && (produced.Load() > want ||
			testenv.Parked("transport.(*Conn).readLoop", "transport.(*Conn).writeLoop", "wslink.(*Link).pingLoop", "transport.(*Stream).Write"))
	})
	if p, in := produced.Load(), c.Stats().StreamBytesIn; p != want || in != want {
		t.Fatalf("the producers wrote %d bytes and the client got %d with nobody reading; the bound is %d", p, in, want)
	}
	for _, out := range outs {
		if n, err := io.Copy(io.Discard, out); err != nil || n != 8*proto.StreamWindow {
			t.Fatalf("read %d, %v", n, err)
		}
	}
}

// TestSyncNotes: notifications the peer sent before its answer are all
// handled once SyncNotes returns after the call, though the handler was
// held while the answer came (a progress subscription ended at the
// answer would drop them).
func TestSyncNotes(t *testing.T) {
	const n = 5
	url := testServer(t, "", wslink.Config{}, transport.HandlerFunc(func(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
		for i := range n {
			if err := c.Notify(ctx, "progress", echoParams{Text: "p", Seq: i}); err != nil {
				return nil, err
			}
		}
		return echoParams{Text: "done"}, nil
	}))
	held := make(chan struct{})
	var mu sync.Mutex
	var seen []int
	c := dial(t, url, "", transport.HandlerFunc(func(ctx context.Context, _ *transport.Conn, r *transport.Request) (any, error) {
		<-held
		var p echoParams
		if err := json.Unmarshal(r.Params, &p); err != nil {
			return nil, err
		}
		mu.Lock()
		seen = append(seen, p.Seq)
		mu.Unlock()
		return nil, nil
	}))
	var out echoParams
	if err := c.Call(context.Background(), "go", nil, &out); err != nil || out.Text != "done" {
		t.Fatalf("call: %+v %v", out, err)
	}
	close(held) // the answer is in; the notifications' handler was held
	c.SyncNotes(context.Background())
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != n {
		t.Fatalf("handled %v after SyncNotes, want all %d notifications", seen, n)
	}
	for i, s := range seen {
		if s != i {
			t.Fatalf("handled %v, want them in the order sent", seen)
		}
	}
}

// frameSizer is a client's link that records the largest DATA payload it
// reads.
type frameSizer struct {
	*wslink.Link
	largest atomic.Int64
}

func (l *frameSizer) ReadMessage() (transport.MessageType, []byte, error) {
	t, p, err := l.Link.ReadMessage()
	if f, ferr := proto.DecodeStreamFrame(p); err == nil && t == transport.Binary && ferr == nil && f.Kind == proto.FrameData {
		if n := int64(len(f.Payload)); n > l.largest.Load() {
			l.largest.Store(n)
		}
	}
	return t, p, err
}

// SetChunk sets a stream's frames to what its reader asked for, within
// proto.MaxBulkFrame; a stream that was not asked keeps the default.
func TestSetChunk(t *testing.T) {
	const size = 1 << 20
	send := transport.HandlerFunc(func(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
		var p struct{ Out, Chunk int }
		if err := json.Unmarshal(r.Params, &p); err != nil {
			return nil, err
		}
		out, err := c.AttachStream(uint32(p.Out))
		if err != nil {
			return nil, err
		}
		out.SetChunk(p.Chunk)
		go func() {
			defer out.Close()
			_, _ = out.Write(make([]byte, size))
		}()
		return nil, nil
	})
	url := testServer(t, "", wslink.Config{}, send)
	for _, tc := range []struct{ chunk, want int }{
		{0, 64 << 10},
		{proto.MaxBulkFrame, proto.MaxBulkFrame},
		{4 * proto.MaxBulkFrame, proto.MaxBulkFrame},
		{10_000, 10_000},
	} {
		l, err := wslink.Dial(context.Background(), url, "", wslink.Config{})
		if err != nil {
			t.Fatal(err)
		}
		link := &frameSizer{Link: l}
		c := transport.NewConn(link, transport.Config{Client: true})
		c.Start()
		out, _ := c.OpenStream()
		out.Grow(size) // frames limited by their size, not by the credit
		if err := c.Call(context.Background(), "send", map[string]any{"Out": out.ID(), "Chunk": tc.chunk}, nil); err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, out)
		c.Close()
		if err != nil || n != size {
			t.Fatalf("chunk %d: read %d, %v", tc.chunk, n, err)
		}
		if got := link.largest.Load(); got != int64(tc.want) {
			t.Errorf("chunk %d: the largest frame carried %d bytes, want %d", tc.chunk, got, tc.want)
		}
	}
}

// failAfter is a writer that takes n bytes and then fails.
type failAfter struct{ n int }

var errWriterFull = errors.New("the writer is full")

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		n := f.n
		f.n = 0
		return n, errWriterFull
	}
	f.n -= len(p)
	return len(p), nil
}

// WriteTo hands the frames on as they came: every byte once and in
// order, after a Read that took part of a frame, beyond the window (so
// the credit it grants flows back), nil at the peer's FIN; and a write
// that fails ends it with that error and the bytes written.
func TestStreamWriteTo(t *testing.T) {
	c := dial(t, testServer(t, "", wslink.Config{}, testHandler), "", nil)
	in, _ := c.OpenStream()
	out, _ := c.OpenStream()
	if err := c.Call(context.Background(), "upper", map[string]uint32{"In": in.ID(), "Out": out.ID()}, nil); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3<<20)
	rand.Read(data)
	go func() {
		in.Write(data)
		in.CloseWrite()
	}()
	head := make([]byte, 100) // less than the first frame
	if _, err := io.ReadFull(out, head); err != nil {
		t.Fatal(err)
	}
	var rest bytes.Buffer
	n, err := out.WriteTo(&rest)
	if err != nil || n != int64(len(data)-len(head)) {
		t.Fatalf("WriteTo: %d bytes, %v", n, err)
	}
	if got := append(head, rest.Bytes()...); !bytes.Equal(got, flip(data)) {
		t.Fatalf("stream data differs (%d bytes back)", len(got))
	}

	produced.Store(0)
	s, _ := c.OpenStream()
	if err := c.Call(context.Background(), "produce", map[string]any{"Out": s.ID(), "N": 4 * proto.StreamWindow}, nil); err != nil {
		t.Fatal(err)
	}
	w := &failAfter{n: proto.StreamWindow + 10}
	if n, err := s.WriteTo(w); !errors.Is(err, errWriterFull) || n != proto.StreamWindow+10 {
		t.Fatalf("WriteTo a writer that fails: %d bytes, %v", n, err)
	}
}
