package service

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
)

// dashClient is a browser without a browser: a cookie jar, and redirects
// shown rather than followed.
type dashClient struct {
	t    *testing.T
	base string
	hc   *http.Client
}

func newDashClient(t *testing.T, base string) *dashClient {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &dashClient{t: t, base: base, hc: &http.Client{Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// do makes a request; form, if set, is posted.
func (c *dashClient) do(method, path string, form url.Values, hdr map[string]string) (*http.Response, string) {
	c.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp, string(raw)
}

// sameSite are the headers a browser sends with a form of the page's own.
func (c *dashClient) sameSite() map[string]string {
	return map[string]string{"Origin": c.base, "Sec-Fetch-Site": "same-origin"}
}

// signIn signs in with tok through the form.
func (c *dashClient) signIn(tok string) *http.Response {
	c.t.Helper()
	resp, body := c.do("POST", "/signin", url.Values{"token": {tok}, "next": {"/leases"}}, c.sameSite())
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/leases" {
		c.t.Fatalf("sign-in: %s %s", resp.Status, body)
	}
	return resp
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf is the form token of a page of the dashboard.
func (c *dashClient) csrf(page string) string {
	c.t.Helper()
	_, body := c.do("GET", page, nil, nil)
	m := csrfField.FindStringSubmatch(body)
	if m == nil {
		c.t.Fatalf("no form token in %s:\n%s", page, body)
	}
	return m[1]
}

// TestDashboardSignIn: every page needs sign-in by default; the token is
// taken once by the form and kept in an HttpOnly, SameSite=Strict cookie
// (not Secure over plain http); a wrong token is refused; signing out
// forgets it. With PublicRead, the lists read without sign-in, but a
// board's commands and console, and every action, still need it.
func TestDashboardSignIn(t *testing.T) {
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute})
	l.waitIdle()
	id := l.sim.Boards[0].ID
	c := newDashClient(t, l.srv.URL)
	for _, p := range []string{"/", "/leases", "/rollouts", "/boards/" + id} {
		resp, _ := c.do("GET", p, nil, nil)
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/signin?next="+url.QueryEscape(p) {
			t.Errorf("GET %s signed out: %s to %q", p, resp.Status, resp.Header.Get("Location"))
		}
	}
	if resp, _ := c.do("GET", "/live/", nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("live stream signed out: %s", resp.Status)
	}
	resp, body := c.do("POST", "/signin", url.Values{"token": {"not-a-token"}}, c.sameSite())
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "No user has that token") || len(resp.Cookies()) != 0 {
		t.Fatalf("wrong token: %s %v\n%s", resp.Status, resp.Cookies(), body)
	}

	resp = c.signIn(l.tokens["alice"])
	ck := resp.Cookies()
	if len(ck) != 1 || ck[0].Name != cookieName || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode ||
		ck[0].Secure || ck[0].Path != "/" || strings.Contains(ck[0].Value, "token-of") {
		t.Fatalf("cookie: %+v", ck)
	}
	resp, body = c.do("GET", "/", nil, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `data-board="`+id+`"`) || !strings.Contains(body, "alice") {
		t.Fatalf("boards signed in: %s\n%s", resp.Status, body)
	}
	// The sign-in is in the audit log.
	es, err := l.svc.Audit(context.Background(), store.AuditFilter{User: "alice", Action: "dashboard.signin"})
	if err != nil || len(es) != 1 {
		t.Fatalf("%+v %v", es, err)
	}

	resp, _ = c.do("POST", "/signout", url.Values{"csrf": {c.csrf("/")}}, c.sameSite())
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 || resp.Cookies()[0].MaxAge >= 0 {
		t.Fatalf("sign-out: %s %+v", resp.Status, resp.Cookies())
	}
	if resp, _ := c.do("GET", "/", nil, nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("signed out, boards: %s", resp.Status)
	}
	// A cookie that is no user's token is no sign-in.
	u, _ := url.Parse(l.srv.URL)
	c.hc.Jar.SetCookies(u, []*http.Cookie{{Name: cookieName, Value: "bm90LWEtdG9rZW4"}})
	if resp, _ := c.do("GET", "/", nil, nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("forged cookie: %s", resp.Status)
	}

	// A board wall: reading without sign-in.
	wall := httptest.NewServer(l.svc.Dashboard(DashboardConfig{PublicRead: true}))
	t.Cleanup(wall.Close)
	v := newDashClient(t, wall.URL)
	for _, p := range []string{"/", "/leases", "/rollouts", "/boards/" + id} {
		if resp, body := v.do("GET", p, nil, nil); resp.StatusCode != http.StatusOK || !strings.Contains(body, "Sign in") {
			t.Errorf("public GET %s: %s", p, resp.Status)
		}
	}
	if _, body := v.do("GET", "/boards/"+id, nil, nil); strings.Contains(body, "Recent commands") ||
		!strings.Contains(body, "Sign in to see its commands") {
		t.Errorf("a board's commands shown without sign-in:\n%s", body)
	}
	if resp, _ := v.do("GET", "/live/boards/"+id+"/console", nil, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("console stream without sign-in: %s", resp.Status)
	}
	if resp, _ := v.do("POST", "/boards/"+id+"/power", url.Values{"action": {"cycle"}}, v.sameSite()); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("power without sign-in: %s", resp.Status)
	}
}

