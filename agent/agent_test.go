package agent_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// harness is one in-process agent on a sim board, reachable over the
// transports the tests name.
type harness struct {
	agent *agent.Agent
	execs *agent.Execs
	ws    *agent.WebSocketServer
	token string
	root  string // the agent's one file root
	board *sim.Board
	known *dispatcher.KnownBoards
}

// newHarness starts an agent that accepts token ("": one made up), on a
// board with a key of its own, as boardlinkd does.
func newHarness(t testing.TB, token string) *harness {
	t.Helper()
	return newHarnessConfig(t, token, agent.Config{})
}

// newHarnessConfig is newHarness with cfg's other settings.
func newHarnessConfig(t testing.TB, token string, cfg agent.Config) *harness {
	t.Helper()
	b, err := sim.Open(t.TempDir(), sim.Options{ID: "test-board", Model: "sim", Labels: map[string]string{"rack": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	m := agent.NewExecs(agent.ExecOptions{LogSize: 50, DefaultGrace: 500 * time.Millisecond})
	root := t.TempDir()
	if token == "" {
		token = "harness-token-" + t.Name()
	}
	if cfg.Auth.Key == nil {
		_, cfg.Auth.Key, _ = ed25519.GenerateKey(nil)
	}
	cfg.Auth.Tokens = append(cfg.Auth.Tokens, agent.Token{Name: "test", Value: token})
	cfg.Roots = []string{root}
	a := agent.New(b, m, cfg)
	ws := agent.NewWebSocketServer(a, "127.0.0.1:0")
	if err := ws.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h := &harness{agent: a, execs: m, ws: ws, token: token, root: root, board: b, known: dispatcher.NewKnownBoards("")}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ws.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
		if err := m.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return h
}

func (h *harness) wsURL() string { return h.ws.URL() }

// opts are the dial options of a host that holds the harness's token and
// pins the board's key on first use.
func (h *harness) opts() dispatcher.DialOptions {
	return dispatcher.DialOptions{Token: h.token, Trust: h.known}
}

// via is one way a test reaches the harness's agent.
type via struct {
	name string
	dial func(t testing.TB, h *harness) *dispatcher.Client
}

// connected fails the test on a dial error and closes the client at its end.
func connected(t testing.TB, c *dispatcher.Client, err error) *dispatcher.Client {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialWS(t testing.TB, h *harness) *dispatcher.Client {
	t.Helper()
	c, err := dispatcher.Dial(context.Background(), h.wsURL(), h.opts())
	return connected(t, c, err)
}

// dialUnix reaches the agent's serial-framed link on a unix socket.
func dialUnix(t testing.TB, h *harness) *dispatcher.Client {
	t.Helper()
	c, err := dispatcher.Dial(context.Background(), "unix://"+h.serveUnix(t), h.opts())
	return connected(t, c, err)
}

// dialPTY reaches the agent over a real pty: the agent opens the slave by
// path through the serial-port code, the client uses the master.
func dialPTY(t testing.TB, h *harness) *dispatcher.Client {
	t.Helper()
	c, err := dispatcher.DialLine(context.Background(), h.servePTY(t), h.opts())
	return connected(t, c, err)
}

var transports = []via{{"ws", dialWS}, {"serial-unix", dialUnix}, {"serial-pty", dialPTY}}

type outcome struct {
	stdout, stderr string
	res            proto.ExecResult
}

func run(t *testing.T, c *dispatcher.Client, req dispatcher.ExecRequest) outcome {
	t.Helper()
	var stdout, stderr bytes.Buffer
	req.Stdout, req.Stderr = &stdout, &stderr
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := c.Exec(ctx, req)
	if err != nil {
		t.Fatalf("exec %q: %v", req.Argv, err)
	}
	return outcome{stdout.String(), stderr.String(), res}
}

func TestExec(t *testing.T) {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	tests := []struct {
		name   string
		req    dispatcher.ExecRequest
		stdin  string // a fresh reader per run: a transport must not see another's leftovers
		stdout string
		stderr string
		exit   int
		signal int
		timed  bool
	}{
		{name: "exit 0", req: dispatcher.ExecRequest{Argv: []string{"echo", "hello"}}, stdout: "hello\n"},
		{name: "exit 1", req: dispatcher.ExecRequest{Argv: []string{"false"}}, exit: 1},
		{name: "exit 42", req: dispatcher.ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 42"}},
			stdout: "out\n", stderr: "err\n", exit: 42},
		{name: "signal", req: dispatcher.ExecRequest{Argv: []string{"sh", "-c", "kill -SEGV $$"}}, exit: -1, signal: int(syscall.SIGSEGV)},
		{name: "timeout", req: dispatcher.ExecRequest{Argv: []string{"sleep", "1000"}, Timeout: 200 * time.Millisecond},
			exit: -1, signal: int(syscall.SIGTERM), timed: true},
		{name: "stdin", req: dispatcher.ExecRequest{Argv: []string{"tr", "a-z", "A-Z"}}, stdin: "shout\n",
			stdout: "SHOUT\n"},
		{name: "all bytes", req: dispatcher.ExecRequest{Argv: []string{"cat"}}, stdin: string(all), stdout: string(all)},
		{name: "env and cwd", req: dispatcher.ExecRequest{Argv: []string{"sh", "-c", `echo "$GREETING $(pwd)"`},
			Env: map[string]string{"GREETING": "hi"}, Cwd: "/"}, stdout: "hi /\n"},
		{name: "shell", req: dispatcher.ExecRequest{Argv: []string{"echo $0-$1 | tr a-z A-Z", "x", "y"}, Shell: true}, stdout: "X-Y\n"},
	}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			h := newHarness(t, "tok")
			c := tr.dial(t, h)
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					req := tc.req
					if tc.stdin != "" {
						req.Stdin = strings.NewReader(tc.stdin)
					}
					o := run(t, c, req)
					if tc.name == "all bytes" {
						// The same bytes through stderr.
						o2 := run(t, c, dispatcher.ExecRequest{Argv: []string{"sh", "-c", "cat >&2"}, Stdin: bytes.NewReader(all)})
						if o2.stderr != string(all) || o2.stdout != "" {
							t.Fatalf("stderr lost bytes: %q", o2.stderr)
						}
					} else if o.stderr != tc.stderr {
						t.Errorf("stderr %q, want %q", o.stderr, tc.stderr)
					}
					if o.stdout != tc.stdout {
						t.Errorf("stdout %q, want %q", o.stdout, tc.stdout)
					}
					if o.res.ExitCode != tc.exit || o.res.SignalNum != tc.signal || o.res.TimedOut != tc.timed {
						t.Errorf("result %+v, want exit %d signal %d timed out %v", o.res, tc.exit, tc.signal, tc.timed)
					}
				})
			}
		})
	}
}

