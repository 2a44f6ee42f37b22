package dispatcher_test

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport/wslink"
)

// calls records the methods a client called, from its debug log.
type calls struct {
	mu      sync.Mutex
	methods []string
}

func (c *calls) Enabled(context.Context, slog.Level) bool { return true }
func (c *calls) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *calls) WithGroup(string) slog.Handler            { return c }
func (c *calls) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "call" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "method" {
			c.mu.Lock()
			c.methods = append(c.methods, a.Value.String())
			c.mu.Unlock()
		}
		return true
	})
	return nil
}

func (c *calls) called(method string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.methods, method)
}

// Over wss:// to a board whose key is pinned, the token rides on the
// upgrade and the session needs no session.auth; a board seen for the
// first time, and any ws:// session, still prove the token with a MAC.
func TestTokenRidesUpgradeToPinnedBoard(t *testing.T) {
	tb := startBoard(t, agent.Config{})
	plain := agent.NewInsecureWebSocketServer(tb.agent, "127.0.0.1:0")
	if err := plain.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Stop(context.Background()) })
	known := dispatcher.NewKnownBoards(filepath.Join(t.TempDir(), "known_boards.json"))
	session := func(url, token string) (*calls, error) {
		t.Helper()
		log := &calls{}
		c, err := dispatcher.Dial(context.Background(), url, dispatcher.DialOptions{Token: token, Trust: known, Logger: slog.New(log)})
		if err != nil {
			return log, err
		}
		defer c.Close()
		if !c.Hello().Authenticated {
			t.Errorf("%s: session not authenticated", url)
		}
		if _, err := c.Info(context.Background()); err != nil {
			t.Errorf("%s: board.info: %v", url, err)
		}
		return log, nil
	}
	for _, step := range []struct {
		what, url string
		auth      bool // session.auth was called
	}{
		{"first use over wss", tb.ws.URL(), true},
		{"pinned, wss", tb.ws.URL(), false},
		{"pinned, ws", plain.URL(), true},
	} {
		log, err := session(step.url, labToken)
		if err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
		// session.hello rode on the upgrade (protocol.md 2.7).
		if log.called(proto.MethodHello) || log.called(proto.MethodAuth) != step.auth {
			t.Errorf("%s: called %v, want no session.hello, session.auth: %v", step.what, log.methods, step.auth)
		}
	}
	if _, err := session(tb.ws.URL(), "a-wrong-token-of-some-length"); !proto.IsReason(err, proto.ReasonUnauthorized) {
		t.Errorf("a wrong token on the upgrade: %v, want unauthorized", err)
	}
}

// The token goes on the upgrade only to the key expected for the board
// the certificate names; anyone else sees no Authorization header.
func TestUpgradeTokenOnlyToExpectedKey(t *testing.T) {
	key, other := newKey(t), newKey(t)
	cert, err := auth.Certificate(key, "board-x", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	headers := make(chan string, 1)
	ts := httptest.NewUnstartedServer(&wslink.Server{
		Check: func(w http.ResponseWriter, r *http.Request) (any, bool) {
			headers <- r.Header.Get("Authorization")
			http.Error(w, "recorded", http.StatusTeapot)
			return nil, false
		},
		Serve: func(context.Context, *wslink.Link) {}})
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	url := "wss" + strings.TrimPrefix(ts.URL, "https")
	fp := func(k ed25519.PrivateKey) auth.Fingerprint { return auth.FingerprintOf(k.Public().(ed25519.PublicKey)) }
	pinned := func(id string, k ed25519.PrivateKey) *dispatcher.KnownBoards {
		known := dispatcher.NewKnownBoards(filepath.Join(t.TempDir(), "known_boards.json"))
		if err := known.Pin(context.Background(), id, fp(k), false); err != nil {
			t.Fatal(err)
		}
		return known
	}
	for _, c := range []struct {
		what string
		opts dispatcher.DialOptions
		want string
	}{
		{"not pinned", dispatcher.DialOptions{Trust: dispatcher.NewKnownBoards("")}, ""},
		{"pinned with another key", dispatcher.DialOptions{Trust: pinned("board-x", other)}, ""},
		{"another board pinned with this key", dispatcher.DialOptions{Trust: pinned("board-y", key)}, ""},
		{"pinned, but another board meant", dispatcher.DialOptions{Trust: pinned("board-x", key), BoardID: "board-z"}, ""},
		{"another fingerprint given", dispatcher.DialOptions{Fingerprint: fp(other)}, ""},
		{"its fingerprint announced, not pinned", dispatcher.DialOptions{Trust: dispatcher.NewKnownBoards(""), Fingerprint: fp(key)}, ""},
		{"pinned, another fingerprint announced", dispatcher.DialOptions{Trust: pinned("board-x", key), Fingerprint: fp(other)}, ""},
		{"a paired host", dispatcher.DialOptions{Trust: pinned("board-x", key), HostKey: other}, ""},
		{"pinned", dispatcher.DialOptions{Trust: pinned("board-x", key)}, "Bearer " + labToken},
		{"its fingerprint given, no known boards", dispatcher.DialOptions{Fingerprint: fp(key)}, "Bearer " + labToken},
		{"pinned, its fingerprint announced", dispatcher.DialOptions{Trust: pinned("board-x", key), Fingerprint: fp(key)}, "Bearer " + labToken},
	} {
		c.opts.Token = labToken
		if _, err := dispatcher.Dial(context.Background(), url, c.opts); err == nil {
			t.Fatalf("%s: the dial succeeded", c.what)
		}
		if got := <-headers; got != c.want {
			t.Errorf("%s: Authorization %q, want %q", c.what, got, c.want)
		}
	}
}

// An agent that does not answer hello on the upgrade (one older than
// protocol.md 2.7) is greeted in-band, and the session is the same.
func TestHelloInBandToAgentNotAnsweringUpgrade(t *testing.T) {
	tb := startBoard(t, agent.Config{})
	sent := make(chan string, 1)
	ts := httptest.NewServer(&wslink.Server{
		Check: func(_ http.ResponseWriter, r *http.Request) (any, bool) {
			sent <- r.Header.Get(proto.HelloHeader)
			return nil, true
		},
		Serve: func(ctx context.Context, l *wslink.Link) {
			tb.agent.ServeLink(ctx, l, agent.Peer{Addr: l.Peer().Addr, Link: "ws"})
		}})
	t.Cleanup(ts.Close)
	log := &calls{}
	c, err := dispatcher.Dial(context.Background(), "ws"+strings.TrimPrefix(ts.URL, "http"),
		dispatcher.DialOptions{Token: labToken, Trust: dispatcher.NewKnownBoards(""), Logger: slog.New(log)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if <-sent == "" {
		t.Error("the upgrade carried no hello")
	}
	if !log.called(proto.MethodHello) || !log.called(proto.MethodAuth) || !c.Hello().Authenticated {
		t.Errorf("called %v (authenticated: %v), want session.hello and session.auth in-band", log.methods, c.Hello().Authenticated)
	}
	if _, err := c.Info(context.Background()); err != nil {
		t.Errorf("board.info: %v", err)
	}
}