// TestDashboardCSRF: a form post from another site, or without the
// session's form token, is refused and changes nothing; the same post from
// the page itself switches the board's power, recorded in the audit log.
func TestDashboardCSRF(t *testing.T) {
	drivers := map[string]*simPower{}
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute,
		power: func(sim *simlab.Lab, bc BoardConfig) (power.Driver, error) {
			drivers[bc.ID] = &simPower{b: sim.Boards[0]}
			return drivers[bc.ID], nil
		}})
	l.waitIdle()
	id := l.sim.Boards[0].ID
	c := newDashClient(t, l.srv.URL)
	c.signIn(l.tokens["alice"])
	tok := c.csrf("/boards/" + id)
	path := "/boards/" + id + "/power"
	cross := map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
	for _, tc := range []struct {
		name string
		form url.Values
		hdr  map[string]string
	}{
		{"no form token", url.Values{"action": {"cycle"}}, c.sameSite()},
		{"bad form token", url.Values{"action": {"cycle"}, "csrf": {tok + "x"}}, c.sameSite()},
		{"another site's Origin", url.Values{"action": {"cycle"}, "csrf": {tok}}, map[string]string{"Origin": "https://evil.example"}},
		{"cross-site fetch", url.Values{"action": {"cycle"}, "csrf": {tok}}, cross},
	} {
		resp, body := c.do("POST", path, tc.form, tc.hdr)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "not from this dashboard") {
			t.Errorf("%s: %s\n%s", tc.name, resp.Status, body)
		}
	}
	// Signing in from another site (login CSRF) is refused too.
	if resp, _ := c.do("POST", "/signin", url.Values{"token": {l.tokens["bob"]}}, cross); resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site sign-in: %s", resp.Status)
	}
	if n := drivers[id].cycles.Load(); n != 0 {
		t.Fatalf("%d power cycles after refused posts", n)
	}

	before := l.sim.Boards[0].BootID()
	resp, body := c.do("POST", path, url.Values{"action": {"cycle"}, "csrf": {tok}}, c.sameSite())
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/boards/"+id+"?power=cycle" {
		t.Fatalf("power cycle: %s\n%s", resp.Status, body)
	}
	// (The service may cycle it again itself: it saw the board go away.)
	if drivers[id].cycles.Load() == 0 || l.sim.Boards[0].BootID() == before {
		t.Fatalf("not cycled: %d cycles, boot %s", drivers[id].cycles.Load(), l.sim.Boards[0].BootID())
	}
	if _, body := c.do("GET", "/boards/"+id+"?power=cycle", nil, nil); !strings.Contains(body, "Power cycle: done.") {
		t.Fatalf("no notice:\n%s", body)
	}
	l.audited(id, "board.power", "cycle (dashboard)")

	// A board bob holds: alice sees no power buttons, and a post is
	// refused with the holder named.
	held, err := acquire(context.Background(), l.clients["bob"], AcquireRequest{Boards: []string{id}, WaitMs: 60000})
	if err != nil {
		t.Fatal(err)
	}
	if _, body := c.do("GET", "/boards/"+id, nil, nil); strings.Contains(body, `id="power-cycle"`) {
		t.Fatalf("power buttons on a board bob holds:\n%s", body)
	}
	resp, body = c.do("POST", path, url.Values{"action": {"off"}, "csrf": {tok}}, c.sameSite())
	if resp.StatusCode != http.StatusConflict || !strings.Contains(body, "leased by bob") || !strings.Contains(body, held.ID) {
		t.Fatalf("power of bob's board: %s\n%s", resp.Status, body)
	}
}

