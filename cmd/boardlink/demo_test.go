package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
)

// TestDemo runs `boardlink demo` where lo can multicast (a private network
// namespace), so the demo runs its lab directly, with mDNS pinned to lo.
//
// A bystander board of the same model announces itself there too, with
// a token the demo does not have: the demo leaves it alone.
func TestDemo(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	bystander, err := simlab.Start(context.Background(), simlab.Options{Boards: 1, Dir: t.TempDir(), IDPrefix: "bystander",
		Model: "sim", Ifaces: []string{"lo"}})
	if err != nil {
		t.Fatal(err)
	}
	defer bystander.Stop(context.Background())
	start := time.Now()
	stdout, stderr, code := cli(t, "", "demo")
	t.Logf("demo took %s", time.Since(start).Round(100*time.Millisecond))
	if code != 0 {
		t.Fatalf("demo failed (%d): %s\n%s", code, stderr, stdout)
	}
	checkDemo(t, stdout, stderr)
	if strings.Contains(stdout, "mDNS skipped") {
		t.Errorf("the demo skipped mDNS where lo can multicast:\n%s", stdout)
	}
	// The boards were found by mDNS: ls listed all five.
	ls := section(stdout, "$ boardlink ls --iface lo")
	if n := len(regexp.MustCompile(`(?m)^lab-00[0-4]\s+sim\s`).FindAllString(ls, -1)); n != 5 {
		t.Errorf("ls listed %d boards, want 5:\n%s", n, ls)
	}
	if !strings.Contains(stdout, "$ boardlink exec --iface lo lab-002 -- uname -sm") {
		t.Errorf("exec did not name the boards by id:\n%s", stdout)
	}
	if rollout := section(stdout, "$ boardlink rollout"); strings.Contains(rollout, "bystander") {
		t.Errorf("the demo's rollout touched the bystander board:\n%s", rollout)
	}
}

// TestDemoNoMDNS: with --no-mdns the demo runs anywhere (no namespace),
// and gives the boards by address.
func TestDemoNoMDNS(t *testing.T) {
	stdout, stderr, code := cli(t, "", "demo", "--no-mdns")
	if code != 0 {
		t.Fatalf("demo --no-mdns failed (%d): %s\n%s", code, stderr, stdout)
	}
	checkDemo(t, stdout, stderr)
	for _, want := range []string{"mDNS skipped: --no-mdns", "--inventory", "$ boardlink exec wss://127.0.0.1:"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("demo --no-mdns output lacks %q:\n%s", want, stdout)
		}
	}
}

// checkDemo checks what every demo run shows: the rollout's summary (4
// committed, the failing board rolled back by its health check), the
// failing board's status, and the end.
func checkDemo(t *testing.T, stdout, stderr string) {
	t.Helper()
	for _, want := range []string{
		"fails on purpose",
		"Linux",
		"4 committed, 1 rolled_back",
		"exit status 1, as expected: lab-003",
		"reason: ",
		"demo finished",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("demo output lacks %q:\n%s\nstderr:\n%s", want, stdout, stderr)
		}
	}
	// The summary table: the failing board rolled back, for its health check.
	if !regexp.MustCompile(`(?m)^lab-003\s+rolled_back\s.*health check`).MatchString(stdout) {
		t.Errorf("the summary lacks lab-003 rolled back by its health check:\n%s", stdout)
	}
	if n := len(regexp.MustCompile(`(?m)^lab-00[0-4]\s+committed\s`).FindAllString(stdout, -1)); n != 4 {
		t.Errorf("the summary shows %d boards committed, want 4:\n%s", n, stdout)
	}
	if !strings.Contains(section(stdout, "$ boardlink ota "+"lab-003"), "rolled back") &&
		!regexp.MustCompile(`(?s)ota wss://\S+ --status.*rolled back`).MatchString(stdout) {
		t.Errorf("the failing board's status does not say it rolled back:\n%s", stdout)
	}
}

