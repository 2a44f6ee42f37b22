package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// scraped is one scrape of /metrics, parsed by Prometheus's own parser.
type scraped map[string]*dto.MetricFamily

// scrapeStatus GETs /metrics at server with token ("": none); the
// families are parsed when the answer is 200.
func scrapeStatus(t *testing.T, server, token string) (scraped, int) {
	t.Helper()
	req, err := http.NewRequest("GET", server+metricsPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, resp.StatusCode
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return mfs, resp.StatusCode
}

func scrape(t *testing.T, server, token string) scraped {
	t.Helper()
	mfs, code := scrapeStatus(t, server, token)
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	return mfs
}

// metric is the one series of family name whose labels include labels
// ("k=v" each); nil when there is none.
func (s scraped) metric(name string, labels ...string) *dto.Metric {
	mf := s[name]
	if mf == nil {
		return nil
	}
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		match := true
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			if got, ok := have[k]; !ok || got != v {
				match = false
			}
		}
		if match {
			return m
		}
	}
	return nil
}

// value is the value of a gauge or counter series; absent series fail.
func (s scraped) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	m := s.metric(name, labels...)
	switch {
	case m == nil:
		t.Fatalf("no series %s%v", name, labels)
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	}
	t.Fatalf("%s%v is neither gauge nor counter", name, labels)
	return 0
}

func (s scraped) histogram(t *testing.T, name string, labels ...string) *dto.Histogram {
	t.Helper()
	m := s.metric(name, labels...)
	if m == nil || m.Histogram == nil {
		t.Fatalf("no histogram %s%v", name, labels)
	}
	return m.Histogram
}

// boardStates checks boardlink_boards: want's states have its counts,
// every other state 0.
func (s scraped) boardStates(t *testing.T, want map[State]int) {
	t.Helper()
	for _, st := range States {
		if got := s.value(t, "boardlink_boards", "state="+string(st)); got != float64(want[st]) {
			t.Errorf("boardlink_boards{state=%q} = %v, want %d", st, got, want[st])
		}
	}
}