// TestDashboardEscapes: what boards and the audit log say is text, never
// markup, in pages and in live fragments alike; every page carries a
// strict Content-Security-Policy.
func TestDashboardEscapes(t *testing.T) {
	const evil = `"><script>alert(1)</script><img src=x onerror=alert(2)>`
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute,
		labels: func(int) map[string]string { return map[string]string{"rack": evil} }})
	l.waitIdle()
	id := l.sim.Boards[0].ID
	ctx := context.Background()
	// A command line and a maintenance reason with markup, in the log.
	if _, err := l.clients["alice"].SetMaintenance(ctx, id, MaintenanceRequest{On: true, Reason: evil}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.svc.st.AddAudit(ctx, store.AuditEntry{User: "alice", Action: "board.exec", Board: id, Result: "ok", Detail: "echo " + evil}); err != nil {
		t.Fatal(err)
	}
	ro := store.Rollout{ID: "r-" + evil[:2] + "1", Version: evil, Selector: "rack=" + evil, Concurrency: 1}
	if err := l.svc.st.CreateRollout(ctx, ro); err != nil {
		t.Fatal(err)
	}
	if err := l.svc.st.PutBoard(ctx, store.BoardResult{RolloutID: ro.ID, BoardID: id, Phase: store.PhaseDone,
		Result: store.ResultFailed, Reason: evil}); err != nil {
		t.Fatal(err)
	}
	c := newDashClient(t, l.srv.URL)
	c.signIn(l.tokens["alice"])
	for _, p := range []string{"/", "/boards/" + id, "/rollouts", "/rollouts/" + url.PathEscape(ro.ID), "/signin?next=" + url.QueryEscape(evil)} {
		resp, body := c.do("GET", p, nil, nil)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", p, resp.Status)
		}
		if strings.Contains(body, "<script>alert") || strings.Contains(body, "<img src=x") {
			t.Errorf("GET %s: markup unescaped:\n%s", p, body)
		}
		if p != "/signin?next="+url.QueryEscape(evil) && !strings.Contains(body, "&lt;script&gt;alert(1)") {
			t.Errorf("GET %s: the text is not shown escaped:\n%s", p, body)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "default-src 'none'") ||
			strings.Contains(csp, "unsafe") || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: headers %v", p, resp.Header)
		}
		// No inline script at all: the CSP would block it.
		if strings.Contains(body, "<script>") || strings.Contains(body, " onclick=") {
			t.Errorf("GET %s: inline script", p)
		}
	}
	// A page's query (its filter) survives signing in.
	anon := newDashClient(t, l.srv.URL)
	if resp, _ := anon.do("GET", "/?state=idle&q=a+b", nil, nil); resp.Header.Get("Location") != "/signin?next="+url.QueryEscape("/?state=idle&q=a+b") {
		t.Errorf("sign-in's next: %q", resp.Header.Get("Location"))
	}
	if resp, _ := anon.do("POST", "/signin", url.Values{"token": {l.tokens["alice"]}, "next": {"/?state=idle&q=a+b"}}, anon.sameSite()); resp.Header.Get("Location") != "/?q=a+b&state=idle" {
		t.Errorf("next with a query: %q", resp.Header.Get("Location"))
	}
	// A next that leaves the site is not followed.
	if resp, _ := c.do("POST", "/signin", url.Values{"token": {l.tokens["alice"]}, "next": {"//evil.example/x"}}, c.sameSite()); resp.Header.Get("Location") != "/" {
		t.Errorf("next off the site: %q", resp.Header.Get("Location"))
	}
	// The live fragments are the same templates: escaped too.
	for _, e := range readEvents(t, c, "/live/boards/"+id, 2) {
		var f fragment
		if err := json.Unmarshal([]byte(e.data), &f); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(f.HTML, "<script>alert") || !strings.Contains(f.HTML, "&lt;script&gt;alert(1)") {
			t.Errorf("fragment %s:\n%s", f.ID, f.HTML)
		}
	}
}

type event struct{ name, data string }

