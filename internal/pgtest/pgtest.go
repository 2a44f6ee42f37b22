// Package pgtest gives tests a private PostgreSQL: one cluster per test
// binary, started on first use from Debian's postgresql package
// (/usr/lib/postgresql/VERSION/bin), its data in a temporary directory and
// listening only on a unix socket there (an empty listen_addresses), and a fresh
// database for each test. Without postgresql a test skips loudly, or fails
// under BOARDLINK_E2E=1.
//
// A package that uses it runs its tests through Main, which stops the
// cluster and removes its directory after them:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// Should the test binary die first, the postmaster gets SIGQUIT from the
// kernel (the parent-death signal) and stops at once. That signal is the
// starting thread's, so the postmaster is started from a thread held for
// its life: no other goroutine's end can end that thread.
package pgtest

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/internal/testenv"
)

// startTimeout bounds the cluster's start (initdb, then the postmaster up):
// a failure bound, not a wait.
const startTimeout = 2 * time.Minute

// superuser is the cluster's superuser; the socket trusts local users.
const superuser = "postgres"

type cluster struct {
	dir    string // the temporary directory: data/ and the socket
	cmd    *exec.Cmd
	exited chan struct{}
	// starter is the thread that started the postmaster (and waits for
	// it): when it ends, the postmaster gets its parent-death signal.
	starter int
	log     *tail
	admin   *sql.DB // the "postgres" database, to create the tests' own
}

var (
	mu      sync.Mutex
	running *cluster
	failure error // why the cluster could not start; it is not tried again
	seq     atomic.Int64
)

// New returns the connection URL (postgres://...) of a new, empty database
// in the test binary's cluster, starting the cluster if need be. The
// database is dropped when t ends.
func New(t testing.TB) string {
	t.Helper()
	c, err := get()
	if err != nil {
		testenv.SkipOrFail(t, "no PostgreSQL for this test (apt-get install postgresql): %v", err)
	}
	name := fmt.Sprintf("test_%d", seq.Add(1))
	ctx := context.Background()
	dsn, err := c.create(ctx, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		// FORCE: a store the test did not close must not keep it.
		if _, err := c.admin.ExecContext(ctx, `DROP DATABASE `+name+` WITH (FORCE)`); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return dsn
}

// create creates database name and returns its URL.
func (c *cluster) create(ctx context.Context, name string) (string, error) {
	if _, err := c.admin.ExecContext(ctx, `CREATE DATABASE `+name); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return c.url(name), nil
}

// Cluster is a private cluster for a program rather than a test (a
// benchmark under bench/), as tests get theirs: Start starts it, Stop
// stops it and removes its directory.
type Cluster struct{ c *cluster }

// Start starts a private cluster. settings are server settings as
// name=value (postgres -c), given after pgtest's own, which they override.
func Start(ctx context.Context, settings ...string) (*Cluster, error) {
	c, err := start(ctx, settings)
	if err != nil {
		return nil, err
	}
	return &Cluster{c}, nil
}

// CreateDatabase creates database name and returns its URL (over the
// socket, as the superuser).
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (string, error) {
	return c.c.create(ctx, name)
}

// Pid is the postmaster's process id: its children are the server's
// other processes, one per connection among them.
func (c *Cluster) Pid() int { return c.c.cmd.Process.Pid }

// Stop stops the cluster and removes its directory.
func (c *Cluster) Stop() error { return c.c.stop() }

// Main runs the tests, then stops the cluster if one was started, and
// returns the tests' exit code (1 if the cluster would not stop cleanly).
func Main(m *testing.M) int {
	code := m.Run()
	mu.Lock()
	defer mu.Unlock()
	if running != nil {
		if err := running.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
			code = max(code, 1)
		}
		running = nil
	}
	return code
}

func get() (*cluster, error) {
	mu.Lock()
	defer mu.Unlock()
	if running == nil && failure == nil {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		running, failure = start(ctx, nil)
	}
	return running, failure
}

