package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/linemux"
	"github.com/boardlink/boardlink/dispatcher/lineshare"
)

// Sharing serial lines: the first call on a line starts `boardlink
// line-mux ADDRESS` detached, which holds the line; every call after it
// (exec, console, push, ...) goes through it. BOARDLINK_LINE_MUX=off opens
// lines directly; BOARDLINK_PERSIST sets how long a mux started so stays
// after its last client (default 60s; 0: until killed).
const (
	envLineMux = "BOARDLINK_LINE_MUX"
	envPersist = "BOARDLINK_PERSIST"
	// envReady names the descriptor a started mux reports on: "ok", or
	// why it could not start.
	envReady = "BOARDLINK_LINE_MUX_READY"
)

// lineMuxOff turns sharing off for the whole process (the in-process CLI
// tests, which cannot start this binary as a mux).
var lineMuxOff = false

// lineShare is how this run reaches serial lines, nil to open them
// directly; tok is the token the run authenticates with, handed to a mux
// it starts.
func (g *globals) lineShare(tok string) *dispatcher.LineShare {
	if lineMuxOff {
		return nil
	}
	switch strings.ToLower(os.Getenv(envLineMux)) {
	case "off", "0", "no", "false":
		return nil
	}
	return &dispatcher.LineShare{Start: func(ctx context.Context, addr string) error {
		return g.startLineMux(ctx, addr, tok)
	}}
}

// startLineMux runs `boardlink line-mux ADDR` detached (its own session,
// its output in a log beside its socket) and returns once it listens, or
// with what stopped it. A mux that another call started meanwhile counts.
func (g *globals) startLineMux(ctx context.Context, addr, tok string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := lineshare.Dir()
	if err != nil {
		return err
	}
	sock, err := lineshare.Socket(dir, addr)
	if err != nil {
		return err
	}
	args := []string{"line-mux", addr, "--persist", os.Getenv(envPersist)}
	if args[3] == "" {
		args[3] = linemux.DefaultIdle.String()
	}
	for flag, v := range map[string]string{"--known-boards": g.knownFile, "--host-key": g.hostKeyFile} {
		if v != "" {
			args = append(args, flag, v)
		}
	}
	if g.strictKeys {
		args = append(args, "--strict-keys")
	}
	if g.insecure {
		args = append(args, "--allow-legacy-agent")
	}
	if g.verbose {
		args = append(args, "-v")
	}
	logf, err := os.OpenFile(strings.TrimSuffix(sock, ".sock")+".log", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), envReady+"=3", envLineMux+"=off")
	if tok != "" {
		cmd.Env = append(cmd.Env, "BOARDLINK_TOKEN="+tok) // the environment is this user's alone
	}
	cmd.Stderr, cmd.ExtraFiles = logf, []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // no terminal's signals
	g.debug("starting a line mux", "line", addr, "args", args)
	err = cmd.Start()
	w.Close()
	if err != nil {
		return err
	}
	go cmd.Wait() //nolint:errcheck // reaps it if it ends while this process runs
	status := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, 4096))
		status <- strings.TrimSpace(string(b))
	}()
	select {
	case s := <-status:
		if s != "ok" {
			if s == "" {
				s = "it exited (see " + logf.Name() + ")"
			}
			return errors.New(s)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func newLineMuxCmd(g *globals) *cobra.Command {
	var persist time.Duration
	cmd := &cobra.Command{
		Use:   "line-mux ADDRESS [--persist D]",
		Short: "Hold a serial line for every boardlink call on it",
		Long: `line-mux holds a serial line (serial://, tcp:// or unix://): its lock
file, the session with the board's agent and its console, and serves
every boardlink call on the line through a socket in the user's runtime
directory. boardlink starts it on its own at the first call on a line;
run it yourself to keep a line held (--persist 0: until interrupted).`,
		Hidden: true,
		Args:   exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ready := readyPipe()
			opts, err := g.dialOptions(nil)
			if err != nil {
				ready.say(err.Error())
				return err
			}
			idle := persist
			if idle == 0 {
				idle = -1 // as ssh's ControlPersist 0: until killed
			}
			m, err := linemux.Listen(cmd.Context(), linemux.Config{Addr: args[0], Dial: opts, Idle: idle, Logger: g.muxLogger()})
			if errors.Is(err, linemux.ErrRunning) {
				ready.say("ok")
				return nil
			}
			if err != nil {
				ready.say(err.Error())
				return linkFailure(err)
			}
			ready.say("ok")
			if err := m.Serve(cmd.Context()); err != nil {
				return linkFailure(err)
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&persist, "persist", linemux.DefaultIdle, "how long to stay after the last client left (0: until interrupted)")
	return cmd
}

// muxLogger logs the mux's events: with -v, at debug level.
func (g *globals) muxLogger() *slog.Logger {
	if l := g.logger(); l != nil {
		return l
	}
	return slog.New(slog.NewTextHandler(g.stderr, nil))
}

// consoleShare is lineShare for the console verb, with the token this run
// would authenticate with (a mux it starts serves later calls too).
func (g *globals) consoleShare() *dispatcher.LineShare {
	tok, err := g.token(nil)
	if err != nil {
		tok = "" // the console itself needs none
	}
	return g.lineShare(tok)
}

// readyFile is where a started mux reports whether it listens.
type readyFile struct{ f *os.File }

func readyPipe() *readyFile {
	fd, err := strconv.Atoi(os.Getenv(envReady))
	if err != nil || fd < 3 {
		return &readyFile{}
	}
	os.Unsetenv(envReady)
	return &readyFile{f: os.NewFile(uintptr(fd), "ready")}
}

// say reports once, then closes the pipe.
func (r *readyFile) say(s string) {
	if r.f == nil {
		return
	}
	fmt.Fprintln(r.f, s)
	r.f.Close()
	r.f = nil
}