// readEvents opens a live stream as the client and reads n events.
func readEvents(t *testing.T, c *dashClient, path string, n int) []event {
	t.Helper()
	resp, sc := openStream(t, c, path)
	defer resp.Body.Close()
	var out []event
	for range n {
		out = append(out, nextEvent(t, sc))
	}
	return out
}

// nextEvent reads a stream's next event.
func nextEvent(t *testing.T, sc *bufio.Scanner) event {
	t.Helper()
	var e event
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			e.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			e.data = strings.TrimPrefix(line, "data: ")
		case line == "" && e.name != "":
			return e
		}
	}
	t.Fatalf("the stream ended: %v", sc.Err())
	return e
}

func openStream(t *testing.T, c *dashClient, path string) (*http.Response, *bufio.Scanner) {
	t.Helper()
	resp, err := c.hc.Get(c.base + path)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		resp.Body.Close()
		t.Fatalf("%s: %s %s", path, resp.Status, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	return resp, sc
}

// TestDashboardLiveBounds: a user holds at most maxLivePerUser live
// streams (another user is not held back by them), and Stop ends every
// stream.
func TestDashboardLiveBounds(t *testing.T) {
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute})
	l.waitIdle()
	alice, bob := newDashClient(t, l.srv.URL), newDashClient(t, l.srv.URL)
	alice.signIn(l.tokens["alice"])
	bob.signIn(l.tokens["bob"])
	var open []*bufio.Scanner
	for range maxLivePerUser {
		resp, sc := openStream(t, alice, "/live/")
		t.Cleanup(func() { resp.Body.Close() })
		if !sc.Scan() || sc.Text() != "retry: 3000" {
			t.Fatalf("stream: %q %v", sc.Text(), sc.Err())
		}
		open = append(open, sc)
	}
	resp, body := alice.do("GET", "/live/leases", nil, nil)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("stream past the bound: %s %s", resp.Status, body)
	}
	resp, sc := openStream(t, bob, "/live/leases")
	t.Cleanup(func() { resp.Body.Close() })
	open = append(open, sc)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.svc.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for i, sc := range open {
		for sc.Scan() {
		}
		if sc.Err() != nil {
			t.Errorf("stream %d: %v", i, sc.Err())
		}
	}
}

// TestDashboardConsole: a board on a serial line shows its console on its
// page (escaped), and its live stream sends the recent record, then each
// line as it is recorded.
func TestDashboardConsole(t *testing.T) {
	// The service again, with a board on a serial line that does not
	// exist: it stays offline, and its console record is written here as
	// the service's reader of the line would.
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute})
	l.stopService()
	l.cfg.Boards = append(l.cfg.Boards, BoardConfig{ID: "uart", Address: "serial://" + filepath.Join(l.dir, "no-such-tty")})
	l.start(nil)
	svc := l.svc
	rec, err := svc.consoles.Log("uart")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rec.Write([]byte("U-Boot 2024.01 <b>bold</b>\r\n")); err != nil {
		t.Fatal(err)
	}
	c := newDashClient(t, l.srv.URL)
	c.signIn(l.tokens["alice"])
	_, body := c.do("GET", "/boards/uart", nil, nil)
	if !strings.Contains(body, `data-console="/live/boards/uart/console"`) || !strings.Contains(body, "U-Boot 2024.01 &lt;b&gt;bold") {
		t.Fatalf("board page:\n%s", body)
	}

	resp, sc := openStream(t, c, "/live/boards/uart/console")
	defer resp.Body.Close()
	var text strings.Builder
	next := func() event {
		e := nextEvent(t, sc)
		var s string
		if err := json.Unmarshal([]byte(e.data), &s); err != nil {
			t.Fatal(err)
		}
		text.WriteString(s)
		return e
	}
	if e := next(); e.name != "reset" {
		t.Fatalf("first event %+v", e)
	}
	if e := next(); e.name != "text" || !strings.Contains(text.String(), "U-Boot 2024.01 <b>bold</b>") {
		t.Fatalf("recent record: %+v %q", e, text.String())
	}
	if _, err := rec.Write([]byte("Starting kernel ...\r\n")); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(text.String(), "Starting kernel") {
		next()
	}
	// A board without a console has no stream.
	if resp, _ := c.do("GET", "/live/boards/nope/console", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("no such board: %s", resp.Status)
	}
}