func TestCancelAndConcurrency(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			h := newHarness(t, "")
			c := tr.dial(t, h)
			// Cancel with a chosen signal.
			ctx := context.Background()
			done := make(chan outcome)
			go func() { done <- run(t, c, dispatcher.ExecRequest{Argv: []string{"sleep", "1000"}}) }()
			id := waitRunning(t, c, "sleep")
			if err := c.Cancel(ctx, id, "INT"); err != nil {
				t.Fatal(err)
			}
			if o := <-done; !o.res.Canceled || o.res.SignalNum != int(syscall.SIGINT) {
				t.Fatalf("canceled result %+v", o.res)
			}
			if err := c.Cancel(ctx, id, "TERM"); !proto.IsReason(err, proto.ReasonNotFound) {
				t.Fatalf("cancel of a finished command: %v", err)
			}
			// Ten at once on one connection, each output its own.
			var wg sync.WaitGroup
			for i := range 10 {
				wg.Go(func() {
					want := strings.Repeat(fmt.Sprintf("%d", i), 1000*(i+1))
					o := run(t, c, dispatcher.ExecRequest{Argv: []string{"sh", "-c", "sleep 0.$1; printf %s $2; printf %s $2 >&2; exit $1", "sh", fmt.Sprint(i), want}})
					if o.stdout != want || o.stderr != want || o.res.ExitCode != i {
						t.Errorf("command %d: %d/%d bytes, exit %d", i, len(o.stdout), len(o.stderr), o.res.ExitCode)
					}
				})
			}
			wg.Wait()
			log, err := c.ExecLog(ctx, 0)
			if err != nil || len(log) != 11 {
				t.Fatalf("log: %d entries, %v", len(log), err)
			}
		})
	}
}

