// Command lab benchmarks a lab of several services on one database (issue
// 18): -boards simulated boards (default 10,000) shared out among
// -instances `boardlink serve` processes (default 4) on one PostgreSQL.
//
// The program builds boardlink, starts a private PostgreSQL cluster with
// internal/pgtest (on a unix socket, pg_stat_statements loaded), and for
// each instance sN a lab of its share of the boards with internal/simlab
// (the real agent each, no mDNS, trusting a key made for the run) and
// `boardlink serve` with those boards as the static entries of its
// config: each instance reaches only its own boards, and lists the
// others' through the database. Each instance's boards run in a process
// of their own (this program again, as a board host: 10,000 boards in one
// process need more open files than a container's hard limit of 20,000
// allows); each instance is a process of its own, so that its CPU and
// memory are its own.
//
// As root (unless -loopback), each instance and its boards' process run
// in a network namespace of their own (internal/netlab, named after this
// process: nlPID-START-1-lab-s0, ...), joined by a veth each to a bridge
// in a hub namespace (nlPID-START-1-lab-br, 10.77.0.1): the boards on the namespace's own
// loopback, 127.0.0.1, which only their instance reaches, and the service
// on https://10.77.1.K+1:7300 for instance K (TLS with a certificate made
// for the run, which the peers trust), so a lease's command forwarded
// from s0 to s1 crosses the bridge. Postgres stays on its unix socket,
// which the namespaces share (the filesystem is one). The measures are
// taken from the hub: every connection to s0 is dialed from a thread
// moved into the hub's namespace. With -loopback (or not root), every
// instance serves plain http on 127.0.0.1 and instance K's boards listen
// on 127.0.K+1.1, in this machine's namespace.
//
// Once instance s0 lists every board idle, it measures, one after the
// other, through s0:
//
//   - idle over -window: Postgres statements a second (pg_stat_statements
//     calls; transactions a second from pg_stat_database's xact_commit
//     and xact_rollback beside them), and the CPU of each instance, of
//     Postgres (the postmaster and its children) and of the board hosts.
//   - lease round trip: -leases times, acquire one named board and
//     release it, on s0's own boards and on s1's (the lease is kept by
//     s0, the board driven by s1), the median, p90 and max; and a command
//     (`true`) run under each lease, which on s1's board s0 forwards to
//     s1.
//   - dashboard: signed in on s0, -pages times GET / (the boards page:
//     its first 100 rows, the counts of all) and GET /boards/ID of a board of s0's and of
//     s1's; median and max. And GET / every 2 seconds during the
//     rollout.
//   - rollout: a signed image (-size bytes) to every board through s0 at
//     -C: s0 runs its share and starts one on each other instance, each at
//     -C. Wall time until every share is over, the boards' results, and
//     the same Postgres and CPU figures as at idle.
//
// Each instance's RSS is given at idle and after the rollout, with its
// peak (VmHWM).
//
// Run it from the module root (as root where that may raise the open
// files limit past its hard limit: the boards and the services'
// connections are files):
//
//	go run ./bench/lab                                  # 10,000 boards, 4 instances
//	go run ./bench/lab -boards 400 -instances 2 -window 10s
//
// Only the namespaces it makes (10.77.0.0/16), loopback addresses and a
// unix socket are used, nothing of the root namespace's interfaces is
// touched, and nothing multicasts. The whole run is bounded by -timeout.
// Everything it starts and writes (processes, namespaces with their veths
// and bridge, files) is removed when it ends, also on error or Ctrl-C;
// only -logs DIR keeps the services' and the boards' logs. Killed with
// SIGKILL, it leaves no process (each dies with it: the parent-death
// signal), and its namespaces are removed by the next run, or any other
// user of netlab; only its temporary files stay. At the end it
// counts each service's lost boards by error, from its log.
package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/boardlink/boardlink/bench/internal/benchkit"
	"github.com/boardlink/boardlink/dispatcher/service"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/netlab"
	"github.com/boardlink/boardlink/internal/pgtest"
	"github.com/boardlink/boardlink/internal/simlab"
)

const (
	userToken   = "bench-user-token"
	stopTimeout = 3 * time.Minute
	// fileLimit is the open files limit asked for: the boards' listeners
	// and connections, both ends of each in this process's and the
	// services' tables.
	fileLimit = 1 << 18
)

