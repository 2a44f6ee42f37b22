package agent_test

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/wslink"
)

func newKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// serveInsecure serves the harness's agent on plain ws:// as well.
func (h *harness) serveInsecure(t testing.TB) string {
	t.Helper()
	ws := agent.NewInsecureWebSocketServer(h.agent, "127.0.0.1:0")
	if err := ws.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Stop(context.Background()) })
	return ws.URL()
}

// rawSession opens a connection to url without any session handshake.
func rawSession(t testing.TB, url string) *transport.Conn {
	t.Helper()
	l, err := wslink.Dial(context.Background(), url, "", wslink.Config{VerifyKey: func(ed25519.PublicKey) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewConn(l, transport.Config{Client: true})
	c.Start()
	t.Cleanup(func() { c.Close() })
	return c
}

// A board with neither a token nor a pairing serves nobody, on loopback
// and over plain ws:// too: the outside check ran `id` as root that way.
func TestNoCredentialsNoSession(t *testing.T) {
	h := newHarness(t, "")
	ctx := context.Background()
	for _, url := range []string{h.wsURL(), h.serveInsecure(t)} {
		c := rawSession(t, url)
		for _, m := range []string{proto.MethodBoardInfo, proto.MethodExecStart, proto.MethodFilePull, proto.MethodSystemReboot, proto.MethodOTAStatus} {
			if err := c.Call(ctx, m, map[string]any{}, nil); !proto.IsReason(err, proto.ReasonUnauthorized) {
				t.Errorf("%s %s before authentication: %v, want unauthorized", url, m, err)
			}
		}
		opts := h.opts()
		opts.Token = ""
		_, err := dispatcher.Dial(ctx, url, opts)
		if !errors.Is(err, dispatcher.ErrNoCredentials) || !strings.Contains(err.Error(), "no token given") {
			t.Errorf("%s without a token: %v, want ErrNoCredentials", url, err)
		}
		c2, err := dispatcher.Dial(ctx, url, h.opts())
		if err != nil {
			t.Fatalf("%s with the token: %v", url, err)
		}
		if _, err := c2.Info(ctx); err != nil {
			t.Fatal(err)
		}
		c2.Close()
	}
}

// rogue is a board that claims another's id with a key of its own, and
// records everything a host sends it: a host must send it nothing that
// proves anything.
type rogue struct {
	key     ed25519.PrivateKey
	id      string
	methods chan string
	headers chan http.Header
	legacy  bool // answer as an agent older than protocol 4
}

func (r *rogue) Handle(ctx context.Context, c *transport.Conn, req *transport.Request) (any, error) {
	r.methods <- req.Method + " " + string(req.Params)
	if req.Method != proto.MethodHello {
		return nil, proto.Errorf(proto.ReasonInternal, "rogue")
	}
	var p proto.HelloParams
	if err := proto.DecodeParams(req.Params, &p); err != nil {
		return nil, err
	}
	res := proto.HelloResult{Protocol: proto.Version, Agent: "rogue", BoardID: r.id}
	if !r.legacy && p.Nonce != nil {
		s := auth.Session{HostNonce: p.Nonce, BoardNonce: auth.NewNonce(), Board: auth.FingerprintOf(r.key.Public().(ed25519.PublicKey))}
		res.Auth = &proto.AuthChallenge{Key: r.key.Public().(ed25519.PublicKey), Nonce: s.BoardNonce, Proof: s.BoardProof(r.key),
			Methods: []string{proto.AuthToken}}
	}
	if r.legacy {
		res.Protocol = 3
	}
	return res, nil
}

// serve runs the rogue on wss:// (tls) or ws://.
func (r *rogue) serve(t *testing.T, useTLS bool) string {
	srv := &wslink.Server{
		Check: func(w http.ResponseWriter, req *http.Request) (any, bool) {
			r.headers <- req.Header.Clone()
			return nil, true
		},
		Serve: func(ctx context.Context, l *wslink.Link) {
			c := transport.NewConn(l, transport.Config{Handler: r})
			c.Start()
			select {
			case <-c.Done():
			case <-ctx.Done():
				c.Close()
			}
		}}
	ts := httptest.NewUnstartedServer(srv)
	if useTLS {
		cert, err := auth.Certificate(r.key, r.id, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		ts.StartTLS()
		t.Cleanup(ts.Close)
		return "wss" + strings.TrimPrefix(ts.URL, "https") + wslink.Path
	}
	ts.Start()
	t.Cleanup(ts.Close)
	return "ws" + strings.TrimPrefix(ts.URL, "http") + wslink.Path
}

// A rogue with a stolen board id gets nothing from a host that knows the
// board: not the token (which a host never sends anyway), not a proof of
// it, not even an Authorization header: the host stops after the hello,
// and says why.
func TestRogueBoardGetsNoToken(t *testing.T) {
	h := newHarness(t, "the-lab-token-0123456789")
	ctx := context.Background()
	real, err := dispatcher.Dial(ctx, h.wsURL(), h.opts())
	if err != nil {
		t.Fatal(err)
	}
	real.Close()
	for _, tc := range []struct {
		name   string
		tls    bool
		legacy bool
		want   error
	}{
		{"wss, key changed", true, false, dispatcher.ErrUntrusted},
		{"ws, key changed", false, false, dispatcher.ErrUntrusted},
		{"legacy agent", false, true, dispatcher.ErrLegacyAgent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &rogue{key: newKey(t), id: "test-board", methods: make(chan string, 16), headers: make(chan http.Header, 4), legacy: tc.legacy}
			url := r.serve(t, tc.tls)
			_, err := dispatcher.Dial(ctx, url, h.opts())
			if !errors.Is(err, tc.want) {
				t.Fatalf("dial the rogue: %v, want %v", err, tc.want)
			}
			if ke, ok := errors.AsType[*dispatcher.KeyChangedError](err); ok {
				old := h.agent.Fingerprint()
				for _, want := range []string{"test-board", old.String(), auth.FingerprintOf(r.key.Public().(ed25519.PublicKey)).String(), "boardlink forget test-board"} {
					if !strings.Contains(ke.Error(), want) {
						t.Errorf("refusal %q does not name %q", ke.Error(), want)
					}
				}
			}
			close(r.methods)
			for m := range r.methods {
				if !strings.HasPrefix(m, proto.MethodHello+" ") || strings.Contains(m, h.token) || strings.Contains(m, `"token"`) {
					t.Errorf("the rogue got %q", m)
				}
			}
			if hdr := <-r.headers; hdr.Get("Authorization") != "" {
				t.Errorf("the rogue got an Authorization header: %q", hdr.Get("Authorization"))
			}
		})
	}
}

// A board whose key changed (reinstalled, or replaced) is refused until
// the host forgets it; the refusal names the board and both keys.
func TestChangedKeyRefused(t *testing.T) {
	known := dispatcher.NewKnownBoards(filepath.Join(t.TempDir(), "known_boards.json"))
	h1 := newHarness(t, "same-token-both-times-0123")
	opts := h1.opts()
	opts.Trust = known
	c, err := dispatcher.Dial(context.Background(), h1.wsURL(), opts)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	h2 := newHarness(t, "same-token-both-times-0123") // the same id, another key
	_, err = dispatcher.Dial(context.Background(), h2.wsURL(), opts)
	ke, ok := errors.AsType[*dispatcher.KeyChangedError](err)
	if !ok || ke.ID != "test-board" || ke.Pinned != h1.agent.Fingerprint() || ke.Got != h2.agent.Fingerprint() {
		t.Fatalf("changed key: %v", err)
	}
	if !strings.Contains(err.Error(), known.Path()) {
		t.Errorf("refusal does not name the known-boards file: %v", err)
	}
	if found, err := known.Forget(context.Background(), "test-board"); !found || err != nil {
		t.Fatalf("forget: %v %v", found, err)
	}
	c, err = dispatcher.Dial(context.Background(), h2.wsURL(), opts)
	if err != nil {
		t.Fatalf("after forget: %v", err)
	}
	c.Close()
	// --fingerprint: only that key.
	opts.Fingerprint = h1.agent.Fingerprint()
	if _, err := dispatcher.Dial(context.Background(), h2.wsURL(), opts); !errors.As(err, new(*dispatcher.FingerprintError)) {
		t.Fatalf("--fingerprint of another key: %v", err)
	}
}

// clock is a fake clock for the agent's authentication.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }
func (c *clock) frozen(at time.Time) func() time.Time {
	return func() time.Time { return at.Add(time.Duration(c.offset.Load())) }
}

// codeWatch catches the pairing codes an agent shows.
type codeWatch struct{ codes chan string }

var codeRE = regexp.MustCompile(`[0-9A-Z]{4}-[0-9A-Z]{4}`)

func (w codeWatch) show(line string) { w.codes <- codeRE.FindString(line) }

type pairingBoard struct {
	*harness
	codes codeWatch
	dir   string
	clock *clock
}

func newPairingBoard(t *testing.T) pairingBoard {
	t.Helper()
	p := pairingBoard{codes: codeWatch{codes: make(chan string, 8)}, dir: t.TempDir(), clock: &clock{}}
	p.harness = newHarnessConfig(t, "", agent.Config{Auth: agent.AuthConfig{Pairing: true, ShowCode: p.codes.show,
		PairedFile: filepath.Join(p.dir, "paired.json"), CodeFile: filepath.Join(p.dir, "pairing-code.json"),
		Now: p.clock.now}})
	return p
}

func (p pairingBoard) pair(t *testing.T, hostKey ed25519.PrivateKey, known *dispatcher.KnownBoards,
	code func(shown string, begin proto.PairBeginResult) string) (dispatcher.PairResult, error) {
	t.Helper()
	return dispatcher.Pair(context.Background(), p.wsURL(), dispatcher.PairOptions{HostKey: hostKey, Name: "ci@lab-host", Known: known,
		Code: func(ctx context.Context, board string, begin proto.PairBeginResult) (string, error) {
			select {
			case c := <-p.codes.codes:
				return code(c, begin), nil
			default: // no new code shown
				return code("", begin), nil
			}
		}})
}

// wrongCodes tries n wrong codes from host and returns the code the board
// showed.
func (p pairingBoard) wrongCodes(t *testing.T, host ed25519.PrivateKey, n int) string {
	t.Helper()
	var right string
	for i := range n {
		_, err := p.pair(t, host, dispatcher.NewKnownBoards(""), func(shown string, _ proto.PairBeginResult) string {
			if shown != "" {
				right = shown
			}
			return fmt.Sprintf("WRNG-%04d", i)
		})
		if !errors.Is(err, auth.ErrWrongCode) {
			t.Fatalf("wrong code %d: %v", i, err)
		}
	}
	return right
}

func TestPairing(t *testing.T) {
	p := newPairingBoard(t)
	ctx := context.Background()
	hostKey := newKey(t)
	known := dispatcher.NewKnownBoards("")
	// A wrong code: refused, nothing stored on either side.
	var code string
	_, err := p.pair(t, hostKey, known, func(shown string, _ proto.PairBeginResult) string { code = shown; return "ZZZZ-ZZZZ" })
	if !errors.Is(err, auth.ErrWrongCode) || code == "" {
		t.Fatalf("wrong code: %v (code shown %q)", err, code)
	}
	if _, ok := known.Lookup("test-board"); ok {
		t.Fatal("a failed pairing pinned the board")
	}
	if hosts, _ := agent.ReadPaired(filepath.Join(p.dir, "paired.json")); len(hosts) != 0 {
		t.Fatalf("a failed pairing stored %v", hosts)
	}
	// The same host again: no new code, the one shown goes on.
	res, err := p.pair(t, hostKey, known, func(shown string, begin proto.PairBeginResult) string {
		if shown != "" || begin.Attempts != 2 {
			t.Errorf("second try: a new code %q, %d attempts; want none and 2", shown, begin.Attempts)
		}
		return strings.ToLower(code) // as typed
	})
	if err != nil || res.BoardID != "test-board" || res.Fingerprint != p.agent.Fingerprint() {
		t.Fatalf("pair: %+v %v", res, err)
	}
	hosts, err := agent.ReadPaired(filepath.Join(p.dir, "paired.json"))
	if err != nil || len(hosts) != 1 || hosts[0].Name != "ci@lab-host" || hosts[0].FP != auth.FingerprintOf(hostKey.Public().(ed25519.PublicKey)) {
		t.Fatalf("paired hosts: %+v %v", hosts, err)
	}
	if e, ok := known.Lookup("test-board"); !ok || !e.Paired || e.Fingerprint != p.agent.Fingerprint() {
		t.Fatalf("host pin: %+v %v", e, ok)
	}
	// Used: the host key alone opens sessions, over wss:// and serial.
	for _, url := range []string{p.wsURL(), "unix://" + p.serveUnix(t)} {
		c, err := dispatcher.Dial(ctx, url, dispatcher.DialOptions{HostKey: hostKey, Trust: known})
		if err != nil {
			t.Fatalf("%s with the paired key: %v", url, err)
		}
		if _, err := c.Info(ctx); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	// Another host's key is not paired.
	_, err = dispatcher.Dial(ctx, p.wsURL(), dispatcher.DialOptions{HostKey: newKey(t), Trust: known})
	if !proto.IsReason(err, proto.ReasonUnauthorized) || !strings.Contains(err.Error(), "not paired") {
		t.Fatalf("unpaired host key: %v", err)
	}
}

// A code made with boardlinkd pair (the code file) is used instead of one
// shown on the console; a code's attempts run out; a new code is made at
// most every 30 s.
func TestPairingCodeFileAndLimits(t *testing.T) {
	p := newPairingBoard(t)
	p.clock.advance(time.Hour) // past any lockout from other tests' clocks
	code, err := agent.WritePairingCode(filepath.Join(p.dir, "pairing-code.json"), time.Hour, p.clock.now())
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.pair(t, newKey(t), dispatcher.NewKnownBoards(""), func(shown string, begin proto.PairBeginResult) string {
		if shown != "" || !strings.Contains(begin.Shown, "boardlinkd pair") {
			t.Errorf("with a code file: shown %q on %q", shown, begin.Shown)
		}
		return code
	})
	if err != nil || res.BoardID != "test-board" {
		t.Fatalf("pair with the code file's code: %v", err)
	}
	if _, err := os.Stat(filepath.Join(p.dir, "pairing-code.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the used code file stays: %v", err)
	}
	// Three wrong codes use a code up; the right one is refused after.
	host := newKey(t)
	right := p.wrongCodes(t, host, 3)
	_, err = p.pair(t, host, dispatcher.NewKnownBoards(""), func(string, proto.PairBeginResult) string { return right })
	if !proto.IsReason(err, proto.ReasonBusy) || !strings.Contains(err.Error(), "retry in") {
		t.Fatalf("a new code at once: %v, want busy", err)
	}
	p.clock.advance(31 * time.Second)
	_, err = p.pair(t, host, dispatcher.NewKnownBoards(""), func(shown string, _ proto.PairBeginResult) string {
		if shown == "" || shown == right {
			t.Errorf("after the interval: code %q, want a new one", shown)
		}
		return shown
	})
	if err != nil {
		t.Fatalf("with a new code: %v", err)
	}
}

// The third and last attempt of a code can succeed: two wrong codes, then
// the right one, pairs.
func TestPairingLastAttempt(t *testing.T) {
	p := newPairingBoard(t)
	host := newKey(t)
	right := p.wrongCodes(t, host, 2)
	_, err := p.pair(t, host, dispatcher.NewKnownBoards(""), func(_ string, begin proto.PairBeginResult) string {
		if begin.Attempts != 1 {
			t.Errorf("attempts left: %d, want 1", begin.Attempts)
		}
		return right
	})
	if err != nil {
		t.Fatalf("the right code on the last attempt: %v", err)
	}
}

// Wrong tokens are paced per source address: after a failure the source
// is locked out for a delay that doubles, and attempts during a lockout
// are refused without being examined, the right token too.
func TestWrongTokenFloodSlowedDown(t *testing.T) {
	c := &clock{}
	at := time.Now()
	h := newHarnessConfig(t, "the-right-token-0123456789", agent.Config{Auth: agent.AuthConfig{Now: c.frozen(at)}})
	wrong := h.opts()
	wrong.Token = "a-wrong-token-0123456789"
	ctx := context.Background()
	examined, locked := 0, 0
	for range 50 {
		_, err := dispatcher.Dial(ctx, h.wsURL(), wrong)
		switch {
		case err != nil && strings.Contains(err.Error(), "retry in"):
			locked++
		case proto.IsReason(err, proto.ReasonUnauthorized):
			examined++
		default:
			t.Fatalf("wrong token: %v", err)
		}
	}
	if examined != 1 || locked != 49 {
		t.Fatalf("50 wrong tokens: %d examined, %d refused unexamined; want 1 and 49", examined, locked)
	}
	if _, err := dispatcher.Dial(ctx, h.wsURL(), h.opts()); err == nil || !strings.Contains(err.Error(), "retry in") {
		t.Fatalf("the right token during a lockout: %v", err)
	}
	// The delay doubles with each failure in a row.
	for i, want := range []string{"500ms", "1s", "2s", "4s"} {
		c.advance(30 * time.Second)
		if _, err := dispatcher.Dial(ctx, h.wsURL(), wrong); err == nil || strings.Contains(err.Error(), "retry in") {
			t.Fatalf("failure %d after the lockout: %v", i+2, err)
		}
		_, err := dispatcher.Dial(ctx, h.wsURL(), wrong)
		if err == nil || !strings.Contains(err.Error(), "retry in "+want) {
			t.Fatalf("after failure %d: %v, want a lockout of %s", i+2, err, want)
		}
	}
	// The Bearer header of the upgrade is paced the same way, with 429
	// and Retry-After; another source address is not.
	c.advance(time.Minute)
	status := func(local string, tok string) (int, string) {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		tr := &http.Transport{DialContext: d.DialContext, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "https"+strings.TrimPrefix(h.wsURL(), "wss")+wslink.Path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	if code, _ := status("127.0.0.1", "wrong-bearer-token-0123"); code != http.StatusUnauthorized {
		t.Fatalf("wrong bearer: %d, want 401", code)
	}
	if code, after := status("127.0.0.1", "wrong-bearer-token-0123"); code != http.StatusTooManyRequests || after == "" {
		t.Fatalf("wrong bearer again: %d (Retry-After %q), want 429", code, after)
	}
	if code, _ := status("127.0.0.2", "wrong-bearer-token-0123"); code != http.StatusUnauthorized {
		t.Fatalf("wrong bearer from another address: %d, want 401", code)
	}
}

// What a browser sends is refused before the upgrade: an Origin header, or
// a Host that names another server on a loopback listener (a page whose
// name was rebound to 127.0.0.1).
func TestBrowserRequestsRefused(t *testing.T) {
	h := newHarness(t, "")
	url := "https" + strings.TrimPrefix(h.wsURL(), "wss") + wslink.Path
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer tr.CloseIdleConnections()
	for _, tc := range []struct {
		host, origin string
		want         int
	}{
		{"", "http://evil.example", http.StatusForbidden},
		{"evil.example:7207", "", http.StatusMisdirectedRequest},
		{"test-board.local:7207", "", http.StatusBadRequest}, // allowed: then not a WebSocket upgrade
		{"localhost", "", http.StatusBadRequest},
	} {
		req, _ := http.NewRequest("GET", url, nil)
		if tc.host != "" {
			req.Host = tc.host
		}
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("Host %q Origin %q: %d, want %d", tc.host, tc.origin, resp.StatusCode, tc.want)
		}
	}
}

// A peer that does not authenticate in time is disconnected, one that is
// idle after authenticating too, and connections beyond the limit are
// closed at once.
func TestConnectionLimits(t *testing.T) {
	h := newHarnessConfig(t, "", agent.Config{Limits: agent.Limits{HandshakeTimeout: 200 * time.Millisecond,
		IdleTimeout: 300 * time.Millisecond, MaxConns: 4}})
	silent := rawSession(t, h.wsURL())
	<-silent.Done() // without the handshake timeout this waits forever
	c, err := dispatcher.Dial(context.Background(), h.wsURL(), h.opts())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-c.Conn().Done() // idle: closed
	// Four held open: the fifth is closed before TLS.
	var held []net.Conn
	for range 4 {
		conn, err := net.Dial("tcp", h.ws.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, conn)
	}
	extra, err := net.Dial("tcp", h.ws.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if n, err := extra.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Fatalf("the fifth connection: read %d, %v; want closed", n, err)
	}
	for _, conn := range held {
		conn.Close()
	}
}