// waitRunning returns the id of the running command whose argv[0] is name.
func waitRunning(t *testing.T, c *dispatcher.Client, name string) string {
	t.Helper()
	var id string
	testenv.Eventually(t, name+" to run", func() bool {
		log, err := c.ExecLog(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range log {
			if e.Running && e.Argv[0] == name {
				id = e.ID
			}
		}
		return id != ""
	})
	return id
}

func TestDroppedConnectionKillsUnlessDetached(t *testing.T) {
	h := newHarness(t, "")
	for _, detach := range []bool{false, true} {
		c := dialWS(t, h)
		go c.Exec(context.Background(), dispatcher.ExecRequest{Argv: []string{"sleep", "1000"}, Detach: detach})
		id := waitRunning(t, c, "sleep")
		c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if detach {
			// Still running: a later connection can end it.
			c2 := dialWS(t, h)
			if err := c2.Cancel(ctx, id, "KILL"); err != nil {
				t.Fatalf("detached command: %v", err)
			}
		}
		res, err := h.execs.Wait(ctx, id)
		cancel()
		if err != nil || !res.Canceled || res.SignalNum == 0 {
			t.Fatalf("detach=%v: %+v %v", detach, res, err)
		}
	}
}

func TestAuthAndBadRequests(t *testing.T) {
	testenv.CheckLeaks(t)
	h := newHarness(t, "right-token-of-the-board")
	c := dialWS(t, h)
	wrong := h.opts()
	wrong.Token = "wrong-token-for-this-board"
	_, err := dispatcher.Dial(context.Background(), h.wsURL(), wrong)
	if !proto.IsReason(err, proto.ReasonUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		method string
		params any
		reason proto.Reason
	}{
		{proto.MethodExecStart, map[string]any{"argv": []string{}}, proto.ReasonInvalidParams},
		{proto.MethodExecStart, map[string]any{"argv": []string{"ls"}, "timeout_ms": -1}, proto.ReasonInvalidParams},
		{proto.MethodExecStart, map[string]any{"argv": []string{"/no/such/binary"}}, proto.ReasonNotFound},
		{proto.MethodExecStart, map[string]any{"argv": []string{"ls"}, "stdout": 2}, proto.ReasonInvalidParams},
		{proto.MethodExecWait, map[string]any{"id": "nope"}, proto.ReasonNotFound},
		{proto.MethodHello, map[string]any{"protocol": -1}, proto.ReasonInvalidParams},
		{proto.MethodHello, map[string]any{"protocol": 0}, proto.ReasonIncompatible},
		{"exec.teleport", nil, proto.ReasonMethodNotFound},
	} {
		err := c.Conn().Call(ctx, tc.method, tc.params, nil)
		var pe *proto.Error
		if !errors.As(err, &pe) || pe.Reason() != tc.reason {
			t.Errorf("%s %v: got %v, want %s", tc.method, tc.params, err, tc.reason)
		}
	}
	info, err := c.Info(ctx)
	if err != nil || info.ID != "test-board" || info.BootID == "" || info.Protocol != proto.Version || info.Labels["rack"] != "1" {
		t.Fatalf("info after bad requests: %+v %v", info, err)
	}
}