type options struct {
	boards, instances, conc, leases, pages int
	heartbeat, window                      time.Duration
	size                                   int64
	netns                                  bool   // each instance in a network namespace of its own
	logs                                   string // where the services' logs are kept ("": removed)
}

func main() {
	var o options
	flag.IntVar(&o.boards, "boards", 10000, "simulated boards in the lab, shared out among the instances")
	flag.IntVar(&o.instances, "instances", 4, "`boardlink serve` instances on the one database")
	flag.IntVar(&o.conc, "C", 256, "the rollout's concurrency (each instance's share runs at it)")
	flag.IntVar(&o.leases, "leases", 100, "lease round trips measured on own boards, and as many on another instance's")
	flag.IntVar(&o.pages, "pages", 10, "times each dashboard page is read")
	flag.DurationVar(&o.heartbeat, "heartbeat", 5*time.Second, "the services' heartbeat interval")
	flag.DurationVar(&o.window, "window", 20*time.Second, "how long the idle lab is measured")
	size := benchkit.Size(64 << 10)
	flag.Var(&size, "size", "the rollout image's payload")
	timeout := flag.Duration("timeout", 30*time.Minute, "bound of the whole run")
	loopback := flag.Bool("loopback", false, "run every instance on loopback in this machine's namespace (the default when not root)")
	flag.StringVar(&o.logs, "logs", "", "keep the services' and the boards' logs in this directory (default: removed with the rest)")
	flag.Parse()
	o.size = int64(size)
	o.netns = !*loopback && os.Geteuid() == 0
	if flag.NArg() > 0 || o.instances < 2 || o.boards < 2*o.instances || o.conc < 1 || o.conc > 1024 || o.leases < 1 ||
		o.pages < 1 || o.heartbeat < 100*time.Millisecond || o.window <= 0 || o.size < 1 || *timeout <= 0 {
		fmt.Fprintln(os.Stderr, "lab: bad arguments (see -help); at least 2 instances, 2 boards each")
		os.Exit(2)
	}
	if spec := os.Getenv(hostEnv); spec != "" {
		// SIGTERM is how the benchmark stops it: no error then.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := hostBoards(ctx, spec)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "lab board host:", err)
			os.Exit(1)
		}
		return
	}
	benchkit.Run("lab", func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		return run(ctx, o)
	})
}

// instance is one `boardlink serve` with its boards.
type instance struct {
	name   string
	ns     string    // its network namespace ("": loopback)
	boards int       // how many boards it runs
	log    string    // its service's log
	host   *exec.Cmd // the process of its boards
	hostIn io.WriteCloser
	lab    hostedLab
	serve  *exec.Cmd
	c      *service.Client
	url    string
}

// hostEnv, in a child's environment, makes this program a board host:
// the JSON of a hostSpec.
const hostEnv = "BOARDLINK_BENCH_LAB_HOST"

// hostSpec is what a board host runs.
type hostSpec struct {
	Boards          int
	Dir, Prefix, IP string
	TrustKey        ed25519.PublicKey
	Log             string // the boards' log (info and above)
}

// hostedLab is what a board host tells of its boards, one line of JSON
// on its standard output once they all run.
type hostedLab struct {
	Token  string
	Boards []hostedBoard
}

type hostedBoard struct{ ID, Addr string }

// hostBoards runs the boards of spec until ctx ends (SIGTERM) or its
// standard input closes (the benchmark is gone).
func hostBoards(ctx context.Context, spec string) error {
	var h hostSpec
	if err := json.Unmarshal([]byte(spec), &h); err != nil {
		return fmt.Errorf("%s: %w", hostEnv, err)
	}
	benchkit.RaiseFileLimit(fileLimit)
	logf, err := os.Create(h.Log)
	if err != nil {
		return err
	}
	defer logf.Close()
	lab, err := simlab.Start(ctx, simlab.Options{Boards: h.Boards, Dir: h.Dir, IDPrefix: h.Prefix, Host: h.IP,
		TrustKeys: []ed25519.PublicKey{h.TrustKey}, Logger: slog.New(slog.NewTextHandler(logf, nil))})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
		defer cancel()
		lab.Stop(sctx)
	}()
	out := hostedLab{Token: lab.Token()}
	for _, b := range lab.Boards {
		out.Boards = append(out.Boards, hostedBoard{ID: b.ID, Addr: b.Addr()})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return err
	}
	gone := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(gone) }()
	select {
	case <-ctx.Done():
	case <-gone:
	}
	return nil
}

