// Command service benchmarks the lab service: -boards simulated boards
// (default 1,000) on loopback under one `boardlink serve`, run as a
// process of its own so that its CPU and memory are its own.
//
// The program builds boardlink (go build, into a temporary directory),
// starts the boards in this process with internal/simlab (the real agent
// each, listening on 127.0.0.1, no mDNS), writes the service's config
// (the boards as static entries, one user, a -heartbeat interval) and
// starts `boardlink serve --listen 127.0.0.1:0` on it. Then it measures,
// one after the other:
//
//   - online: the time from the service's start until every board is
//     idle (dialed, its first board.info answered).
//   - steady state over -window: the service's CPU (utime+stime from
//     /proc/PID/stat, as a share of one core), its RSS at the end and its
//     peak (VmRSS, VmHWM), and how stale the boards' last_seen are at the
//     end (the heartbeat interval, seen from the API).
//   - lease round trip: -leases times, one after the other, acquire one
//     board (granted at once) and release it; the median, p99 and worst.
//   - dead board: -dead boards are taken down (their agent stopped, its
//     connections closed) one at a time, and the time until the API shows
//     each offline is measured, and the service's own record of it (the
//     audit row of the state change, against the time the board went
//     down).
//   - silent board: -silent boards, which the service reaches through a
//     TCP relay of this program's, fall silent one at a time (the relay
//     forwards nothing more and closes nothing: a hung board, a cut
//     cable), and the time until the API shows each offline is measured:
//     what the heartbeat's interval and timeout bound.
//
// Run it from the module root:
//
//	go run ./bench/service                      # 1,000 boards, heartbeat 3s, 30s window
//	go run ./bench/service -boards 200 -heartbeat 1s -window 10s
//
// With BOARDLINK_PPROF=ADDR in its environment the program also builds
// boardlink with a pprof listener on ADDR (net/http/pprof), so that the
// service's heap and goroutines can be read during the window:
//
//	BOARDLINK_PPROF=127.0.0.1:6060 go run ./bench/service -window 5m &
//	go tool pprof http://127.0.0.1:6060/debug/pprof/heap
//
// Only 127.0.0.1 is used, and no multicast. Everything it starts and
// writes is removed when it ends, also on error or Ctrl-C.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/boardlink/boardlink/bench/internal/benchkit"
	"github.com/boardlink/boardlink/dispatcher/service"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/simlab"
)

const (
	userToken   = "bench-user-token"
	stopTimeout = 3 * time.Minute
	pollEvery   = 10 * time.Millisecond
)

func main() {
	boards := flag.Int("boards", 1000, "simulated boards in the lab")
	heartbeat := flag.Duration("heartbeat", 3*time.Second, "the service's heartbeat interval")
	window := flag.Duration("window", 30*time.Second, "how long the steady state is measured")
	leases := flag.Int("leases", 200, "lease round trips measured")
	dead := flag.Int("dead", 5, "boards taken down, one at a time, to time how soon the service notices")
	silent := flag.Int("silent", 3, "boards that fall silent (their link open, nothing answered), one at a time, to time how soon the service notices")
	flag.Parse()
	if flag.NArg() > 0 || *boards < 1 || *heartbeat < 100*time.Millisecond || *window <= 0 || *leases < 1 || *dead < 0 ||
		*silent < 0 || *dead+*silent > *boards {
		fmt.Fprintln(os.Stderr, "service: bad arguments (see -help)")
		os.Exit(2)
	}
	benchkit.Run("service", func(ctx context.Context) error {
		return run(ctx, *boards, *heartbeat, *window, *leases, *dead, *silent)
	})
}