// url is the URL of database name, over the socket, as the superuser.
func (c *cluster) url(name string) string {
	q := url.Values{"host": {c.dir}, "user": {superuser}, "sslmode": {"disable"}}
	return "postgres:///" + name + "?" + q.Encode()
}

// binDir is the newest installed PostgreSQL's bin directory.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	var found []string
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			found = append(found, d)
		}
	}
	if len(found) == 0 {
		return "", errors.New("no /usr/lib/postgresql/*/bin/initdb")
	}
	version := func(d string) int {
		n, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		return n
	}
	slices.SortFunc(found, func(a, b string) int { return version(a) - version(b) })
	return found[len(found)-1], nil
}

// start makes and starts a cluster with settings (name=value) on top of
// its own. initdb and postgres refuse to run as root, so as root they run
// as nobody, who owns the directory.
func start(ctx context.Context, settings []string) (_ *cluster, err error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "boardlink-pgtest-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			return nil, fmt.Errorf("running as root, and no user nobody to run postgres as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", superuser,
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
	initdb.Dir = dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	// Durability is not tested here, speed is wanted: no fsync.
	args := []string{"-D", data, "-k", dir, "-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=200"}
	for _, s := range settings {
		args = append(args, "-c", s)
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}
	// The log is read from a pipe of our own, not StderrPipe, whose reads
	// must end before Wait: it is read until the server's last process
	// closes it.
	logr, logw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logw
	c := &cluster{dir: dir, cmd: cmd, exited: make(chan struct{}), log: &tail{}}
	started := make(chan error, 1)
	go func() {
		// The parent-death signal is sent when the thread that started
		// the postmaster ends, not the process (golang/go#27505), and Go
		// ends a thread whose goroutine exits locked to it (as
		// netlab.Dialer's did, on whatever thread it ran): the postmaster
		// would get SIGQUIT mid-test, and its socket go. Holding this
		// thread for the postmaster's life keeps every other goroutine
		// off it.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		c.starter = unix.Gettid()
		err := cmd.Start()
		started <- err
		if err == nil {
			cmd.Wait()
			close(c.exited)
		}
	}()
	err = <-started
	logw.Close()
	if err != nil {
		logr.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	ready := make(chan struct{})
	go c.log.read(logr, "ready to accept connections", ready)
	select {
	case <-ready:
	case <-c.exited:
		return nil, fmt.Errorf("postgres exited at start: %v\n%s", cmd.ProcessState, c.log)
	case <-ctx.Done():
		c.stop()
		return nil, fmt.Errorf("postgres not ready: %w\n%s", ctx.Err(), c.log)
	}
	if c.admin, err = sql.Open("pgx", c.url("postgres")); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// stop shuts the cluster down (fast mode: sessions are ended) and removes
// its directory.
func (c *cluster) stop() error {
	if c.admin != nil {
		c.admin.Close()
	}
	c.cmd.Process.Signal(syscall.SIGINT)
	var err error
	select {
	case <-c.exited:
	case <-time.After(startTimeout):
		c.cmd.Process.Kill()
		<-c.exited
		err = fmt.Errorf("postgres did not stop on SIGINT; killed\n%s", c.log)
	}
	return errors.Join(err, os.RemoveAll(c.dir))
}

// tail keeps the last lines of the server's log, for errors.
type tail struct {
	mu    sync.Mutex
	lines []string
}

// read reads the log r, closing ready at the first line that contains
// mark.
func (t *tail) read(r *os.File, mark string, ready chan struct{}) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		t.mu.Lock()
		t.lines = append(t.lines, line)
		if len(t.lines) > 50 {
			t.lines = t.lines[1:]
		}
		t.mu.Unlock()
		if ready != nil && strings.Contains(line, mark) {
			close(ready)
			ready = nil
		}
	}
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}