// startHost starts the board host of instance in and reads its boards.
func (in *instance) startHost(ctx context.Context, spec hostSpec) error {
	raw, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	in.host = exec.Command(self)
	if in.ns != "" {
		in.host = netlab.Command(in.ns, self)
	}
	in.host.Env = append(os.Environ(), hostEnv+"="+string(raw))
	in.host.Stderr = os.Stderr
	// Kept open until this process ends: the host stops when it closes.
	if in.hostIn, err = in.host.StdinPipe(); err != nil {
		return err
	}
	stdout, err := in.host.StdoutPipe()
	if err != nil {
		return err
	}
	if err := in.host.Start(); err != nil {
		in.host = nil
		return err
	}
	if err := json.NewDecoder(stdout).Decode(&in.lab); err != nil {
		return fmt.Errorf("%s's board host: %w", in.name, err)
	}
	return nil
}

func run(ctx context.Context, o options) error {
	benchkit.RaiseFileLimit(fileLimit)
	dir, err := os.MkdirTemp("", "boardlink-bench-lab-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "boardlink")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/boardlink").CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/boardlink (run from the module root): %v\n%s", err, out)
	}
	pg, err := pgtest.Start(ctx, "shared_preload_libraries=pg_stat_statements")
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer pg.Stop()
	dsn, err := pg.CreateDatabase(ctx, "lab")
	if err != nil {
		return err
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, "CREATE EXTENSION pg_stat_statements"); err != nil {
		return fmt.Errorf("pg_stat_statements: %w", err)
	}
	pub, key, err := image.GenerateKey()
	if err != nil {
		return err
	}
	peer := filepath.Join(dir, "peer.token")
	if err := os.WriteFile(peer, []byte("bench-peer-token\n"), 0o600); err != nil {
		return err
	}

	var w *network
	if o.netns {
		if w, err = startNetwork(ctx, dir, o.instances); err != nil {
			return err
		}
		defer w.close() // once the processes in its namespaces are stopped, below
	}
	logs := dir
	if o.logs != "" {
		if err := os.MkdirAll(o.logs, 0o755); err != nil {
			return err
		}
		logs = o.logs
	}

	var (
		ins       []*instance
		rolloutAt time.Time // when the rollout was asked for
	)
	defer func() { reportLosses(ins, rolloutAt) }() // once the services are stopped, below
	defer func() {
		// Each board host's stop is bounded by stopTimeout of its own.
		for _, in := range ins {
			if in.serve != nil {
				in.serve.Process.Signal(syscall.SIGTERM)
				in.serve.Wait()
			}
		}
		for _, in := range ins {
			if in.host != nil {
				in.host.Process.Signal(syscall.SIGTERM)
				in.host.Wait()
			}
		}
	}()
	start := time.Now()
	for k := range o.instances {
		n := o.boards / o.instances
		if k < o.boards%o.instances {
			n++
		}
		in := &instance{name: fmt.Sprintf("s%d", k), boards: n, log: filepath.Join(logs, fmt.Sprintf("s%d.serve.log", k))}
		idir := filepath.Join(dir, in.name)
		fmt.Printf("starting %s: %d sim boards, then its service...\n", in.name, n)
		ins = append(ins, in)
		ip := fmt.Sprintf("127.0.%d.1", k+1)
		if w != nil {
			in.ns, ip = w.Spaces[k].Name, "127.0.0.1" // the namespace's own loopback
		}
		if err := in.startHost(ctx, hostSpec{Boards: n, Dir: filepath.Join(idir, "boards"), Prefix: in.name,
			IP: ip, TrustKey: pub, Log: filepath.Join(logs, in.name+".boards.log")}); err != nil {
			return err
		}
		if err := in.start(ctx, bin, idir, dsn, peer, o.heartbeat, w); err != nil {
			return err
		}
	}
	s0, s1 := ins[0], ins[1]

	// Online: s0 lists every board idle, each owned, and so does every
	// instance of its own boards. s0 alone once saw the last instance's
	// boards idle while that instance still brought them online, which
	// put their start-up writes in the idle window.
	said := time.Now()
	for {
		idle, err := idleBoards(ctx, s0.c, "")
		if err != nil {
			return err
		}
		settled := idle == o.boards
		for _, in := range ins[1:] {
			if !settled {
				break
			}
			own, err := idleBoards(ctx, in.c, in.name)
			if err != nil {
				return err
			}
			settled = own == in.boards
		}
		if settled {
			break
		}
		if time.Since(said) > 30*time.Second {
			said = time.Now()
			fmt.Printf("    %s %d of %d boards idle on s0\n", said.UTC().Format(time.TimeOnly), idle, o.boards)
		}
		if !benchkit.Sleep(ctx, 500*time.Millisecond) {
			return fmt.Errorf("waiting for %d boards idle on s0 (%d so far): %w", o.boards, idle, ctx.Err())
		}
	}
	where := "loopback"
	if w != nil {
		where = "a network namespace each on a bridge, measured from the hub's"
	}
	fmt.Printf("\n%d sim boards across %d `boardlink serve` instances on one PostgreSQL, %s, heartbeat %v\n\n",
		o.boards, o.instances, where, o.heartbeat)
	fmt.Printf("  all boards idle on s0 after start      %s (boards and services started one instance after the other)\n",
		benchkit.Seconds(time.Since(start)))

	// Each figure is printed once measured: a run that fails later keeps
	// the ones before.
	m := meter{db: db, pg: pg.Pid(), ins: ins}
	idle0, err := m.sample(ctx)
	if err != nil {
		return err
	}
	if !benchkit.Sleep(ctx, o.window) {
		return ctx.Err()
	}
	idle1, err := m.sample(ctx)
	if err != nil {
		return err
	}
	m.report("idle", idle0, idle1)
	idleRSS, hostsIdle := m.rss(), m.hostsRSS()

	own, ownExec, err := leaseTrips(ctx, s0.c, s0.lab, o.leases)
	if err != nil {
		return fmt.Errorf("leases on s0's own boards: %w", err)
	}
	fmt.Printf("  lease acquire+release, own (%d)       %s\n", o.leases, spread(own))
	fmt.Printf("  exec `true` under it, own              %s\n", spread(ownExec))
	other, otherExec, err := leaseTrips(ctx, s0.c, s1.lab, o.leases)
	if err != nil {
		return fmt.Errorf("leases through s0 on s1's boards: %w", err)
	}
	fmt.Printf("  lease acquire+release, s1's (%d)      %s\n", o.leases, spread(other))
	fmt.Printf("  exec `true` under it, s1's (forwarded) %s\n", spread(otherExec))

	dash, err := signIn(ctx, s0.url, w)
	if err != nil {
		return err
	}
	pages, err := dash.times(ctx, o.pages, "/", "/boards/"+s0.lab.Boards[0].ID, "/boards/"+s1.lab.Boards[0].ID)
	if err != nil {
		return err
	}
	for _, p := range pages {
		fmt.Printf("  dashboard GET %-24s median %s, max %s (%s)\n", p.path, benchkit.Seconds(benchkit.Median(p.times)),
			benchkit.Seconds(slices.Max(p.times)), benchkit.Human(p.bytes))
	}

	img := filepath.Join(dir, "image.blimg")
	if err := writeImage(img, key, o.size); err != nil {
		return err
	}
	ro0, err := m.sample(ctx)
	if err != nil {
		return err
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan pageTimes, 1)
	go func() { watched <- dash.watch(watchCtx) }()
	rolloutAt = time.Now()
	results, err := rollout(ctx, ins, img, o.conc)
	stopWatch()
	busy := <-watched
	if err != nil {
		return err
	}
	ro1, err := m.sample(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("  rollout of %d boards at -C %d         %s wall; %s\n", o.boards, o.conc, benchkit.Seconds(ro1.at.Sub(ro0.at)), results)
	m.report("rollout", ro0, ro1)
	if len(busy.times) > 0 {
		fmt.Printf("  dashboard GET / during the rollout (%d) median %s, max %s\n", len(busy.times),
			benchkit.Seconds(benchkit.Median(busy.times)), benchkit.Seconds(slices.Max(busy.times)))
	}
	endRSS := m.rss()
	fmt.Println()
	for i, in := range ins {
		fmt.Printf("  %s RSS: %s idle, %s after the rollout, %s peak\n", in.name, benchkit.MiB(idleRSS[i][0]<<10),
			benchkit.MiB(endRSS[i][0]<<10), benchkit.MiB(endRSS[i][1]<<10))
	}
	for i, in := range ins {
		fmt.Printf("  %s's boards' process RSS: %s idle, %s peak\n", in.name, benchkit.MiB(hostsIdle[i]<<10),
			benchkit.MiB(benchkit.MemKiB(in.host.Process.Pid, "VmHWM:")<<10))
	}
	return m.topStatements(ctx, 8)
}