// TestDashboardRollouts: the rollouts the store holds, listed with their
// progress, and one rollout's boards; an unknown one is a 404 page.
func TestDashboardRollouts(t *testing.T) {
	l := startLab(t, labOptions{boards: 2, ttl: time.Minute})
	ctx := context.Background()
	ro := store.Rollout{ID: store.NewRolloutID(), Image: "fw-2.0.img", Version: "2.0.0", Selector: "model=sim", Concurrency: 2, MaxFailures: 1}
	if err := l.svc.st.CreateRollout(ctx, ro); err != nil {
		t.Fatal(err)
	}
	for i, b := range []store.BoardResult{
		{BoardID: l.sim.Boards[0].ID, Phase: store.PhaseDone, Result: store.ResultCommitted, FromVersion: "1.0.0", ToVersion: "2.0.0", BytesSent: 3 << 20},
		{BoardID: l.sim.Boards[1].ID, Phase: store.PhasePrepare, FromVersion: "1.0.0", ToVersion: "2.0.0"},
	} {
		b.RolloutID = ro.ID
		if err := l.svc.st.PutBoard(ctx, b); err != nil {
			t.Fatal(i, err)
		}
	}
	c := newDashClient(t, l.srv.URL)
	c.signIn(l.tokens["carol"])
	_, body := c.do("GET", "/rollouts", nil, nil)
	if !strings.Contains(body, `data-rollout="`+ro.ID+`" data-state="running"`) || !strings.Contains(body, `<progress max="2" value="1">`) {
		t.Fatalf("rollouts:\n%s", body)
	}
	_, body = c.do("GET", "/rollouts/"+ro.ID, nil, nil)
	for _, want := range []string{`data-board="` + l.sim.Boards[0].ID + `" data-phase="done" data-result="committed"`,
		`data-board="` + l.sim.Boards[1].ID + `" data-phase="prepare" data-result=""`, "3.0 MiB", "1/2 done"} {
		if !strings.Contains(body, want) {
			t.Errorf("rollout page lacks %q", want)
		}
	}
	if resp, body := c.do("GET", "/rollouts/r-nope", nil, nil); resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "r-nope") {
		t.Fatalf("unknown rollout: %s\n%s", resp.Status, body)
	}
	if resp, _ := c.do("GET", "/no/such/page", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown page: %s", resp.Status)
	}
	// The API's catch-all still answers JSON.
	if resp, body := c.do("GET", "/api/v1/nope", nil, nil); resp.StatusCode != http.StatusNotFound || !strings.Contains(body, `"reason"`) {
		t.Fatalf("API catch-all: %s %s", resp.Status, body)
	}
}

// BenchmarkDashboardBoards renders the boards page of a lab of 10,000
// boards (static entries on a closed port: offline, as the page's worst
// case is no cheaper) for a signed-in user, and the page of a rollout of
// all of them, and one round of each one's live stream in which every
// live region changed (what a stream sends after a change), and reports
// the bytes of each, on each engine (BenchmarkDashboardBoards/sqlite,
// /postgres: the test binary's cluster).
func BenchmarkDashboardBoards(b *testing.B) {
	for _, e := range sharedEngines {
		b.Run(e.name, func(b *testing.B) { benchDashboard(b, e.db(b)) })
	}
}