func run(ctx context.Context, n int, heartbeat, window time.Duration, leases, dead, silent int) error {
	benchkit.RaiseFileLimit(0)
	dir, err := os.MkdirTemp("", "boardlink-bench-service-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "boardlink")
	build := []string{"build", "-o", bin}
	if addr := os.Getenv("BOARDLINK_PPROF"); addr != "" {
		overlay, err := pprofOverlay(dir, addr)
		if err != nil {
			return err
		}
		build = append(build, "-overlay", overlay)
	}
	if out, err := exec.CommandContext(ctx, "go", append(build, "./cmd/boardlink")...).CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/boardlink (run from the module root): %v\n%s", err, out)
	}

	fmt.Printf("starting %d sim boards...\n", n)
	lab, err := simlab.Start(ctx, simlab.Options{Boards: n, Dir: filepath.Join(dir, "boards")})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
		defer cancel()
		lab.Stop(sctx)
	}()
	// The silent boards are reached through relays, the dead ones directly.
	addrs := map[string]string{}
	var relays []*relay
	defer func() {
		for _, r := range relays {
			r.close()
		}
	}()
	for i := range silent {
		b := lab.Boards[n-1-dead-i]
		r, addr, err := startRelay(ctx, b.Addr())
		if err != nil {
			return err
		}
		relays = append(relays, r)
		addrs[b.ID] = addr
	}
	cfg, err := writeConfig(dir, lab, heartbeat, addrs)
	if err != nil {
		return err
	}
	serve := exec.Command(bin, "serve", "--config", cfg, "--listen", "127.0.0.1:0", "--db", filepath.Join(dir, "lab.db"))
	serve.Env = append(os.Environ(), "XDG_CONFIG_HOME="+dir, "XDG_STATE_HOME="+dir)
	stdout, err := serve.StdoutPipe()
	if err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(dir, "serve.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	serve.Stderr = logf
	start := time.Now()
	if err := serve.Start(); err != nil {
		return err
	}
	defer func() {
		serve.Process.Signal(syscall.SIGTERM)
		serve.Wait()
	}()
	url, err := benchkit.ServeURL(stdout)
	if err != nil {
		return err
	}
	c, err := service.NewClient(url, userToken, nil)
	if err != nil {
		return err
	}
	pid := serve.Process.Pid

	// Online: every board idle.
	for {
		bs, err := c.Boards(ctx)
		if err != nil {
			return err
		}
		idle := 0
		for _, b := range bs {
			if b.State == service.Idle {
				idle++
			}
		}
		if idle == n {
			break
		}
		if !benchkit.Sleep(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
	online := time.Since(start)

	// Steady state.
	cpu0, err := benchkit.CPUTicks(pid)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if !benchkit.Sleep(ctx, window) {
		return ctx.Err()
	}
	cpu1, _ := benchkit.CPUTicks(pid)
	cpuShare := float64(cpu1-cpu0) / 100 / time.Since(t0).Seconds() // USER_HZ is 100 on Linux
	rss, hwm := benchkit.MemKiB(pid, "VmRSS:"), benchkit.MemKiB(pid, "VmHWM:")
	bs, err := c.Boards(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	var stale []time.Duration
	for _, b := range bs {
		stale = append(stale, now.Sub(b.LastSeen))
	}
	slices.Sort(stale)

	// Lease round trips.
	var rtts []time.Duration
	for range leases {
		t := time.Now()
		l, err := c.Acquire(ctx, service.AcquireRequest{Count: 1})
		if err != nil {
			return fmt.Errorf("acquire: %w", err)
		}
		if _, err := c.Release(ctx, l.ID); err != nil {
			return fmt.Errorf("release: %w", err)
		}
		rtts = append(rtts, time.Since(t))
	}
	slices.Sort(rtts)

	// Dead boards.
	var seen, recorded []time.Duration
	for i := range dead {
		b := lab.Boards[n-1-i]
		down := time.Now()
		if err := b.Down(ctx); err != nil {
			return err
		}
		if err := waitOffline(ctx, c, b.ID); err != nil {
			return err
		}
		seen = append(seen, time.Since(down))
		es, err := c.Audit(ctx, store.AuditFilter{Board: b.ID, Action: "board.state", Limit: 1})
		if err != nil || len(es) == 0 {
			return fmt.Errorf("audit of %s: %v", b.ID, err)
		}
		recorded = append(recorded, es[0].At.Sub(down))
	}

	// Silent boards.
	var quiet []time.Duration
	for i, r := range relays {
		id := lab.Boards[n-1-dead-i].ID
		down := time.Now()
		r.freeze()
		if err := waitOffline(ctx, c, id); err != nil {
			return err
		}
		quiet = append(quiet, time.Since(down))
	}

	fmt.Printf("\nboardlink serve, %d sim boards on loopback, heartbeat %v\n\n", n, heartbeat)
	fmt.Printf("  all boards online after start     %s\n", benchkit.Seconds(online))
	fmt.Printf("  service CPU over %v               %.1f%% of one core\n", window, 100*cpuShare)
	fmt.Printf("  service RSS                       %s now, %s peak\n", benchkit.MiB(rss<<10), benchkit.MiB(hwm<<10))
	fmt.Printf("  last_seen age (median, max)       %s, %s\n", benchkit.Seconds(benchkit.Median(stale)), benchkit.Seconds(stale[len(stale)-1]))
	fmt.Printf("  lease acquire+release (%d)       median %s, p99 %s, max %s\n", leases,
		benchkit.Seconds(benchkit.Median(rtts)), benchkit.Seconds(rtts[len(rtts)*99/100]), benchkit.Seconds(rtts[len(rtts)-1]))
	if dead > 0 {
		slices.Sort(seen)
		slices.Sort(recorded)
		fmt.Printf("  dead board seen offline (%d)       median %s, max %s (API); service's record median %s, max %s\n", dead,
			benchkit.Seconds(benchkit.Median(seen)), benchkit.Seconds(seen[len(seen)-1]),
			benchkit.Seconds(benchkit.Median(recorded)), benchkit.Seconds(recorded[len(recorded)-1]))
	}
	if silent > 0 {
		slices.Sort(quiet)
		fmt.Printf("  silent board seen offline (%d)     median %s, max %s (API)\n", silent,
			benchkit.Seconds(benchkit.Median(quiet)), benchkit.Seconds(quiet[len(quiet)-1]))
	}
	return nil
}

// writeConfig writes the service's config: every board a static entry (at
// addrs[id] when given, else its own address), one user.
func writeConfig(dir string, lab *simlab.Lab, heartbeat time.Duration, addrs map[string]string) (string, error) {
	tok := filepath.Join(dir, "board.token")
	if err := os.WriteFile(tok, []byte(lab.Token()), 0o600); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "token_file: %s\nheartbeat: %s\nquarantine_after: -1\nusers:\n  - name: bench\n    token_sha256: %s\nboards:\n",
		strconv.Quote(tok), heartbeat, benchkit.SHA256Hex(userToken))
	for _, x := range lab.Boards {
		fmt.Fprintf(&b, "  - {id: %s, address: %q}\n", x.ID, cmp.Or(addrs[x.ID], x.Addr()))
	}
	path := filepath.Join(dir, "serve.yaml")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// pprofOverlay writes a file that serves net/http/pprof on addr, and the
// build overlay that adds it to ./cmd/boardlink, into dir; it returns the
// overlay's path. The tree is left as it is.
func pprofOverlay(dir, addr string) (string, error) {
	src := filepath.Join(dir, "pprof.go")
	code := fmt.Sprintf("package main\n\nimport (\n\t\"net/http\"\n\t_ \"net/http/pprof\"\n)\n\nfunc init() { go http.ListenAndServe(%q, nil) }\n", addr)
	if err := os.WriteFile(src, []byte(code), 0o600); err != nil {
		return "", err
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	overlay := filepath.Join(dir, "overlay.json")
	raw := fmt.Sprintf(`{"Replace": {%q: %q}}`, filepath.Join(wd, "cmd", "boardlink", "zz_bench_pprof.go"), src)
	return overlay, os.WriteFile(overlay, []byte(raw), 0o600)
}

// waitOffline polls the service until it reports board id offline.
func waitOffline(ctx context.Context, c *service.Client, id string) error {
	for {
		got, err := c.Board(ctx, id)
		if err != nil {
			return err
		}
		if got.State == service.Offline {
			return nil
		}
		if !benchkit.Sleep(ctx, pollEvery) {
			return ctx.Err()
		}
	}
}