// start writes the instance's config (its lab's boards as static entries,
// one user, the peer token) and starts its service: on 127.0.0.1, or with
// w on its namespace's address on the bridge, over TLS (the peers trust
// w's certificate).
func (in *instance) start(ctx context.Context, bin, dir, dsn, peer string, heartbeat time.Duration, w *network) error {
	tok := filepath.Join(dir, "board.token")
	if err := os.WriteFile(tok, []byte(in.lab.Token), 0o600); err != nil {
		return err
	}
	var b strings.Builder
	listen, tlsArgs, roots := "127.0.0.1:0", []string(nil), (*x509.CertPool)(nil)
	if w != nil {
		listen = net.JoinHostPort(w.addr(in.ns).String(), "7300")
		tlsArgs, roots = []string{"--tls-cert", w.cert, "--tls-key", w.key}, w.roots
		fmt.Fprintf(&b, "advertise: https://%s\npeer_ca_file: %q\n", listen, w.cert)
	}
	fmt.Fprintf(&b, "owner: %s\ntoken_file: %q\npeer_token_file: %q\nknown_boards: %q\nheartbeat: %s\nquarantine_after: -1\n"+
		"users:\n  - {name: bench, token_sha256: %s}\nboards:\n",
		in.name, tok, peer, filepath.Join(dir, "known_boards.json"), heartbeat, benchkit.SHA256Hex(userToken))
	for _, x := range in.lab.Boards {
		fmt.Fprintf(&b, "  - {id: %s, address: %q}\n", x.ID, x.Addr)
	}
	cfg := filepath.Join(dir, "serve.yaml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		return err
	}
	log, err := os.Create(in.log)
	if err != nil {
		return err
	}
	defer log.Close() // the service holds its own
	args := append([]string{"serve", "--config", cfg, "--listen", listen, "--db", dsn}, tlsArgs...)
	in.serve = exec.Command(bin, args...)
	if in.ns != "" {
		in.serve = netlab.Command(in.ns, bin, args...)
	}
	in.serve.Env = append(os.Environ(), "XDG_CONFIG_HOME="+dir, "XDG_STATE_HOME="+dir)
	in.serve.Stderr = log
	stdout, err := in.serve.StdoutPipe()
	if err != nil {
		return err
	}
	if err := in.serve.Start(); err != nil {
		in.serve = nil
		return err
	}
	if in.url, err = benchkit.ServeURL(stdout); err != nil {
		tail, _ := os.ReadFile(log.Name())
		return fmt.Errorf("%s: %w\n%s", in.name, err, tail)
	}
	go io.Copy(io.Discard, stdout)
	if in.c, err = service.NewClient(in.url, userToken, roots); err == nil && w != nil {
		in.c.DialWith(w.dial)
	}
	return err
}

