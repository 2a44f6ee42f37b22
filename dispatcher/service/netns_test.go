package service

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/pgtest"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
)

// helperSimlab is the test binary run as a lab of sim boards inside a
// network namespace: BOARDLINK_SIMLAB_DIR holds the boards, their token
// (board-token) and the config lines of their static entries
// (boards.yaml); BOARDLINK_SIMLAB_PREFIX names them. It says "ready" on
// stdout, and stops the lab when stdin closes.
func helperSimlab() int {
	dir, prefix := os.Getenv("BOARDLINK_SIMLAB_DIR"), os.Getenv("BOARDLINK_SIMLAB_PREFIX")
	ctx := context.Background()
	sim, err := simlab.Start(ctx, simlab.Options{Boards: 2, Dir: filepath.Join(dir, "boards"), IDPrefix: prefix})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 3
	}
	var lines strings.Builder
	for _, b := range sim.Boards {
		fmt.Fprintf(&lines, "  - {id: %s, address: %q}\n", b.ID, b.Addr())
	}
	err = os.WriteFile(filepath.Join(dir, "board-token"), []byte(sim.Token()+"\n"), 0o600)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "boards.yaml"), []byte(lines.String()), 0o600)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 3
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	stop, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := sim.Stop(stop); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 4
	}
	return 0
}

// labNetns is two network namespaces, A and B, each with a veth into a
// bridge in a third: 10.77.1.1 and 10.77.1.2 on 10.77.0.0/16. Nothing
// else of the host is touched.
type labNetns struct {
	a, b string
}

