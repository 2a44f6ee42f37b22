package service

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
)

// chromium is the browser's path, or the test skips (fails under
// BOARDLINK_E2E=1).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.SkipOrFail(t, "no chromium (Debian: apt-get install chromium)")
	return ""
}

// browser starts the headless Chromium at path for the test, with a
// profile of its own and nothing that reaches for the network by itself
// (without those flags it hangs on a closed network), and returns a tab
// of it. Its output is in the test's log if the test fails.
func browser(ctx context.Context, t *testing.T, path string) context.Context {
	t.Helper()
	var out testenv.Buffer
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.CombinedOutput(&out))
	tab, cancelTab := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		if t.Failed() {
			t.Logf("chromium's output:\n%s", out.String())
		}
	})
	if err := chromedp.Do(tab); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return tab
}

// artefacts is where the test's screenshots go: $BOARDLINK_ARTEFACTS, or
// a directory of the test's own.
func artefacts(t *testing.T) string {
	dir := os.Getenv("BOARDLINK_ARTEFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// screenshot keeps the whole page of tab as name (PNG) in dir.
func screenshot(t *testing.T, tab context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(tab, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(png))
}

// TestDashboardBrowser drives the dashboard in headless Chromium against
// the service and sim boards found by mDNS, among more static boards than
// a page holds: a board that boots shows up on the boards page (the first,
// where it sorts) without a reload, one whose agent stops goes offline
// there, a lease taken through the API appears on it and on the leases
// page, the summary's link to a state filters the boards, page 2 is a
// link away, a rollout's page follows its progress and its link to a
// result filters its boards, a board's console page tails what is
// recorded; with JavaScript off the pages (page 2, a filter, the filter's
// form) read the same. Screenshots of the boards page and of a rollout's
// are kept as artefacts.
func TestDashboardBrowser(t *testing.T) {
	path := chromium(t)
	if !testenv.InPrivateLoopback(t) {
		return
	}
	l := startLab(t, labOptions{boards: 2, ttl: time.Minute, mdns: true})
	// And a board on a serial line that does not exist: it stays offline,
	// and the test writes its console record as the service's reader of
	// the line would. And more boards than a page holds, offline, so
	// that "uart" is on page 2 and the sim boards on page 1.
	manyBoards(t, l, perPage, BoardConfig{ID: "uart", Address: "serial://" + filepath.Join(l.dir, "no-such-tty")})
	console, err := l.svc.consoles.Log("uart")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := console.Write([]byte("U-Boot 2024.01\r\n")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute) // a hung browser fails, not hangs
	defer cancel()
	ro := store.Rollout{ID: store.NewRolloutID(), Image: "fw-2.0.img", Version: "2.0.0", Selector: "model=sim",
		Concurrency: 1, MaxFailures: 1}
	if err := l.svc.st.CreateRollout(ctx, ro); err != nil {
		t.Fatal(err)
	}
	for _, b := range l.sim.Boards {
		if err := l.svc.st.PutBoard(ctx, store.BoardResult{RolloutID: ro.ID, BoardID: b.ID, Phase: store.PhasePlan,
			FromVersion: "1.0.0", ToVersion: "2.0.0"}); err != nil {
			t.Fatal(err)
		}
	}
	dir := artefacts(t)
	tab := browser(ctx, t, path)
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(tab, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	visible := func(sel string) chromedp.Action[chromedp.Void] {
		if strings.HasPrefix(sel, "//") {
			return chromedp.WaitVisible(sel) // XPath
		}
		return chromedp.WaitVisible(chromedp.CSS(sel))
	}
	row := func(board, attrs string) string { return `tr[data-board="` + board + `"]` + attrs }
	live := visible("#live-status.on") // the page's stream is open

	do("sign in", chromedp.Navigate(l.srv.URL+"/"), visible("#token"),
		chromedp.SendKeys(chromedp.ID("token"), l.tokens["alice"]), chromedp.Click(chromedp.ID("signin")),
		visible(row(l.sim.Boards[0].ID, `[data-state="idle"]`)), live)
	do("the script", chromedp.WaitReady(chromedp.CSS("html.js"))) // what the JavaScript-off tab must not have
	// A mark a reload would wipe.
	if _, err := chromedp.Run(tab, chromedp.Evaluate[string](`window.boardlinkMark = "same page"`)); err != nil {
		t.Fatal(err)
	}

	late, err := simlab.Start(ctx, simlab.Options{Boards: 1, IDPrefix: "late", Dir: filepath.Join(t.TempDir(), "late"),
		Ifaces: []string{"lo"}, Token: l.sim.Token()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { late.Stop(context.Background()) })
	added := late.Boards[0].ID
	do("the board added", visible(row(added, `[data-state="idle"]`)))

	held, err := acquire(ctx, l.clients["alice"], AcquireRequest{Boards: []string{l.sim.Boards[1].ID}})
	if err != nil {
		t.Fatal(err)
	}
	do("the lease taken", visible(row(l.sim.Boards[1].ID, `[data-state="leased"][data-holder="alice"]`)))

	if err := late.Boards[0].Down(ctx); err != nil {
		t.Fatal(err)
	}
	do("the board removed", visible(row(added, `[data-state="offline"]`)))
	mark, err := chromedp.Run(tab, chromedp.Evaluate[string](`window.boardlinkMark || "reloaded"`))
	if err != nil || mark != "same page" {
		t.Fatalf("the page was reloaded: %q %v", mark, err)
	}
	screenshot(t, tab, dir, "dashboard-boards.png")

	// The summary's link filters to a state; its stream follows the
	// filter.
	do("the idle boards", chromedp.Click(chromedp.CSS(`#boards-summary a[data-state="idle"]`)),
		visible(row(l.sim.Boards[0].ID, `[data-state="idle"]`)), visible(`#boards-summary a.current[data-state="idle"]`), live)
	shown, err := chromedp.Run(tab, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#boards-rows tr")).map(tr => tr.dataset.state)`))
	if err != nil || len(shown) != 1 || shown[0] != "idle" {
		t.Fatalf("the idle boards' rows: %v %v", shown, err)
	}
	if src, err := chromedp.Run(tab, chromedp.Evaluate[string](`document.querySelector("main").dataset.live`)); err != nil || src != "/live/?state=idle" {
		t.Fatalf("the filtered page's stream: %q %v", src, err)
	}
	// Page 2 of all of them, by its link.
	do("page 2", chromedp.Click(chromedp.CSS(`#boards-summary a[data-state=""]`)), visible(row(added, "")),
		chromedp.Click(chromedp.CSS(`#boards-pager a[rel="next"]`)), visible(row("uart", "")),
		visible(`#boards-pager .rows[data-page="2"]`), live)

	do("the leases page", chromedp.Navigate(l.srv.URL+"/leases"),
		visible(`tr[data-lease="`+held.ID+`"][data-state="active"]`), live)
	other, err := acquire(ctx, l.clients["bob"], AcquireRequest{Boards: []string{l.sim.Boards[0].ID}})
	if err != nil {
		t.Fatal(err)
	}
	do("a new lease", visible(`tr[data-lease="`+other.ID+`"][data-state="active"]`))

	do("the rollout page", chromedp.Navigate(l.srv.URL+"/rollouts/"+ro.ID),
		visible(row(l.sim.Boards[0].ID, `[data-phase="plan"]`)), live)
	if err := l.svc.st.PutBoard(ctx, store.BoardResult{RolloutID: ro.ID, BoardID: l.sim.Boards[0].ID, Phase: store.PhaseDone,
		Result: store.ResultCommitted, FromVersion: "1.0.0", ToVersion: "2.0.0", BytesSent: 5 << 20, Attempts: 1,
		Started: time.Now().Add(-time.Minute), Ended: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := l.svc.st.PutBoard(ctx, store.BoardResult{RolloutID: ro.ID, BoardID: l.sim.Boards[1].ID, Phase: store.PhasePrepare,
		FromVersion: "1.0.0", ToVersion: "2.0.0", BytesSent: 1 << 20, Attempts: 1, Started: time.Now()}); err != nil {
		t.Fatal(err)
	}
	do("the rollout's progress", visible(row(l.sim.Boards[0].ID, `[data-result="committed"]`)),
		visible(row(l.sim.Boards[1].ID, `[data-phase="prepare"]`)))
	screenshot(t, tab, dir, "dashboard-rollout.png")
	do("the rollout's committed boards", chromedp.Click(chromedp.CSS(`#rollout-summary a[data-result="committed"]`)),
		visible(`#rollout-summary a.current[data-result="committed"]`), visible(row(l.sim.Boards[0].ID, `[data-result="committed"]`)), live)
	if n, err := chromedp.Run(tab, chromedp.Evaluate[int](`document.querySelectorAll("#rollout-rows tr").length`)); err != nil || n != 1 {
		t.Fatalf("the rollout's committed boards: %d rows %v", n, err)
	}

	do("the console page", chromedp.Navigate(l.srv.URL+"/boards/uart"),
		visible(`//pre[@id="console"][contains(., "U-Boot 2024.01")]`))
	if _, err := console.Write([]byte("Starting kernel ...\r\n")); err != nil {
		t.Fatal(err)
	}
	do("the console's live tail", visible(`//pre[@id="console"][contains(., "U-Boot 2024.01") and contains(., "Starting kernel")]`))

	// JavaScript off, in a tab of its own (the same sign-in): the same
	// pages read as served, and no stream is opened.
	noJS, closeTab := chromedp.NewContext(tab)
	defer closeTab()
	err = chromedp.Do(noJS, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
		return err
	}))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{"/", row(added, `[data-state="offline"]`)},
		{"/?page=2", row("uart", "")},
		{"/?state=leased", row(l.sim.Boards[1].ID, `[data-holder="alice"]`)},
		{"/", row(l.sim.Boards[1].ID, `[data-holder="alice"]`)},
		{"/leases", `tr[data-lease="` + other.ID + `"]`},
		{"/rollouts", `tr[data-rollout="` + ro.ID + `"]`},
		{"/rollouts/" + ro.ID, row(l.sim.Boards[0].ID, `[data-result="committed"]`)},
		{"/boards/" + l.sim.Boards[1].ID, `dl[data-holder="alice"]`},
		{"/boards/uart", `pre[data-console]`},
	} {
		if err := chromedp.Do(noJS, chromedp.Navigate(l.srv.URL+tc.path), chromedp.WaitReady(chromedp.CSS(tc.want))); err != nil {
			t.Fatalf("%s without JavaScript: %s: %v", tc.path, tc.want, err)
		}
		ran, err := chromedp.Run(noJS, chromedp.Evaluate[bool](`document.documentElement.classList.contains("js")`))
		if err != nil || ran {
			t.Errorf("%s without JavaScript: the script ran (%v)", tc.path, err)
		}
	}
	// The filter is a plain form.
	if err := chromedp.Do(noJS, chromedp.Navigate(l.srv.URL+"/"), chromedp.WaitReady(chromedp.CSS(`input[name="q"]`)),
		chromedp.SendKeys(chromedp.CSS(`input[name="q"]`), "UART"), chromedp.Click(chromedp.CSS(`#boards-filter button`)),
		chromedp.WaitReady(chromedp.CSS(row("uart", ""))), chromedp.WaitReady(chromedp.CSS(`#boards-pager .rows[data-pages="1"]`))); err != nil {
		t.Fatalf("the filter form without JavaScript: %v", err)
	}
}