// leaseTrips acquires each of n boards of lab's (in turn) through c and
// releases it: the round trips, and that of a command run under each.
// idleBoards counts the boards c lists idle and owned: by owner, or by
// anyone when owner is "".
func idleBoards(ctx context.Context, c *service.Client, owner string) (int, error) {
	bs, err := c.Boards(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, b := range bs {
		if b.State == service.Idle && b.Owner != "" && (owner == "" || b.Owner == owner) {
			n++
		}
	}
	return n, nil
}

func leaseTrips(ctx context.Context, c *service.Client, lab hostedLab, n int) (trips, execs []time.Duration, err error) {
	for i := range n {
		id := lab.Boards[i%len(lab.Boards)].ID
		t := time.Now()
		l, err := c.Acquire(ctx, service.AcquireRequest{Boards: []string{id}})
		if err != nil {
			return nil, nil, fmt.Errorf("acquire %s: %w", id, err)
		}
		if l.State != store.LeaseActive {
			return nil, nil, fmt.Errorf("acquire %s: %s, not granted at once", id, l.State)
		}
		held := time.Since(t)
		t = time.Now()
		res, err := c.Exec(ctx, id, l.ID, service.ExecRequest{Argv: []string{"true"}}, nil, nil)
		if err != nil || res.Result.ExitCode != 0 {
			return nil, nil, fmt.Errorf("exec on %s: %+v %v", id, res, err)
		}
		execs = append(execs, time.Since(t))
		t = time.Now()
		if _, err := c.Release(ctx, l.ID); err != nil {
			return nil, nil, fmt.Errorf("release: %w", err)
		}
		trips = append(trips, held+time.Since(t))
	}
	return trips, execs, nil
}

// spread is the median, p90 and max of ds.
func spread(ds []time.Duration) string {
	s := slices.Sorted(slices.Values(ds))
	return fmt.Sprintf("median %s, p90 %s, max %s", benchkit.Seconds(benchkit.Median(s)), benchkit.Seconds(s[len(s)*9/10]),
		benchkit.Seconds(s[len(s)-1]))
}

type pageTimes struct {
	path  string
	times []time.Duration
	bytes int64
}

// dashboard is a client of a service's dashboard, signed in.
type dashboard struct {
	base string
	hc   *http.Client
}

// signIn signs in on the dashboard at base (from w's hub, with w).
func signIn(ctx context.Context, base string, w *network) (*dashboard, error) {
	jar, _ := cookiejar.New(nil)
	d := &dashboard{base: base, hc: &http.Client{Jar: jar}}
	if w != nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: w.roots, MinVersion: tls.VersionTLS12}
		tr.DialContext = w.dial
		d.hc.Transport = tr
	}
	// The sign-in answers with a redirect to the boards page, which the
	// client follows with the cookie.
	if _, err := d.do(ctx, "POST", "/signin", strings.NewReader(url.Values{"token": {userToken}, "next": {"/"}}.Encode())); err != nil {
		return nil, fmt.Errorf("sign-in: %w", err)
	}
	return d, nil
}