// benchDashboard is BenchmarkDashboardBoards on the database db.
func benchDashboard(b *testing.B, db string) {
	dir := b.TempDir()
	tokFile := filepath.Join(dir, "alice.token")
	if err := os.WriteFile(tokFile, []byte("token-of-alice\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg := Config{QuarantineAfter: -1, Users: []UserConfig{{Name: "alice", TokenFile: tokFile}}}
	for i := range 10000 {
		cfg.Boards = append(cfg.Boards, BoardConfig{ID: fmt.Sprintf("board-%05d", i), Address: "ws://127.0.0.1:1",
			Model: "imx8", Labels: map[string]string{"rack": fmt.Sprint(i / 40)}})
	}
	ctx := context.Background()
	st, err := store.Open(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	svc, err := New(ctx, Options{Config: cfg, Store: st})
	if err != nil {
		b.Fatal(err)
	}
	d := svc.Dashboard(DashboardConfig{}).(*dashboard)
	signedIn := func(path string) *http.Request {
		req := httptest.NewRequest("GET", path, nil)
		req.AddCookie(&http.Cookie{Name: cookieName, Value: base64.RawURLEncoding.EncodeToString([]byte("token-of-alice"))})
		return req
	}
	// A rollout of every board: one in 333 failed, about half committed,
	// the rest waiting.
	ro := store.Rollout{ID: store.NewRolloutID(), Image: "fw.img", Version: "2.0.0", Selector: "model=imx8", Concurrency: 256}
	if err := st.CreateRollout(ctx, ro); err != nil {
		b.Fatal(err)
	}
	results := make([]store.BoardResult, len(cfg.Boards))
	for i, bc := range cfg.Boards {
		results[i] = store.BoardResult{RolloutID: ro.ID, BoardID: bc.ID, Phase: store.PhasePlan}
		switch {
		case i%333 == 0:
			results[i].Phase, results[i].Result = store.PhaseDone, store.ResultFailed
		case i%2 == 0:
			results[i].Phase, results[i].Result = store.PhaseDone, store.ResultCommitted
		}
	}
	if err := st.PutBoards(ctx, ro.ID, results); err != nil {
		b.Fatal(err)
	}
	if store.IsPostgres(db) {
		// The statistics autovacuum gathers within a minute of the writes:
		// without them the planner takes a rollout's boards for a few, and
		// sorts them.
		pg, err := sql.Open("pgx", db)
		if err != nil {
			b.Fatal(err)
		}
		_, err = pg.ExecContext(ctx, `ANALYZE board_results`)
		pg.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	views := map[string]*dashView{}
	for _, vw := range d.views() {
		views[vw.tmpl] = vw
	}
	// A text filter that matches no board: a pass over every board's id,
	// model and labels. The rollout's last page: its boards from the
	// 9,901st on.
	for _, page := range []struct{ name, path, view string }{
		{"page", "/", "boards"}, {"page-filtered", "/?q=no-such-board", ""}, {"rollout-page", "/rollouts/" + ro.ID, "rollout"},
		{"rollout-page-last", "/rollouts/" + ro.ID + "?page=100", ""},
	} {
		b.Run(page.name, func(b *testing.B) {
			benchPage(b, d, signedIn(page.path))
		})
		if page.view == "" {
			continue
		}
		b.Run(strings.Replace(page.name, "page", "live-round", 1), func(b *testing.B) {
			req := signedIn("/live" + page.path)
			req.SetPathValue("id", ro.ID)
			v, vw := d.viewer(req), views[page.view]
			var size int
			measure(b, func() {
				frags, err := d.liveRound(ctx, req, v, vw, map[string]string{})
				if err != nil || len(frags) != len(vw.frags) {
					b.Fatalf("%d fragments: %v", len(frags), err)
				}
				size = 0
				for _, f := range frags {
					size += len(f.HTML)
				}
			})
			b.ReportMetric(float64(size), "round-bytes")
		})
	}
}

// benchPage renders the page req asks for.
func benchPage(b *testing.B, h http.Handler, req *http.Request) {
	var size int
	measure(b, func() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("%d %s", rec.Code, rec.Body.String())
		}
		size = rec.Body.Len()
	})
	b.ReportMetric(float64(size), "page-bytes")
}

// measure runs one op per iteration of b and reports the process's CPU
// time per op too: on a busy machine ns/op is mostly the wait for a CPU.
func measure(b *testing.B, op func()) {
	b.ReportAllocs()
	n := 0
	cpu0 := cpuTime(b)
	for b.Loop() {
		op()
		n++
	}
	b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/float64(n), "cpu-ns/op")
}

// cpuTime is the process's user and system CPU time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// manyBoards restarts l's service with the boards more and n static
// boards more on a closed port (they stay offline), named static-NNN,
// model imx8, label rack rN (50 a rack), and waits for the sim boards
// (static or found) to be idle.
func manyBoards(t *testing.T, l *lab, n int, more ...BoardConfig) {
	t.Helper()
	l.stopService()
	l.cfg.Boards = append(l.cfg.Boards, more...)
	for i := range n {
		l.cfg.Boards = append(l.cfg.Boards, BoardConfig{ID: fmt.Sprintf("static-%03d", i), Address: "ws://127.0.0.1:1",
			Model: "imx8", Labels: map[string]string{"rack": fmt.Sprintf("r%d", i/50)}})
	}
	l.start(nil)
	testenv.Eventually(t, "the sim boards found and idle", func() bool {
		for _, b := range l.sim.Boards {
			if got, err := l.svc.Board(b.ID); err != nil || got.State != Idle {
				return false
			}
		}
		return true
	})
}

var boardRow = regexp.MustCompile(`<tr id="board-[^"]*" data-board="([^"]+)"`)

// rows are the boards of a boards page's (or fragment's) rows, in order.
func rows(re *regexp.Regexp, html string) []string {
	var out []string
	for _, m := range re.FindAllStringSubmatch(html, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestDashboardPages: the boards page of a lab larger than a page shows
// one page of rows (its size bounded by the page, not the lab), with
// links to the others; a state (the summary's link), a text (id, model,
// label, case aside) filter it, the summary counting all boards; a bad
// query is a 400 naming the parameter. Its live stream follows the query
// and sends a region only when it changed. A rollout's page lists its
// failed boards first, a page at a time, filtered by result.
func TestDashboardPages(t *testing.T) {
	l := startLab(t, labOptions{boards: 2, ttl: time.Minute})
	const n = 250 // and the 2 sim boards
	manyBoards(t, l, n)
	c := newDashClient(t, l.srv.URL)
	c.signIn(l.tokens["alice"])
	page := func(path string) string {
		t.Helper()
		resp, body := c.do("GET", path, nil, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s\n%s", path, resp.Status, body)
		}
		return body
	}

	body := page("/")
	got := rows(boardRow, body)
	if len(got) != perPage || got[0] != "sim-000" || got[2] != "static-000" {
		t.Fatalf("first page: %d rows %v", len(got), got)
	}
	// A row is about 400 bytes; the page holds perPage of them whatever
	// the lab's size.
	if len(body) > perPage*1024 {
		t.Errorf("the first page is %d bytes", len(body))
	}
	for _, want := range []string{`>252 boards</a>`, `data-state="offline">250 offline</a>`, `data-state="idle">2 idle</a>`,
		"1–100 of 252", `<a href="?page=2" rel="next">`, `<a href="?page=3" rel="last">`, `data-live="/live/"`} {
		if !strings.Contains(body, want) {
			t.Errorf("first page lacks %q", want)
		}
	}
	body = page("/?page=3")
	if got := rows(boardRow, body); len(got) != 52 || got[51] != "static-249" || !strings.Contains(body, "201–252 of 252") ||
		strings.Contains(body, `rel="next"`) || !strings.Contains(body, `data-live="/live/?page=3"`) {
		t.Errorf("last page: %d rows %v", len(got), got)
	}
	if got := rows(boardRow, page("/?page=9")); len(got) != 52 {
		t.Errorf("past the last page: %d rows, not the last page's", len(got))
	}

	// The summary's link to a state filters to it; the counts stay.
	body = page("/?page=2")
	m := regexp.MustCompile(`<a href="([^"]*)" class="count state state-idle`).FindStringSubmatch(body)
	if m == nil || m[1] != "?state=idle" {
		t.Fatalf("the idle boards' link (from page 2): %v", m)
	}
	body = page("/" + m[1])
	if got := rows(boardRow, body); len(got) != 2 || got[0] != "sim-000" || !strings.Contains(body, ">252 boards</a>") ||
		!strings.Contains(body, `<option selected>idle</option>`) {
		t.Errorf("idle boards: %v", got)
	}
	for q, want := range map[string]int{"R2": 50, "static-007": 1, "IMX8": n, "sim": 2, "nothing": 0} {
		body := page("/?q=" + url.QueryEscape(q))
		if got := rows(boardRow, body); len(got) != min(want, perPage) || !strings.Contains(body, fmt.Sprintf(" of %d<", want)) && want > 0 {
			t.Errorf("?q=%s: %d rows", q, len(got))
		}
	}
	if body := page("/?q=r2&state=idle"); len(rows(boardRow, body)) != 0 || !strings.Contains(body, "No board matches the filter.") {
		t.Errorf("no match:\n%s", body)
	}
	for _, tc := range []struct{ query, field string }{
		{"state=nope", "state"}, {"page=0", "page"}, {"page=x", "page"}, {"q=" + strings.Repeat("x", maxFilter+1), "q"},
	} {
		resp, body := c.do("GET", "/?"+tc.query, nil, nil)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, tc.field+": ") {
			t.Errorf("?%s: %s", tc.query, resp.Status)
		}
		if resp, _ := c.do("GET", "/live/?"+tc.query, nil, nil); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("live ?%s: %s", tc.query, resp.Status)
		}
	}

	// The live stream of the static boards' first page (whose rows do not
	// age: never seen): a board leaving its last page changes the counts
	// and the pager, not the rows, which are not sent again; a board
	// leaving the page changes them.
	resp, sc := openStream(t, c, "/live/?state=offline&q=static")
	defer resp.Body.Close()
	frag := func() fragment {
		t.Helper()
		var f fragment
		if err := json.Unmarshal([]byte(nextEvent(t, sc).data), &f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, id := range []string{"boards-summary", "boards-pager", "boards-rows"} {
		f := frag()
		if f.ID != id {
			t.Fatalf("fragment %s, want %s", f.ID, id)
		}
		if got := rows(boardRow, f.HTML); id == "boards-rows" && (len(got) != perPage || got[0] != "static-000") {
			t.Fatalf("live rows: %d %v", len(got), got)
		}
	}
	ctx := context.Background()
	maintain := func(id string) {
		t.Helper()
		if _, err := l.clients["alice"].SetMaintenance(ctx, id, MaintenanceRequest{On: true, Reason: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	// (The summary may change by itself too: a sim board that misses a
	// heartbeat on a loaded machine.)
	maintain("static-249")
	for f := frag(); f.ID != "boards-pager" || !strings.Contains(f.HTML, "1–100 of 249"); f = frag() {
		if f.ID == "boards-rows" {
			t.Fatalf("the rows sent again, unchanged")
		}
	}
	maintain("static-000")
	f := frag()
	for f.ID != "boards-rows" {
		f = frag()
	}
	if got := rows(boardRow, f.HTML); len(got) != perPage || got[0] != "static-001" {
		t.Fatalf("live rows after static-000 left them: %v", got)
	}
	// A rollout of the static boards: 3 failed, 100 committed, the rest
	// waiting.
	ro := store.Rollout{ID: store.NewRolloutID(), Image: "fw.img", Version: "2.0.0", Selector: "model=imx8", Concurrency: 10, MaxFailures: 5}
	if err := l.svc.st.CreateRollout(ctx, ro); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		b := store.BoardResult{RolloutID: ro.ID, BoardID: fmt.Sprintf("static-%03d", i), Phase: store.PhasePlan}
		switch {
		case i >= 200 && i < 203:
			b.Phase, b.Result = store.PhaseDone, store.ResultFailed
		case i < 100:
			b.Phase, b.Result = store.PhaseDone, store.ResultCommitted
		}
		if err := l.svc.st.PutBoard(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	rolloutRow := regexp.MustCompile(`<tr data-board="([^"]+)" data-phase="[^"]*" data-result="([^"]*)"`)
	body = page("/rollouts/" + ro.ID)
	got = rows(rolloutRow, body)
	if len(got) != perPage || got[0] != "static-200" || got[2] != "static-202" || got[3] != "static-100" {
		t.Fatalf("rollout page: %d rows %v", len(got), got)
	}
	for _, want := range []string{"103/250 done", `<a href="?result=failed" class="count result result-failed" data-result="failed">3 failed</a>`,
		`data-result="committed">100 committed</a>`, "1–100 of 250", `<a href="?page=2" rel="next">`} {
		if !strings.Contains(body, want) {
			t.Errorf("rollout page lacks %q", want)
		}
	}
	if got := rows(rolloutRow, page("/rollouts/"+ro.ID+"?page=3")); len(got) != 50 || got[49] != "static-099" {
		t.Errorf("rollout's last page (the committed last): %d %v", len(got), got)
	}
	body = page("/rollouts/" + ro.ID + "?result=failed")
	if got := rows(rolloutRow, body); len(got) != 3 || !strings.Contains(body, "103/250 done") || !strings.Contains(body, "1–3 of 3") {
		t.Errorf("failed boards: %v", got)
	}
	if resp, _ := c.do("GET", "/rollouts/"+ro.ID+"?page=-1", nil, nil); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("rollout ?page=-1: %s", resp.Status)
	}
}
