package transport_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
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
	Text  string `json:"text" validate:"required"`
	Delay int    `json:"delay_ms,omitempty" validate:"min=0"`
}

// testHandler echoes, fails on request, and pumps streams, to exercise the mux.
var testHandler = transport.HandlerFunc(func(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
	switch r.Method {
	case "echo":
		var p echoParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		time.Sleep(time.Duration(p.Delay) * time.Millisecond)
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
		{"negative", "echo", map[string]any{"text": "x", "delay_ms": -1}, proto.ReasonInvalidParams, "delay_ms"},
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
	c := dial(t, testServer(t, "", wslink.Config{}, testHandler), "", nil)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Go(func() {
			want := strings.Repeat("x", i+1)
			var out echoParams
			// Later calls answer sooner, so responses arrive out of order.
			if err := c.Call(context.Background(), "echo", echoParams{Text: want, Delay: (100 - i) / 10}, &out); err != nil {
				errs <- err
			} else if out.Text != want {
				errs <- errors.New("response attributed to the wrong call")
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

func TestSlowReaderBoundsSender(t *testing.T) {
	c := dial(t, testServer(t, "", wslink.Config{}, testHandler), "", nil)
	produced.Store(0)
	out, _ := c.OpenStream()
	if err := c.Call(context.Background(), "produce", map[string]any{"Out": out.ID(), "N": 4 * proto.StreamWindow}, nil); err != nil {
		t.Fatal(err)
	}
	// Nobody reads: the producer must stall at the window, however long we wait.
	for produced.Load() < proto.StreamWindow {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if p := produced.Load(); p > proto.StreamWindow {
		t.Fatalf("producer wrote %d bytes with nobody reading; window is %d", p, proto.StreamWindow)
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
	for {
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