// do asks for path and reads the answer, which must be 200: its size.
func (d *dashboard) do(ctx context.Context, method, path string, body io.Reader) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, method, d.base+path, body)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	size, err := io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("dashboard %s %s: %s", method, path, resp.Status)
	}
	return size, err
}

// times reads each page n times.
func (d *dashboard) times(ctx context.Context, n int, paths ...string) ([]pageTimes, error) {
	var out []pageTimes
	for _, p := range paths {
		pt := pageTimes{path: p}
		for range n {
			t := time.Now()
			size, err := d.do(ctx, "GET", p, nil)
			if err != nil {
				return nil, err
			}
			pt.times = append(pt.times, time.Since(t))
			pt.bytes = size
		}
		out = append(out, pt)
	}
	return out, nil
}

// watch reads the boards page every 2 seconds until ctx ends: how long
// it takes under load.
func (d *dashboard) watch(ctx context.Context) pageTimes {
	pt := pageTimes{path: "/"}
	for benchkit.Sleep(ctx, 2*time.Second) {
		t := time.Now()
		size, err := d.do(ctx, "GET", "/", nil)
		if err != nil {
			break
		}
		pt.times = append(pt.times, time.Since(t))
		pt.bytes = size
	}
	return pt
}

// writeImage writes an image of size random bytes for the sim boards,
// signed with key.
func writeImage(path string, key ed25519.PrivateKey, size int64) error {
	payload := make([]byte, size)
	rand.Read(payload)
	var buf bytes.Buffer
	if _, err := image.Build(&buf, bytes.NewReader(payload), size, image.BuildOptions{Key: key,
		Models: []string{simlab.DefaultModel}, Version: "2.0.0", ChunkSize: 16 << 10}); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o600)
}