// TestMetrics: a scrape of a lab's service, parsed with Prometheus's text
// parser, says what the test did: boards by state as they lease and go
// offline, leases open and waiting, the wait of each granted lease, the
// latency of each command by outcome and the bytes of its input and
// output, the bytes of a file pushed and pulled, every
// board's last heartbeat, a running rollout's boards, and the Go and
// process collectors.
func TestMetrics(t *testing.T) {
	l := startLab(t, labOptions{boards: 2, ttl: time.Minute})
	l.waitIdle()
	ctx := context.Background()
	alice, bob := l.clients["alice"], l.clients["bob"]
	tok := l.tokens["alice"]
	id0, id1 := l.sim.Boards[0].ID, l.sim.Boards[1].ID

	before := l.svc.Boards()
	m := scrape(t, l.srv.URL, tok)
	after := l.svc.Boards()
	m.boardStates(t, map[State]int{Idle: 2})
	for i, b := range before {
		// Each board's last heartbeat, as the service knew it when
		// scraped.
		got := m.value(t, "boardlink_board_last_seen_timestamp_seconds", "board="+b.ID)
		lo, hi := float64(b.LastSeen.UnixNano())/1e9, float64(after[i].LastSeen.UnixNano())/1e9
		if got < lo-1e-6 || got > hi+1e-6 {
			t.Errorf("%s last seen %f, not within %f..%f", b.ID, got, lo, hi)
		}
	}
	if got := m.value(t, "boardlink_heartbeat_interval_seconds"); got != 0.2 {
		t.Errorf("heartbeat interval %v", got)
	}
	for _, name := range []string{"go_goroutines", "process_start_time_seconds", "promhttp_metric_handler_errors_total"} {
		if m[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	for _, o := range execOutcomes {
		if h := m.histogram(t, "boardlink_exec_duration_seconds", "outcome="+o); h.GetSampleCount() != 0 {
			t.Errorf("exec %s: %d before any command", o, h.GetSampleCount())
		}
	}

	// Alice holds board 0; Bob waits for it until she lets it go.
	a, err := acquire(ctx, alice, AcquireRequest{Boards: []string{id0}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := bob.Acquire(ctx, AcquireRequest{Boards: []string{id0}, WaitMs: 60000})
	if err != nil || b.State != store.LeaseWaiting {
		t.Fatalf("%+v %v", b, err)
	}
	m = scrape(t, l.srv.URL, tok)
	m.boardStates(t, map[State]int{Idle: 1, Leased: 1})
	if act, wait := m.value(t, "boardlink_leases", "state=active"), m.value(t, "boardlink_leases", "state=waiting"); act != 1 || wait != 1 {
		t.Errorf("leases: %v active, %v waiting", act, wait)
	}
	if _, err := alice.Release(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	b, err = bob.Lease(ctx, b.ID)
	if err != nil || b.State != store.LeaseActive {
		t.Fatalf("bob's lease after alice's release: %+v %v", b, err)
	}
	// Alice's was granted at once, Bob's when hers ended.
	m = scrape(t, l.srv.URL, tok)
	h := m.histogram(t, "boardlink_lease_wait_seconds")
	bobWait := b.Granted.Sub(b.Created).Seconds()
	if h.GetSampleCount() != 2 || math.Abs(h.GetSampleSum()-bobWait) > 1e-3 || bobWait <= 0 {
		t.Errorf("lease wait: %d observed, sum %f, want 2 and %f", h.GetSampleCount(), h.GetSampleSum(), bobWait)
	}
	if act, wait := m.value(t, "boardlink_leases", "state=active"), m.value(t, "boardlink_leases", "state=waiting"); act != 1 || wait != 0 {
		t.Errorf("leases: %v active, %v waiting", act, wait)
	}

	// Two commands on board 1: one fails with output on both streams, one
	// succeeds silently.
	var stdout, stderr strings.Builder
	out, err := alice.Exec(ctx, id1, "", ExecRequest{Argv: []string{"sh", "-c", "printf hello; printf oops >&2; exit 3"}}, &stdout, &stderr)
	if err != nil || out.Result.ExitCode != 3 || stdout.String() != "hello" || stderr.String() != "oops" {
		t.Fatalf("%+v %v %q %q", out, err, stdout.String(), stderr.String())
	}
	if out, err := alice.Exec(ctx, id1, "", ExecRequest{Argv: []string{"true"}}, nil, nil); err != nil || out.Result.ExitCode != 0 {
		t.Fatalf("%+v %v", out, err)
	}
	// One with input, through the exec stream.
	var typed strings.Builder
	out, err = alice.ExecStream(ctx, id1, "", ExecStreamRequest{ExecRequest: ExecRequest{Argv: []string{"cat"}}, Stdin: true},
		ExecIO{Stdin: strings.NewReader("typed"), Stdout: &typed})
	if err != nil || out.Result.ExitCode != 0 || typed.String() != "typed" {
		t.Fatalf("%+v %v %q", out, err, typed.String())
	}
	m = scrape(t, l.srv.URL, tok)
	for o, want := range map[string]uint64{execFailed: 1, execOK: 2, execError: 0, execCanceled: 0} {
		if h := m.histogram(t, "boardlink_exec_duration_seconds", "outcome="+o); h.GetSampleCount() != want || want > 0 && h.GetSampleSum() <= 0 {
			t.Errorf("exec %s: %d observed (sum %f), want %d", o, h.GetSampleCount(), h.GetSampleSum(), want)
		}
	}
	if got := m.value(t, "boardlink_moved_bytes_total", "path=exec", "direction=from_board"); got != float64(len("hello")+len("oops")+len("typed")) {
		t.Errorf("exec output bytes %v", got)
	}
	if got := m.value(t, "boardlink_moved_bytes_total", "path=exec", "direction=to_board"); got != float64(len("typed")) {
		t.Errorf("exec input bytes %v", got)
	}

	// A file pushed to board 1 and pulled back.
	data := strings.Repeat("boardlink", 1000)
	local := filepath.Join(t.TempDir(), "data.txt")
	if err := os.WriteFile(local, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	remote := filepath.Join(l.sim.Boards[1].Dir(), "metrics.txt")
	if res, err := alice.Push(ctx, id1, "", local, PushRequest{Path: remote}); err != nil || res.Bytes != int64(len(data)) {
		t.Fatalf("push: %+v %v", res, err)
	}
	var pulled strings.Builder
	if res, err := alice.Pull(ctx, id1, "", remote, func(proto.FileInfo) (io.Writer, error) { return &pulled, nil }); err != nil || pulled.String() != data {
		t.Fatalf("pull: %+v %v", res, err)
	}
	m = scrape(t, l.srv.URL, tok)
	for _, dir := range []string{"to_board", "from_board"} {
		if got := m.value(t, "boardlink_moved_bytes_total", "path=file", "direction="+dir); got != float64(len(data)) {
			t.Errorf("file bytes %s: %v, want %d", dir, got, len(data))
		}
	}

	// Board 1 goes offline; the leased one stays leased.
	if err := l.sim.Boards[1].Down(ctx); err != nil {
		t.Fatal(err)
	}
	gone := l.waitState(id1, Offline)
	m = scrape(t, l.srv.URL, tok)
	m.boardStates(t, map[State]int{Leased: 1, Offline: 1})
	if got := m.value(t, "boardlink_board_last_seen_timestamp_seconds", "board="+id1); got != float64(gone.LastSeen.UnixNano())/1e9 {
		t.Errorf("offline board's last heartbeat %f, want %f", got, float64(gone.LastSeen.UnixNano())/1e9)
	}

	// A running rollout as its runner records it: one board committed,
	// one failed, one being prepared. A finished one is not reported.
	st := l.svc.st
	if err := st.CreateRollout(ctx, store.Rollout{ID: "r-metrics", Image: "img", Version: "2"}); err != nil {
		t.Fatal(err)
	}
	for _, br := range []store.BoardResult{
		{BoardID: "a", Phase: store.PhaseDone, Result: store.ResultCommitted},
		{BoardID: "b", Phase: store.PhaseDone, Result: store.ResultRolledBack},
		{BoardID: "c", Phase: store.PhasePrepare},
		{BoardID: "d", Phase: store.PhaseDone, Result: store.ResultSkipped},
	} {
		br.RolloutID = "r-metrics"
		if err := st.PutBoard(ctx, br); err != nil {
			t.Fatal(err)
		}
	}
	m = scrape(t, l.srv.URL, tok)
	for _, c := range []struct {
		phase, result string
		n             float64
	}{{"done", "committed", 1}, {"done", "rolled_back", 1}, {"prepare", "", 1}, {"done", "skipped", 1}} {
		if got := m.value(t, "boardlink_rollout_boards", "rollout=r-metrics", "phase="+c.phase, "result="+c.result); got != c.n {
			t.Errorf("rollout boards %s/%s: %v, want %v", c.phase, c.result, got, c.n)
		}
	}
	if got := m.value(t, "boardlink_rollout_failed_boards", "rollout=r-metrics"); got != 1 {
		t.Errorf("rollout failures %v, want 1 (the rollback)", got)
	}
	if err := st.SetRolloutState(ctx, "r-metrics", store.StateDone); err != nil {
		t.Fatal(err)
	}
	m = scrape(t, l.srv.URL, tok)
	if m.metric("boardlink_rollout_boards", "rollout=r-metrics") != nil || m.metric("boardlink_rollout_failed_boards") != nil {
		t.Error("a finished rollout is still reported")
	}
}

// TestMetricsServiceRollout: a rollout the service runs shows as it goes:
// while the second of two boards is held in its prepare, the first is
// done and committed and the second under way; once over, the rollout
// leaves the metrics.
func TestMetricsServiceRollout(t *testing.T) {
	o := startOTALab(t, 2, false)
	ctx := context.Background()
	alice, tok := o.clients["alice"], o.tokens["alice"]
	b1 := o.sim.Boards[1].ID
	release := make(chan struct{})
	o.mu.Lock()
	o.hold = func(board string, phase proto.Phase) {
		if board == b1 && phase == proto.PhasePrepare {
			<-release
		}
	}
	o.mu.Unlock()
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	st, err := alice.StartRollout(ctx, o.img, RolloutRequest{Concurrency: 1, WaveSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	rollout := "rollout=" + st.ID
	testenv.Eventually(t, "the first board committed and the second under way, in the metrics", func() bool {
		m := scrape(t, o.srv.URL, tok)
		done := m.metric("boardlink_rollout_boards", rollout, "phase=done", "result=committed")
		under := m.metric("boardlink_rollout_boards", rollout, "phase=prepare", "result=")
		failed := m.metric("boardlink_rollout_failed_boards", rollout)
		return done.GetGauge().GetValue() == 1 && under.GetGauge().GetValue() == 1 && failed != nil && failed.GetGauge().GetValue() == 0
	})
	close(release)
	released = true
	if st = waitRollout(t, alice, st); st.State != store.StateDone {
		t.Fatalf("rollout %s: %s %v", st.ID, st.State, resultsOf(st))
	}
	if m := scrape(t, o.srv.URL, tok); m.metric("boardlink_rollout_boards", rollout) != nil {
		t.Error("the finished rollout is still in the metrics")
	}
}

// metricsLab is a service with n static boards on unix sockets nobody
// listens on (offline, their console recorded), one user (alice), and
// metrics as mc says.
type metricsLab struct {
	svc *Service
	srv *httptest.Server
	dir string
}

func startMetricsLab(t *testing.T, n int, mc MetricsConfig) *metricsLab {
	t.Helper()
	dir := t.TempDir()
	userTok := filepath.Join(dir, "alice.token")
	writeSecret(t, userTok, "token-of-alice")
	cfg := Config{QuarantineAfter: -1, Metrics: mc, Users: []UserConfig{{Name: "alice", TokenFile: userTok}}}
	for i := range n {
		cfg.Boards = append(cfg.Boards, BoardConfig{ID: fmt.Sprintf("uart%d", i), Address: "unix://" + filepath.Join(dir, "nobody.sock")})
	}
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(dir, "lab.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	svc, err := New(ctx, Options{Config: cfg, Store: st, Trust: dispatcher.NewKnownBoards("")})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc.Handler())
	t.Cleanup(func() {
		srv.Close()
		if err := svc.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	return &metricsLab{svc: svc, srv: srv, dir: dir}
}

// TestMetricsAccess: /metrics needs a token by default (an API user's);
// a scrape-only token reads /metrics and nothing else; open, it needs
// none; the config refuses both at once and a token file others can read.
func TestMetricsAccess(t *testing.T) {
	t.Run("default", func(t *testing.T) {
		ml := startMetricsLab(t, 0, MetricsConfig{})
		for _, tok := range []string{"", "wrong"} {
			if _, code := scrapeStatus(t, ml.srv.URL, tok); code != http.StatusUnauthorized {
				t.Errorf("token %q: %d", tok, code)
			}
		}
		scrape(t, ml.srv.URL, "token-of-alice")
	})
	t.Run("scrape token", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "scrape.token")
		writeSecret(t, path, "token-of-prometheus")
		ml := startMetricsLab(t, 0, MetricsConfig{TokenFile: path})
		scrape(t, ml.srv.URL, "token-of-prometheus")
		scrape(t, ml.srv.URL, "token-of-alice")
		if _, code := scrapeStatus(t, ml.srv.URL, ""); code != http.StatusUnauthorized {
			t.Errorf("no token: %d", code)
		}
		c, err := NewClient(ml.srv.URL, "token-of-prometheus", nil)
		if err != nil {
			t.Fatal(err)
		}
		var ae *APIError
		if _, err := c.Boards(context.Background()); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
			t.Errorf("the scrape token read the API: %v", err)
		}
	})
	t.Run("open", func(t *testing.T) {
		ml := startMetricsLab(t, 0, MetricsConfig{Open: true})
		scrape(t, ml.srv.URL, "")
	})
	t.Run("refused configs", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "scrape.token")
		if err := os.WriteFile(path, []byte("token-of-prometheus\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		userTok := filepath.Join(dir, "alice.token")
		writeSecret(t, userTok, "token-of-alice")
		users := []UserConfig{{Name: "alice", TokenFile: userTok}}
		both := Config{Users: users, Metrics: MetricsConfig{Open: true, TokenFile: path}}
		if err := both.Check(); !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "Metrics.TokenFile") {
			t.Errorf("open and a token: %v", err)
		}
		st, err := store.Open(context.Background(), filepath.Join(dir, "lab.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		readable := Config{Users: users, Metrics: MetricsConfig{TokenFile: path}}
		if _, err := New(context.Background(), Options{Config: readable, Store: st}); !errors.Is(err, ErrBadConfig) {
			t.Errorf("a token file others can read: %v", err)
		}
	})
}

// TestMetricsTwoServices: two services in one process each register
// their metrics (Go and process collectors too) in a registry of their
// own, and each reports its own boards.
func TestMetricsTwoServices(t *testing.T) {
	one := startMetricsLab(t, 1, MetricsConfig{Open: true})
	two := startMetricsLab(t, 2, MetricsConfig{Open: true})
	for _, c := range []struct {
		ml *metricsLab
		n  int
	}{{one, 1}, {two, 2}} {
		m := scrape(t, c.ml.srv.URL, "")
		m.boardStates(t, map[State]int{Offline: c.n})
		if m["go_goroutines"] == nil {
			t.Error("no Go collector")
		}
	}
}

// TestMetricsConsoleBytes: console text served from a board's record
// counts as bytes moved from the board.
func TestMetricsConsoleBytes(t *testing.T) {
	ml := startMetricsLab(t, 1, MetricsConfig{Open: true})
	rec, err := ml.svc.consoles.Log("uart0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rec.Write([]byte("U-Boot 2024.01\nStarting kernel ...\n")); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ml.srv.URL, "token-of-alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	if err := c.Console(context.Background(), "uart0", "", false, &text); err != nil || !strings.Contains(text.String(), "Starting kernel") {
		t.Fatalf("%q %v", text.String(), err)
	}
	m := scrape(t, ml.srv.URL, "")
	if got := m.value(t, "boardlink_moved_bytes_total", "path=console", "direction=from_board"); got != float64(text.Len()) {
		t.Errorf("console bytes %v, want %d", got, text.Len())
	}
}

// TestExecOutcome: how a command's end maps to its outcome label, the
// service's cancel first (its record may carry a signal too).
func TestExecOutcome(t *testing.T) {
	failed := errors.New("link lost")
	for _, c := range []struct {
		out  ExecOutcome
		err  error
		want string
	}{
		{ExecOutcome{}, nil, execOK},
		{ExecOutcome{Result: proto.ExecResult{ExitCode: 1}}, nil, execFailed},
		{ExecOutcome{Result: proto.ExecResult{ExitCode: 137, Signal: "KILL"}}, nil, execSignaled},
		{ExecOutcome{Result: proto.ExecResult{ExitCode: 124, TimedOut: true, Signal: "TERM"}}, nil, execTimeout},
		{ExecOutcome{Result: proto.ExecResult{Signal: "TERM"}, Canceled: "lease l-1 expired"}, nil, execCanceled},
		{ExecOutcome{Result: proto.ExecResult{Canceled: true, Signal: "TERM"}}, nil, execCanceled},
		{ExecOutcome{}, failed, execError},
	} {
		if got := execOutcome(c.out, c.err); got != c.want {
			t.Errorf("%+v %v: %s, want %s", c.out, c.err, got, c.want)
		}
	}
}

// BenchmarkScrape1000: one scrape of a service that knows 1,000 boards
// (each with a last heartbeat) and one running rollout of all of them;
// it reports the answer's size.
func BenchmarkScrape1000(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "lab.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if err := st.CreateRollout(ctx, store.Rollout{ID: "r-bench"}); err != nil {
		b.Fatal(err)
	}
	seen := time.Now()
	for i := range 1000 {
		id := fmt.Sprintf("board-%04d", i)
		if err := st.PutLabBoard(ctx, store.LabBoard{ID: id, Source: "mdns", State: string(Idle), LastSeen: seen}); err != nil {
			b.Fatal(err)
		}
		if err := st.PutBoard(ctx, store.BoardResult{RolloutID: "r-bench", BoardID: id, Phase: store.PhaseDone, Result: store.ResultCommitted}); err != nil {
			b.Fatal(err)
		}
	}
	// Not started: no monitor dials the boards; the scrape reads what
	// the service holds.
	svc, err := New(ctx, Options{Config: Config{Metrics: MetricsConfig{Open: true},
		Users: []UserConfig{{Name: "alice", TokenSHA256: strings.Repeat("0", 64)}}}, Store: st})
	if err != nil {
		b.Fatal(err)
	}
	h := svc.Handler()
	var size int
	b.ResetTimer()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", metricsPath, nil))
		if rec.Code != http.StatusOK {
			b.Fatalf("%d %s", rec.Code, rec.Body)
		}
		size = rec.Body.Len()
	}
	b.ReportMetric(float64(size), "bytes/scrape")
}
