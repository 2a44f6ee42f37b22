package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board/sim"
)

func newDemoCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Start a simulated board in-process and drive it",
		Long: `demo starts one simulated board's agent inside this process, on loopback
only (a WebSocket on 127.0.0.1 and a serial-framed link on a unix socket, as
QEMU exports a board's UART), then runs boardlink commands against it and
cleans up. It needs nothing but Go and touches no network beyond loopback.

This is the foundation demo: the lab demo (several boards found by mDNS, a
signed image rolled out with live progress, one board rolling back) replaces
it when discovery and rollouts land.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), g)
		},
	}
}

// demoBoard is the in-process agent the demo drives.
type demoBoard struct {
	dir    string
	files  string // the agent's file root
	execs  *agent.Execs
	ws     *agent.WebSocketServer
	serial *agent.SerialServer
	sock   string
}

func startDemoBoard(ctx context.Context) (*demoBoard, error) {
	dir, err := os.MkdirTemp("", "boardlink-demo-")
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
	a := agent.New(b, d.execs, agent.Config{Roots: []string{d.files}, CacheDir: dir + "/state/cache"})
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

func runDemo(ctx context.Context, out io.Writer, g *globals) error {
	fmt.Fprintln(out, "boardlink demo: one simulated board, started in this process, on loopback only.")
	fmt.Fprintln(out, "(The multi-board lab demo with discovery and rollouts comes with later releases.)")
	d, err := startDemoBoard(ctx)
	if err != nil {
		return fmt.Errorf("start the demo board: %w", err)
	}
	defer d.stop()
	ws := "ws://" + d.ws.Addr().String()
	serial := "unix://" + d.sock
	fmt.Fprintf(out, "\nagent up: WebSocket %s, serial-framed link %s, file root %s\n", ws, serial, d.files)
	payload := filepath.Join(d.dir, "payload.bin")
	data := make([]byte, 256<<10)
	rand.Read(data)
	if err := os.WriteFile(payload, data, 0o640); err != nil {
		return err
	}

	steps := []struct {
		what string
		args []string
		want int
	}{
		{"identity, boot id and capabilities", []string{"info", ws}, 0},
		{"a command, its output and exit code", []string{"exec", ws, "--", "uname", "-sm"}, 0},
		{"stdout and stderr stay apart; the exit code is the board's", []string{"exec", ws, "--shell", "--", "echo to stdout; echo to stderr >&2; exit 42"}, 42},
		{"a hanging command is killed at its timeout (exit 124)", []string{"exec", ws, "--timeout", "500ms", "--", "sleep", "30"}, exitTimeout},
		{"the same agent over its serial-framed link", []string{"exec", serial, "--", "sh", "-c", "echo over the serial link: $(id -un)"}, 0},
		{"death by signal is 128+N", []string{"exec", serial, "--shell", "--", "kill -KILL $$"}, 128 + 9},
		{"push a file over the serial link, sha256-checked, mode and mtime kept", []string{"push", serial, payload, d.files + "/"}, 0},
		{"pull it back over WebSocket", []string{"pull", ws, filepath.Join(d.files, "payload.bin"), filepath.Join(d.dir, "back.bin")}, 0},
		{"a path outside the agent's file roots is refused", []string{"push", ws, payload, "/etc/payload.bin"}, exitUsage},
	}
	for i, s := range steps {
		fmt.Fprintf(out, "\n[%d/%d] %s\n$ boardlink %s\n", i+1, len(steps), s.what, strings.Join(quoteArgs(s.args), " "))
		var stderr strings.Builder
		err := runWithStdin(ctx, strings.NewReader(""), s.args, out, &stderr)
		code := exitStatus(err, &stderr)
		if stderr.Len() > 0 {
			fmt.Fprint(out, indent("stderr| ", stderr.String()))
		}
		fmt.Fprintf(out, "→ exit status %d\n", code)
		if code != s.want {
			return fmt.Errorf("demo step %d: exit status %d, want %d: %w", i+1, code, s.want, errors.Unwrap(err))
		}
	}
	fmt.Fprintln(out, "\ndemo finished; the board is stopped and its state removed.")
	return nil
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " $;>&'\"") {
			a = "'" + a + "'"
		}
		out[i] = a
	}
	return out
}

func indent(prefix, s string) string {
	lines := strings.SplitAfter(s, "\n")
	var b strings.Builder
	for _, l := range lines {
		if l != "" {
			b.WriteString(prefix + l)
		}
	}
	if !strings.HasSuffix(s, "\n") {
		b.WriteString("\n")
	}
	return b.String()
}