// rollout rolls img out to every board through the first instance and
// waits until every share is over; it returns the boards' results.
func rollout(ctx context.Context, ins []*instance, img string, conc int) (string, error) {
	st, err := ins[0].c.StartRollout(ctx, img, service.RolloutRequest{Concurrency: conc, MaxFailures: -1})
	if err != nil {
		return "", fmt.Errorf("rollout: %w", err)
	}
	shares := map[string]string{ins[0].name: st.ID}
	for _, p := range st.Parts {
		if p.Error != "" {
			return "", fmt.Errorf("rollout: %s's share did not start: %s", p.Owner, p.Error)
		}
		shares[p.Owner] = p.Rollout
	}
	total := map[string]int{}
	for _, in := range ins {
		id, ok := shares[in.name]
		if !ok {
			return "", fmt.Errorf("rollout: no share on %s", in.name)
		}
		r := service.RolloutStatus{Rollout: store.Rollout{ID: id, State: store.StateRunning}}
		var said time.Time
		for r.State == store.StateRunning {
			if r, err = in.c.WaitRollout(ctx, id, r.Updated, 10*time.Second); err != nil {
				return "", fmt.Errorf("rollout %s on %s: %w", id, in.name, err)
			}
			if time.Since(said) > 15*time.Second || r.State != store.StateRunning {
				said = time.Now()
				fmt.Printf("    %s rollout, %s's share: %s %v\n", said.UTC().Format(time.TimeOnly), in.name, r.State, r.Summary)
			}
		}
		for k, v := range r.Summary {
			total[k] += v
		}
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(total)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, total[k]))
	}
	return strings.Join(parts, ", "), nil
}

// meter reads the figures compared between two samples.
type meter struct {
	db  *sql.DB
	pg  int
	ins []*instance
}

type sample struct {
	at              time.Time
	calls, xacts    int64
	serve           []int64 // each instance's CPU ticks
	postgres, bench int64
}

func (m meter) sample(ctx context.Context) (sample, error) {
	s := sample{at: time.Now()}
	err := m.db.QueryRowContext(ctx, `SELECT (SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements),
		(SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database())`).Scan(&s.calls, &s.xacts)
	if err != nil {
		return s, fmt.Errorf("postgres statistics: %w", err)
	}
	for _, in := range m.ins {
		t, err := benchkit.CPUTicks(in.serve.Process.Pid)
		if err != nil {
			return s, fmt.Errorf("%s: %w", in.name, err)
		}
		s.serve = append(s.serve, t)
	}
	for _, in := range m.ins {
		t, _ := benchkit.CPUTicks(in.host.Process.Pid)
		s.bench += t
	}
	s.postgres = treeTicks(m.pg)
	return s, nil
}

// treeTicks is the CPU ticks of the process pid and its children (what
// the ones that ended used is not counted).
func treeTicks(pid int) int64 {
	total, _ := benchkit.CPUTicks(pid)
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		child, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		raw, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "stat"))
		_, rest, _ := strings.Cut(string(raw), ") ")
		if f := strings.Fields(rest); len(f) > 1 && f[1] == strconv.Itoa(pid) {
			t, _ := benchkit.CPUTicks(child)
			total += t
		}
	}
	return total
}

func (m meter) report(what string, a, b sample) {
	sec := b.at.Sub(a.at).Seconds()
	share := func(t0, t1 int64) string { return fmt.Sprintf("%.0f%%", float64(t1-t0)/sec) } // 100 ticks a second
	fmt.Printf("  %-8s over %5.1fs: postgres %.0f statements/s, %.0f transactions/s, CPU %s;", what, sec,
		float64(b.calls-a.calls)/sec, float64(b.xacts-a.xacts)/sec, share(a.postgres, b.postgres))
	for i, in := range m.ins {
		fmt.Printf(" %s %s", in.name, share(a.serve[i], b.serve[i]))
	}
	fmt.Printf("; boards' processes %s (of one core)\n", share(a.bench, b.bench))
}

// topStatements prints the n statements Postgres ran most often over the
// whole run, from pg_stat_statements.
func (m meter) topStatements(ctx context.Context, n int) error {
	rows, err := m.db.QueryContext(ctx, `SELECT calls, total_exec_time, query FROM pg_stat_statements ORDER BY calls DESC LIMIT $1`, n)
	if err != nil {
		return fmt.Errorf("pg_stat_statements: %w", err)
	}
	defer rows.Close()
	fmt.Println("\n  statements run most often over the whole run (calls, total ms, statement):")
	for rows.Next() {
		var (
			calls int64
			ms    float64
			q     string
		)
		if err := rows.Scan(&calls, &ms, &q); err != nil {
			return err
		}
		q = strings.Join(strings.Fields(q), " ")
		if len(q) > 100 {
			q = q[:100] + "..."
		}
		fmt.Printf("  %9d %9.0f  %s\n", calls, ms, q)
	}
	return rows.Err()
}

