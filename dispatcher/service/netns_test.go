package service

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/netlab"
	"github.com/boardlink/boardlink/internal/pgtest"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// helperSimlab is the test binary run as a lab of sim boards inside a
// network namespace: BOARDLINK_SIMLAB_DIR holds the boards, their token
// (board-token) and the config lines of their static entries
// (boards.yaml); BOARDLINK_SIMLAB_PREFIX names them; they take images
// signed by the ed25519 key BOARDLINK_SIMLAB_KEY (hex). It says "ready"
// on stdout, and stops the lab when stdin closes. With
// BOARDLINK_SIMLAB_HOLD (a FIFO), the first update to reach prepare says
// "held BOARD" on stdout and waits until a writer of the FIFO closes it;
// the others pass.
func helperSimlab() int {
	dir, prefix := os.Getenv("BOARDLINK_SIMLAB_DIR"), os.Getenv("BOARDLINK_SIMLAB_PREFIX")
	ctx := context.Background()
	pub, err := hex.DecodeString(os.Getenv("BOARDLINK_SIMLAB_KEY"))
	if err != nil || len(pub) != ed25519.PublicKeySize {
		fmt.Fprintln(os.Stderr, "helper: BOARDLINK_SIMLAB_KEY:", err)
		return 3
	}
	var (
		mu   sync.Mutex
		held bool
	)
	hold := func(board, _ string, phase proto.Phase) {
		fifo := os.Getenv("BOARDLINK_SIMLAB_HOLD")
		mu.Lock()
		pass := held || fifo == "" || phase != proto.PhasePrepare
		held = held || !pass
		mu.Unlock()
		if !pass {
			fmt.Println("held", board)
			os.ReadFile(fifo) // until the writer closes it
		}
	}
	sim, err := simlab.Start(ctx, simlab.Options{Boards: 2, Dir: filepath.Join(dir, "boards"), IDPrefix: prefix,
		TrustKeys: []ed25519.PublicKey{pub}, OnPhase: hold})
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
	n, err := netlab.New(context.Background(), "svc", "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return labNetns{a: n.Spaces[0].Name, b: n.Spaces[1].Name}
}

// inNetns makes c's connections from network namespace ns.
func inNetns(t *testing.T, c *Client, ns string) {
	t.Helper()
	dial, closeNS, err := netlab.Dialer(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeNS() })
	c.DialWith(dial)
}

// TestServicesInNetns: two `boardlink serve` processes, A and B, in two
// network namespaces joined by a bridge, each with sim boards only it
// reaches (on its namespace's loopback), on one Postgres (its unix
// socket, which namespaces do not block). A lists B's boards; a lease
// taken through A on a board of B's runs a command forwarded over the
// bridge with TLS. One rollout through A to all four boards: A runs its
// share and starts B's on B; B is killed with SIGKILL while one of its
// boards is held in prepare: A reports B's boards offline with B named
// once its claims expire, A's share goes on to its end, and B restarted
// takes its boards back and resumes its share to the end.
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
	pub, key, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "hold")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}

	type side struct {
		name, ns, url, cfg string
		boards             []string
		client             *Client
		simOut             *bufio.Reader
		serve              *exec.Cmd
		stderr             *testenv.Buffer
	}
	sides := []*side{{name: "A", ns: nsets.a, url: "https://10.77.1.1:7300"}, {name: "B", ns: nsets.b, url: "https://10.77.1.2:7300"}}
	for _, sd := range sides {
		sdir := filepath.Join(dir, sd.name)
		if err := os.MkdirAll(sdir, 0o700); err != nil {
			t.Fatal(err)
		}
		sim := netlab.Command(sd.ns, os.Args[0], "-test.run=^$")
		sim.Env = append(os.Environ(), helperEnv+"=simlab", "BOARDLINK_SIMLAB_DIR="+sdir, "BOARDLINK_SIMLAB_PREFIX="+strings.ToLower(sd.name),
			"BOARDLINK_SIMLAB_KEY="+hex.EncodeToString(pub))
		if sd.name == "B" {
			sim.Env = append(sim.Env, "BOARDLINK_SIMLAB_HOLD="+fifo)
		}
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
		sd.simOut = bufio.NewReader(stdout)
		if line, err := sd.simOut.ReadString('\n'); err != nil || line != "ready\n" {
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
		cmd := netlab.Command(sd.ns, cli, "serve", "--config", sd.cfg, "--listen", host,
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

	img := (&otaLab{lab: &lab{t: t, dir: dir}, key: key}).image("2.0.0")
	st, err := a.client.StartRollout(ctx, img, RolloutRequest{MaxFailures: -1})
	if err != nil || st.Boards != 2 || len(st.Parts) != 1 || st.Parts[0].Owner != "B" || st.Parts[0].Error != "" {
		t.Fatalf("%+v %v", st, err)
	}
	part := st.Parts[0].Rollout
	// B's share is under way: one of its boards holds in prepare.
	if line, err := b.simOut.ReadString('\n'); err != nil || !strings.HasPrefix(line, "held b-") {
		t.Fatalf("B's sim lab: %q %v", line, err)
	}
	if err := b.serve.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	b.serve.Wait()
	release, err := os.OpenFile(fifo, os.O_WRONLY, 0) // waits for the held board's reader
	if err != nil {
		t.Fatal(err)
	}
	release.Close()
	v := boardOnA("B's board offline on A once B's claims expire", func(v Board) bool { return v.State == Offline && !v.OwnerGone.IsZero() })
	if v.Owner != "B" || !strings.Contains(v.Reason, "its owner B vanished") {
		t.Fatalf("%+v", v)
	}
	committed := func(r RolloutStatus) {
		t.Helper()
		if r.State != store.StateDone || len(r.BoardResults) != 2 {
			t.Fatalf("%+v", r)
		}
		for id, res := range resultsOf(r) {
			if res != store.ResultCommitted {
				t.Fatalf("%s: %s (%+v)", id, res, r)
			}
		}
	}
	// A's share goes on without B; the rollout reads running while B's
	// part does.
	for st.Summary[store.ResultCommitted] < 2 {
		if st, err = a.client.WaitRollout(ctx, st.ID, st.Updated, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if st.State != store.StateRunning {
		t.Fatalf("the rollout while B's part is away: %+v", st)
	}
	if r, err := a.client.Rollout(ctx, part); err != nil || r.State != store.StateRunning {
		t.Fatalf("B's share while B is away: %+v %v", r, err)
	}

	start(b)
	boardOnA("B's board back, owned by B", func(v Board) bool { return v.Owner == "B" && v.OwnerGone.IsZero() && v.State != Offline })
	committed(waitRollout(t, b.client, RolloutStatus{Rollout: store.Rollout{ID: part, State: store.StateRunning}}))
	committed(waitRollout(t, a.client, st)) // done with its part
	boardOnA("B's board idle after its update", func(v Board) bool { return v.State == Idle })
}