// section is the part of out from the line beginning with cmd to the next
// step.
func section(out, cmd string) string {
	_, rest, ok := strings.Cut(out, cmd)
	if !ok {
		return ""
	}
	if i := strings.Index(rest, "\n["); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// testToken is the token of the tests' boards; TestMain hands it to the
// CLI as BOARDLINK_TOKEN.
const testToken = "cmd-boardlink-test-token"

// TestMain keeps the CLI's files (known boards, the host key, the id
// cache, the rollouts' database) in a directory of the test run, never
// the user's, and gives the CLI the test boards' token.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "boardlink-cli-test-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	os.Setenv("XDG_CACHE_HOME", filepath.Join(dir, "cache"))
	os.Setenv("XDG_STATE_HOME", filepath.Join(dir, "state"))
	os.Setenv("BOARDLINK_TOKEN", testToken)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testDialOptions are what a test's own client of the test boards uses.
func testDialOptions() dispatcher.DialOptions {
	return dispatcher.DialOptions{Token: testToken, Trust: dispatcher.NewKnownBoards("")}
}

// demoBoard is one simulated board's agent in this process, on loopback
// (a WebSocket on 127.0.0.1 and a serial-framed link on a unix socket):
// what the tests of the verbs drive.
type demoBoard struct {
	agent  *agent.Agent
	dir    string
	files  string // the agent's file root
	execs  *agent.Execs
	ws     *agent.WebSocketServer
	serial *agent.SerialServer
	sock   string
}

func startDemoBoard(ctx context.Context) (*demoBoard, error) {
	dir, err := os.MkdirTemp("", "boardlink-test-")
	if err != nil {
		return nil, err
	}
	d := &demoBoard{dir: dir, sock: dir + "/serial.sock", files: dir + "/files"}
	if err := os.Mkdir(d.files, 0o755); err != nil {
		d.stop()
		return nil, err
	}
	b, err := sim.Open(dir+"/state", sim.Options{ID: "demo-board", Model: "sim", Labels: map[string]string{"lab": "demo"}})
	if err != nil {
		d.stop()
		return nil, err
	}
	d.execs = agent.NewExecs(agent.ExecOptions{LogPath: dir + "/state/exec-log.json"})
	key, _, err := auth.LoadOrCreateKey(dir + "/state/auth/key.pem")
	if err != nil {
		d.stop()
		return nil, err
	}
	a := agent.New(b, d.execs, agent.Config{Roots: []string{d.files}, CacheDir: dir + "/state/cache",
		Auth: agent.AuthConfig{Key: key, Tokens: []agent.Token{{Name: "test", Value: testToken}}}})
	d.agent = a
	d.ws = agent.NewWebSocketServer(a, "127.0.0.1:0")
	if err := d.ws.Start(ctx); err != nil {
		d.stop()
		return nil, err
	}
	d.serial = agent.NewUnixSerialServer(a, d.sock)
	if err := d.serial.Start(ctx); err != nil {
		d.stop()
		return nil, err
	}
	return d, nil
}

func (d *demoBoard) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if d.serial != nil {
		_ = d.serial.Stop(ctx)
	}
	if d.ws != nil {
		_ = d.ws.Stop(ctx)
	}
	if d.execs != nil {
		_ = d.execs.Shutdown(ctx)
	}
	os.RemoveAll(d.dir)
}

// TestDemoInterrupted: Ctrl-C during the demo's rollout stops it at once
// with 130 and one line, the lab stopped: no board's log is dumped as if
// it had failed.
func TestDemoInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	var stdout, stderr testenv.Buffer
	go func() {
		for !strings.Contains(stdout.String(), "$ boardlink rollout") {
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
		cancel(&signalError{os.Interrupt})
	}()
	err := run(ctx, []string{"--known-boards", knownBoards(t), "demo", "--no-mdns"}, &stdout, &stderr)
	var msg strings.Builder
	code := exitStatus(err, &msg)
	out := stdout.String() + stderr.String() + msg.String()
	if code != 130 || !strings.Contains(msg.String(), "demo interrupted; the lab is stopped and its files removed") {
		t.Fatalf("demo after Ctrl-C: exit %d\n%s", code, out)
	}
	if strings.Contains(out, " failed in ") || strings.Contains(out, "rolled_back") {
		t.Fatalf("after Ctrl-C the demo reported boards as failing:\n%s", out)
	}
}