// hostsRSS is the RSS of each instance's boards' process, in KiB.
func (m meter) hostsRSS() []int64 {
	var out []int64
	for _, in := range m.ins {
		out = append(out, benchkit.MemKiB(in.host.Process.Pid, "VmRSS:"))
	}
	return out
}

// rss is each instance's RSS and peak, in KiB.
func (m meter) rss() [][2]int64 {
	var out [][2]int64
	for _, in := range m.ins {
		pid := in.serve.Process.Pid
		out = append(out, [2]int64{benchkit.MemKiB(pid, "VmRSS:"), benchkit.MemKiB(pid, "VmHWM:")})
	}
	return out
}

// network is where the instances run without -loopback: a namespace each
// on a bridge, and the measures taken from the hub's.
type network struct {
	*netlab.Net
	dial      netlab.DialFunc // from the hub
	closeDial func() error
	// cert and key are the services' certificate, for their addresses on
	// the bridge; roots trusts it.
	cert, key string
	roots     *x509.CertPool
}

// startNetwork makes n namespaces s0, s1, ... on a bridge, named after
// this process, and the services' certificate in dir.
func startNetwork(ctx context.Context, dir string, n int) (*network, error) {
	names := make([]string, n)
	for k := range names {
		names[k] = fmt.Sprintf("s%d", k)
	}
	nl, err := netlab.New(ctx, "lab", names...)
	if err != nil {
		return nil, err
	}
	w := &network{Net: nl}
	var ips []net.IP
	for _, sp := range nl.Spaces {
		ips = append(ips, sp.Addr.AsSlice())
	}
	if w.cert, w.key, w.roots, err = netlab.SelfSigned(dir, ips...); err == nil {
		w.dial, w.closeDial, err = netlab.Dialer(nl.Hub)
	}
	if err != nil {
		nl.Close()
		return nil, err
	}
	return w, nil
}

// addr is namespace ns's address on the bridge.
func (w *network) addr(ns string) netip.Addr {
	for _, sp := range w.Spaces {
		if sp.Name == ns {
			return sp.Addr
		}
	}
	return netip.Addr{}
}

func (w *network) close() {
	w.closeDial()
	if err := w.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
	}
}

// lossLine is a service's log line of a lost board: its time, and its
// err attribute.
var (
	lossLine = regexp.MustCompile(`^time=(\S+) .*msg="board lost" .*err=("(?:[^"\\]|\\.)*"|\S+)`)
	address  = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+:\d+`)
)

// reportLosses prints each service's lost boards (its log's "board lost"
// lines: a failed heartbeat or a connection ended), by error, before the
// rollout and from its start (when each updated board reboots) on, its
// addresses made alike.
func reportLosses(ins []*instance, rolloutAt time.Time) {
	if len(ins) == 0 {
		return
	}
	fmt.Println("\n  boards lost by each service (\"board lost\" in its log), by error, before the rollout / from its start on:")
	for _, in := range ins {
		raw, err := os.ReadFile(in.log)
		if err != nil {
			fmt.Printf("  %s: %v\n", in.name, err)
			continue
		}
		byErr, total := map[string]*[2]int{}, [2]int{}
		for _, ln := range strings.Split(string(raw), "\n") {
			m := lossLine.FindStringSubmatch(ln)
			if m == nil {
				continue
			}
			e := m[2]
			if u, err := strconv.Unquote(e); err == nil {
				e = u
			}
			e = address.ReplaceAllString(e, "ADDR")
			if byErr[e] == nil {
				byErr[e] = &[2]int{}
			}
			at, err := time.Parse(time.RFC3339Nano, m[1])
			k := 0
			if err == nil && !rolloutAt.IsZero() && !at.Before(rolloutAt) {
				k = 1
			}
			byErr[e][k]++
			total[k]++
		}
		fmt.Printf("  %s: %d / %d\n", in.name, total[0], total[1])
		for _, e := range slices.SortedFunc(maps.Keys(byErr), func(a, b string) int {
			return cmp.Or(byErr[b][0]+byErr[b][1]-byErr[a][0]-byErr[a][1], strings.Compare(a, b))
		}) {
			fmt.Printf("  %9d / %d  %s\n", byErr[e][0], byErr[e][1], e)
		}
	}
}