func makeLabNetns(t *testing.T) labNetns {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.SkipOrFail(t, "no ip(8) for network namespaces: %v", err)
	}
	tag := fmt.Sprintf("bl%d", os.Getpid()%100000)
	n := labNetns{a: tag + "a", b: tag + "b"}
	br := tag + "br"
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{br, n.a, n.b} {
		ip("netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	ip("-n", br, "link", "add", "br0", "type", "bridge")
	ip("-n", br, "link", "set", "br0", "up")
	for i, ns := range []string{n.a, n.b} {
		ip("-n", br, "link", "add", "v0", "type", "veth", "peer", "name", fmt.Sprintf("v%d-br", i))
		ip("-n", br, "link", "set", "v0", "netns", ns)
		ip("-n", br, "link", "set", fmt.Sprintf("v%d-br", i), "master", "br0", "up")
		ip("-n", ns, "addr", "add", fmt.Sprintf("10.77.1.%d/16", i+1), "dev", "v0")
		ip("-n", ns, "link", "set", "v0", "up")
		ip("-n", ns, "link", "set", "lo", "up")
	}
	return n
}

// inNetns makes c's connections from network namespace ns: each dial
// runs on an OS thread of its own moved there, which ends with it.
func inNetns(t *testing.T, c *Client, ns string) {
	t.Helper()
	f, err := os.Open(filepath.Join("/var/run/netns", ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	tr := c.http.Transport.(*http.Transport)
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		type dialed struct {
			c   net.Conn
			err error
		}
		ch := make(chan dialed, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				ch <- dialed{nil, fmt.Errorf("setns %s: %w", ns, err)}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- dialed{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// TestServicesInNetns: two `boardlink serve` processes, A and B, in two
// network namespaces joined by a bridge, each with sim boards only it
// reaches (on its namespace's loopback), on one Postgres (its unix
// socket, which namespaces do not block). A lists B's boards; a lease
// taken through A on a board of B's runs a command forwarded over the
// bridge with TLS; B killed with SIGKILL has its boards reported offline
// by A with B named once its claims expire; B restarted takes them back.
func TestServicesInNetns(t *testing.T) {
	nsets := makeLabNetns(t)
	dsn := pgtest.New(t)
	cli := testenv.GoBuild(t, "../../cmd/boardlink")
	ctx := context.Background()
	dir := t.TempDir()
	certFile, keyFile, roots := selfSigned(t, dir, net.IPv4(10, 77, 1, 1), net.IPv4(10, 77, 1, 2))
	peer := filepath.Join(dir, "peer.token")
	writeSecret(t, peer, "peer-secret")
	alice := "token-of-alice"

	type side struct {
		name, ns, url, cfg string
		boards             []string
		client             *Client
		serve              *exec.Cmd
		stderr             *testenv.Buffer
	}
	sides := []*side{{name: "A", ns: nsets.a, url: "https://10.77.1.1:7300"}, {name: "B", ns: nsets.b, url: "https://10.77.1.2:7300"}}
	for _, sd := range sides {
		sdir := filepath.Join(dir, sd.name)
		if err := os.MkdirAll(sdir, 0o700); err != nil {
			t.Fatal(err)
		}
		sim := exec.Command("ip", "netns", "exec", sd.ns, os.Args[0], "-test.run=^$")
		sim.Env = append(os.Environ(), helperEnv+"=simlab", "BOARDLINK_SIMLAB_DIR="+sdir, "BOARDLINK_SIMLAB_PREFIX="+strings.ToLower(sd.name))
		sim.Stderr = os.Stderr
		stdin, err := sim.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := sim.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := sim.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stdin.Close(); sim.Wait() })
		if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
			t.Fatalf("sim lab in %s: %q %v", sd.ns, line, err)
		}
		boards, err := os.ReadFile(filepath.Join(sdir, "boards.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, ln := range strings.Split(strings.TrimSpace(string(boards)), "\n") {
			id, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(ln), "- {id: "), ",")
			sd.boards = append(sd.boards, id)
		}
		sd.cfg = filepath.Join(sdir, "serve.yaml")
		writeSecret(t, sd.cfg, fmt.Sprintf("token_file: %s\nheartbeat: 200ms\nclaim_ttl: 3s\nowner: %s\nadvertise: %s\n"+
			"peer_token_file: %s\npeer_ca_file: %s\nknown_boards: %s\nusers:\n  - {name: alice, token_sha256: %x}\nboards:\n%s",
			filepath.Join(sdir, "board-token"), sd.name, sd.url, peer, certFile, filepath.Join(sdir, "known_boards.json"),
			sha256.Sum256([]byte(alice)), boards))
		c, err := NewClient(sd.url, alice, roots)
		if err != nil {
			t.Fatal(err)
		}
		inNetns(t, c, sd.ns)
		sd.client = c
	}
	start := func(sd *side) {
		t.Helper()
		host := strings.TrimPrefix(sd.url, "https://")
		cmd := exec.Command("ip", "netns", "exec", sd.ns, cli, "serve", "--config", sd.cfg, "--listen", host,
			"--db", dsn, "--tls-cert", certFile, "--tls-key", keyFile)
		cmd.Env = append(os.Environ(), "XDG_STATE_HOME="+filepath.Join(dir, sd.name), "XDG_CONFIG_HOME="+filepath.Join(dir, sd.name))
		sd.serve, _, sd.stderr = startServe(t, cmd)
	}
	a, b := sides[0], sides[1]
	start(a)
	start(b)
	onB := b.boards[0]
	boardOnA := func(what string, ok func(Board) bool) Board {
		t.Helper()
		var v Board
		testenv.Eventually(t, what, func() bool {
			var err error
			v, err = a.client.Board(ctx, onB)
			return err == nil && ok(v)
		})
		return v
	}
	boardOnA("B's board idle on A, owned by B", func(v Board) bool { return v.State == Idle && v.Owner == "B" })
	if v, err := a.client.Board(ctx, a.boards[0]); err != nil || v.Owner != "A" {
		t.Fatalf("A's board: %+v %v", v, err)
	}

	held, err := acquire(ctx, a.client, AcquireRequest{Boards: []string{onB}})
	if err != nil || held.State != store.LeaseActive {
		t.Fatalf("%+v %v", held, err)
	}
	var out strings.Builder
	res, err := a.client.Exec(ctx, onB, held.ID, ExecRequest{Argv: []string{"echo", "hello from B's namespace"}}, &out, nil)
	if err != nil || res.Result.ExitCode != 0 || out.String() != "hello from B's namespace\n" {
		t.Fatalf("exec through A: %+v %q %v\nA: %s\nB: %s", res, out.String(), err, a.stderr, b.stderr)
	}
	if _, err := a.client.Release(ctx, held.ID); err != nil {
		t.Fatal(err)
	}

	if err := b.serve.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	b.serve.Wait()
	v := boardOnA("B's board offline on A once B's claims expire", func(v Board) bool { return v.State == Offline && !v.OwnerGone.IsZero() })
	if v.Owner != "B" || !strings.Contains(v.Reason, "its owner B vanished") {
		t.Fatalf("%+v", v)
	}
	start(b)
	boardOnA("B's board back, owned by B", func(v Board) bool { return v.State == Idle && v.Owner == "B" && v.OwnerGone.IsZero() })
}
