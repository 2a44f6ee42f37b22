package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/internal/rootpath"
	"github.com/boardlink/boardlink/proto"
)

// ExecIO connects a command's standard streams to the caller.
//
// A nil Stdin reads as empty (/dev/null). Stdin is copied until it returns
// EOF or the command ends; the caller owns it and must make a pending Read
// return once the command is done (e.g. by closing its stream).
//
// A nil Stdout or Stderr counts the output and discards it. Writers may
// block: that is flow control, and the command then blocks on its pipe. A
// writer that returns an error (its connection died) is dropped and the
// rest of that output is counted and discarded, so the command neither
// stops nor stalls. Stdout and Stderr are written from two goroutines (one
// writer used for both must allow that), never after the command's Done
// closes.
type ExecIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// ExecOptions configure the command manager. Zero values take defaults.
type ExecOptions struct {
	LogSize      int           // commands kept in the log (default 100)
	LogPath      string        // where the log persists across restarts; "" keeps it in memory
	DefaultGrace time.Duration // between a stop signal and SIGKILL when the request names none (default 2s)
	// MaxCommands bounds the commands that are running or whose result is
	// held for a caller that has not collected it (see Holder); one more
	// is refused busy. The log holds at most LogSize plus this many.
	// Default 1024.
	MaxCommands int
	// ResultGrace is how long a held result outlives its Holder's Release
	// (or its command's end, if later). Default DefaultResultGrace.
	ResultGrace time.Duration
	Now         func() time.Time // the clock ResultGrace runs on (default time.Now)
	// DrainDelay bounds how long output is read after a command's leader
	// exits (default 1s): see drainDelay.
	DrainDelay time.Duration
	Logger     *slog.Logger // default: discard
}

const (
	defaultLogSize     = 100
	defaultMaxCommands = DefaultMaxCommands
	defaultGrace       = 2 * time.Second
	// drainDelay bounds how long output is read after the command's leader
	// exits: a background child that inherited stdout must not hold the
	// result. What is already in the pipe then is still delivered.
	drainDelay = time.Second
	// maxPipeBuffer is Linux's default pipe-max-size: the most a pipe can
	// hold, which bounds the final read of what is buffered.
	maxPipeBuffer = 1 << 20
)

// Execs runs the agent's commands and keeps their log. Its methods are safe
// for concurrent use.
type Execs struct {
	logSize     int
	logPath     string
	journal     *execJournal // the log at logPath; nil without one
	grace       time.Duration
	drain       time.Duration
	maxCommands int
	resultGrace time.Duration
	now         func() time.Time
	log         *slog.Logger

	wg sync.WaitGroup // one per started command, until its log is saved

	mu       sync.Mutex
	seq      uint64
	closing  bool
	starting int        // Starts between their check of MaxCommands and joining the window
	window   []*Command // the log, oldest first; see trimLocked

}

// NewExecs returns a manager. It touches nothing outside memory: call
// LoadLog to read a persisted log.
func NewExecs(opts ExecOptions) *Execs {
	m := &Execs{logSize: opts.LogSize, logPath: opts.LogPath, grace: opts.DefaultGrace, drain: opts.DrainDelay,
		maxCommands: opts.MaxCommands, resultGrace: opts.ResultGrace, now: opts.Now, log: opts.Logger}
	if m.logPath != "" {
		m.journal = newExecJournal(m.logPath)
	}
	if m.logSize <= 0 {
		m.logSize = defaultLogSize
	}
	if m.grace <= 0 {
		m.grace = defaultGrace
	}
	if m.drain <= 0 {
		m.drain = drainDelay
	}
	if m.maxCommands <= 0 {
		m.maxCommands = defaultMaxCommands
	}
	if m.resultGrace <= 0 {
		m.resultGrace = DefaultResultGrace
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	return m
}

// Command is one started command (or, after LoadLog, one that ended in an
// earlier run of the agent).
type Command struct {
	id       string
	argv     []string
	shell    bool
	detached bool
	pid      int
	started  time.Time
	killSig  syscall.Signal
	grace    time.Duration
	done     chan struct{}
	stdout   sink
	stderr   sink
	// tty is the master of the command's terminal (nil: pipes); closed by
	// run once the leader has exited and its output is drained.
	tty *os.File

	// Guarded by Execs.mu.
	exited       bool      // the leader has been reaped: no more signals
	finished     bool      // result is final
	finishedAt   time.Time // by Execs.now, for ResultGrace
	holder       *Holder   // holds the result until collected; nil: not held
	canceled     bool
	timedOut     bool
	timeoutTimer *time.Timer
	killTimer    *time.Timer
	result       proto.ExecResult // written before done closes
}

// ID is the command's id in the agent's log.
func (c *Command) ID() string { return c.id }

// PID is the process id of the command's leader, which is also its
// process group id.
func (c *Command) PID() int { return c.pid }

// Detached reports whether the command was started to outlive its
// connection.
func (c *Command) Detached() bool { return c.detached }

// Done is closed when the result is final and all output was written.
func (c *Command) Done() <-chan struct{} { return c.done }

// Result is the command's final record; valid once Done is closed.
func (c *Command) Result() proto.ExecResult { return c.result }

// Start runs a command in its own process group. Errors are *proto.Error:
// not_found when the executable or cwd does not exist, invalid_params when
// the request cannot run as given, busy after Shutdown or beyond
// MaxCommands, internal otherwise. Its result stays in the log while the
// log has room; Holder.Start keeps it until collected.
func (m *Execs) Start(p proto.ExecStartParams, eio ExecIO) (*Command, error) {
	return m.start(p, eio, nil)
}

func (m *Execs) start(p proto.ExecStartParams, eio ExecIO, h *Holder) (*Command, error) {
	if len(p.Argv) == 0 || p.Argv[0] == "" {
		return nil, proto.InvalidField("argv", "argv", "must be non-empty and start with a non-empty element")
	}
	killSig := syscall.SIGTERM
	if p.KillSignal != "" {
		s, ok := signalByName(p.KillSignal)
		if !ok {
			return nil, proto.InvalidField("kill_signal", "oneof", "%q is not a signal", p.KillSignal)
		}
		killSig = s
	}
	grace := m.grace
	if p.GraceMs > 0 {
		grace = millis(p.GraceMs)
	}
	if err := checkCwd(p.Cwd); err != nil {
		return nil, err
	}
	if err := checkTTY(p); err != nil {
		return nil, err
	}

	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return nil, proto.Errorf(proto.ReasonBusy, "the agent is shutting down")
	}
	if n := m.pinnedLocked() + m.starting; n >= m.maxCommands {
		m.mu.Unlock()
		return nil, proto.Errorf(proto.ReasonBusy,
			"%d commands are running or hold a result not collected yet, the limit (%d): collect results with exec.wait", n, m.maxCommands)
	}
	m.starting++
	m.wg.Add(1) // before unlocking, so that Shutdown waits for this command
	m.mu.Unlock()

	c := &Command{
		argv:     slices.Clone(p.Argv),
		shell:    p.Shell,
		detached: p.Detach,
		killSig:  killSig,
		grace:    grace,
		done:     make(chan struct{}),
		stdout:   sink{w: eio.Stdout},
		stderr:   sink{w: eio.Stderr},
	}
	cmd, pp, err := startProcess(p, eio.Stdin != nil)
	if err != nil {
		m.mu.Lock()
		m.starting--
		m.mu.Unlock()
		m.wg.Done()
		return nil, err
	}
	c.pid = cmd.Process.Pid
	c.started = time.Now()
	c.tty = pp.tty

	m.mu.Lock()
	m.starting--
	c.id = m.newIDLocked()
	c.holder = h
	m.window = append(m.window, c)
	m.trimLocked()
	if p.TimeoutMs > 0 {
		c.timeoutTimer = time.AfterFunc(millis(p.TimeoutMs), func() { m.timeout(c) })
	}
	if m.closing { // Shutdown began while this one was starting and did not see it
		c.canceled = true
		m.stopLocked(c, syscall.SIGTERM)
	}
	m.mu.Unlock()

	m.log.Info("exec started", "id", c.id, "pid", c.pid, "argv", c.argv, "shell", c.shell, "detach", c.detached,
		"tty", p.Tty, "path", cmd.Path)
	switch {
	case pp.stdin != nil:
		go m.copyStdin(c, pp.stdin, eio.Stdin)
	case pp.tty != nil && eio.Stdin != nil:
		go m.copyTTYInput(c, pp.tty, eio.Stdin)
	}
	go m.run(c, cmd, pp)
	return c, nil
}

// pipes are the agent's ends of a command's standard streams.
type pipes struct {
	stdout, stderr *os.File   // stderr nil: on a terminal, stdout carries it
	stdin          *stdinPipe // nil: /dev/null, or the terminal
	tty            *os.File   // a terminal's master, also stdout; nil: pipes
}

// stdinPipe is closed both by its copier at EOF and when the command ends.
type stdinPipe struct {
	f    *os.File
	once sync.Once
}

func (s *stdinPipe) close() { s.once.Do(func() { s.f.Close() }) }

func startProcess(p proto.ExecStartParams, withStdin bool) (*exec.Cmd, pipes, error) {
	if p.Tty {
		cmd := ttyCommand(p)
		master, err := startTTY(cmd, p)
		if err != nil {
			return nil, pipes{}, err
		}
		return cmd, pipes{stdout: master, tty: master}, nil
	}
	cmd := newCommand(p)
	cmd.Env = commandEnv(p)
	// Its own group, so that a stop signal reaches every process the
	// command started; SIGKILL if the agent dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	var agentEnds, childEnds []*os.File
	defer func() { closeFiles(childEnds) }() // the child holds its own copies
	fail := func(err error) (*exec.Cmd, pipes, error) {
		closeFiles(agentEnds)
		return nil, pipes{}, err
	}
	// pipe returns the agent's end and the child's end of a new pipe.
	pipe := func(childReads bool) (agent, child *os.File, err error) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, nil, proto.Errorf(proto.ReasonInternal, "cannot start command: %v", err)
		}
		agent, child = r, w
		if childReads {
			agent, child = w, r
		}
		agentEnds, childEnds = append(agentEnds, agent), append(childEnds, child)
		return agent, child, nil
	}

	var pp pipes
	var child *os.File
	var err error
	if pp.stdout, child, err = pipe(false); err != nil {
		return fail(err)
	}
	cmd.Stdout = child
	if pp.stderr, child, err = pipe(false); err != nil {
		return fail(err)
	}
	cmd.Stderr = child
	if withStdin {
		var in *os.File
		if in, child, err = pipe(true); err != nil {
			return fail(err)
		}
		pp.stdin = &stdinPipe{f: in}
		cmd.Stdin = child
	}
	if err := cmd.Start(); err != nil {
		return fail(startError(err))
	}
	return cmd, pp, nil
}

// newCommand is the program p names, with its arguments, in its cwd.
func newCommand(p proto.ExecStartParams) *exec.Cmd {
	name, args := p.Argv[0], p.Argv[1:]
	if p.Shell {
		name, args = "/bin/sh", append([]string{"-c", p.Argv[0]}, p.Argv[1:]...)
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = p.Cwd
	return cmd
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

func commandEnv(p proto.ExecStartParams) []string {
	env := []string{} // not nil: a nil Env would give the child the agent's environment
	if !p.ClearEnv {
		env = os.Environ()
	}
	for _, k := range slices.Sorted(maps.Keys(p.Env)) {
		env = append(env, k+"="+p.Env[k]) // exec.Cmd keeps the last of duplicate keys
	}
	return env
}

// checkCwd reports a bad cwd clearly: with SysProcAttr set, os/exec would
// blame the executable for a failed chdir.
func checkCwd(cwd string) error {
	if cwd == "" {
		return nil
	}
	fi, err := os.Stat(cwd)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return proto.InvalidField("cwd", "dir", "%s: no such directory", cwd)
	case err != nil:
		return proto.InvalidField("cwd", "dir", "%s: %v", cwd, err)
	case !fi.IsDir():
		return proto.InvalidField("cwd", "dir", "%s: not a directory", cwd)
	}
	return nil
}

func startError(err error) error {
	switch {
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return proto.Errorf(proto.ReasonNotFound, "cannot start command: %v", err)
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.ENOEXEC), errors.Is(err, exec.ErrDot):
		return proto.InvalidField("argv", "exec", "cannot start command: %v", err)
	}
	if rule, ok := rootpath.Fault(err); ok {
		// E2BIG: argv and env beyond the kernel's limit (ARG_MAX, or
		// 128 KiB for one string).
		return proto.WithCause(proto.InvalidField("argv", rule, "cannot start command: %v", err), err)
	}
	return proto.Errorf(proto.ReasonInternal, "cannot start command: %v", err)
}

// millis converts milliseconds, saturating instead of overflowing into a
// negative duration that would fire at once.
func millis(ms int64) time.Duration {
	if ms > math.MaxInt64/int64(time.Millisecond) {
		return math.MaxInt64
	}
	return time.Duration(ms) * time.Millisecond
}

// newIDLocked returns a short id that is unique in the log, also against
// commands of an earlier run loaded by LoadLog.
func (m *Execs) newIDLocked() string {
	for {
		m.seq++
		id := fmt.Sprintf("c%d-%04x", m.seq, rand.N(0x10000))
		if m.findLocked(id) == nil {
			return id
		}
	}
}

func (m *Execs) copyStdin(c *Command, in *stdinPipe, r io.Reader) {
	defer in.close() // EOF for the command
	_, err := io.Copy(in.f, r)
	// The command may end without reading all of its input.
	if err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, os.ErrClosed) {
		m.log.Debug("exec stdin copy ended", "id", c.id, "err", err)
	}
}

// run waits for the command and publishes its result.
func (m *Execs) run(c *Command, cmd *exec.Cmd, pp pipes) {
	defer m.wg.Done()
	var pumps sync.WaitGroup
	outputs := []*os.File{pp.stdout}
	if pp.stderr != nil {
		outputs = append(outputs, pp.stderr)
	}
	for _, s := range []struct {
		name string
		f    *os.File
		sink *sink
	}{{"stdout", pp.stdout, &c.stdout}, {"stderr", pp.stderr, &c.stderr}} {
		if s.f == nil {
			continue
		}
		pumps.Go(func() {
			if err := s.sink.pump(s.f); err != nil {
				m.log.Warn("exec output read failed", "id", c.id, "stream", s.name, "err", err)
			}
		})
	}

	waitErr := cmd.Wait()
	ended := time.Now()
	m.mu.Lock()
	c.exited = true
	m.mu.Unlock()
	if pp.stdin != nil {
		pp.stdin.close()
	}
	deadline := ended.Add(m.drain)
	var errs []error
	for _, f := range outputs {
		errs = append(errs, f.SetReadDeadline(deadline))
	}
	if err := errors.Join(errs...); err != nil {
		// Only if the poller refused the pipes: closing them is the only bound left.
		m.log.Warn("exec output cannot be bounded by a deadline", "id", c.id, "err", err)
		time.AfterFunc(m.drain, func() { closeFiles(outputs) })
	}
	pumps.Wait()
	closeFiles(outputs) // for a terminal, also the end of its input

	res := proto.ExecResult{
		ID:          c.id,
		Started:     c.started,
		Ended:       ended,
		DurationMs:  float64(ended.Sub(c.started)) / float64(time.Millisecond),
		StdoutBytes: c.stdout.n.Load(),
		StderrBytes: c.stderr.n.Load(),
	}
	setExit(&res, cmd.ProcessState)
	if res.ExitCode == -1 && res.Signal == "" {
		m.log.Error("exec wait failed", "id", c.id, "err", waitErr)
	}
	m.finish(c, res)
}

func setExit(res *proto.ExecResult, ps *os.ProcessState) {
	res.ExitCode = -1
	if ps == nil {
		return
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	switch {
	case !ok:
	case ws.Signaled():
		res.Signal, res.SignalNum = signalName(ws.Signal()), int(ws.Signal())
	case ws.Exited():
		res.ExitCode = ws.ExitStatus()
	}
}

func (m *Execs) finish(c *Command, res proto.ExecResult) {
	m.mu.Lock()
	if c.timeoutTimer != nil {
		c.timeoutTimer.Stop()
	}
	// An empty group stays empty and its number may be reused: drop the
	// pending SIGKILL. A group that still has members keeps it.
	if c.killTimer != nil && errors.Is(syscall.Kill(-c.pid, 0), syscall.ESRCH) {
		c.killTimer.Stop()
	}
	res.TimedOut, res.Canceled = c.timedOut, c.canceled
	c.result = res
	c.finished = true
	c.finishedAt = m.now()
	m.trimLocked()
	m.mu.Unlock()
	close(c.done)

	m.log.Info("exec ended", "id", c.id, "exit_code", res.ExitCode, "signal", res.Signal,
		"timed_out", res.TimedOut, "canceled", res.Canceled, "duration_ms", res.DurationMs)
	m.saveLog()
}

// sink forwards one output stream to its writer and counts it. Only its
// pump writes w; n is read concurrently by Log.
type sink struct {
	w io.Writer
	n atomic.Int64
}

func (s *sink) write(p []byte) {
	if len(p) == 0 {
		return
	}
	if s.w != nil {
		if _, err := s.w.Write(p); err != nil {
			s.w = nil // the reader is gone; keep draining so the command does not block
		}
	}
	s.n.Add(int64(len(p)))
}

// pump copies r to s until EOF or until r's read deadline, set when the
// leader exits, passes; it then takes what is already buffered in the pipe,
// which includes all the leader wrote however slow the writer was.
func (s *sink) pump(r *os.File) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		s.write(buf[:n])
		switch {
		case err == nil:
		// EIO: a terminal's master once no process holds the terminal any
		// more; a pipe never returns it.
		case errors.Is(err, io.EOF), errors.Is(err, syscall.EIO):
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			return s.drainBuffered(r, buf)
		default:
			return err
		}
	}
}

func (s *sink) drainBuffered(r *os.File, buf []byte) error {
	if err := r.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	rc, err := r.SyscallConn()
	if err != nil {
		return err
	}
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		// The pipe is non-blocking: read until it is empty, or until a
		// chatty background child has had a full buffer's worth.
		for total := 0; total < maxPipeBuffer; {
			n, err := syscall.Read(int(fd), buf)
			switch {
			case errors.Is(err, syscall.EINTR):
				continue
			case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EIO):
				return true
			case err != nil:
				rerr = err
				return true
			case n == 0:
				return true
			}
			s.write(buf[:n])
			total += n
		}
		return true
	})
	return errors.Join(err, rerr)
}

func (m *Execs) timeout(c *Command) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.exited {
		return
	}
	c.timedOut = true
	m.log.Info("exec timed out", "id", c.id, "signal", signalName(c.killSig))
	m.stopLocked(c, c.killSig)
}

// stopLocked asks c's process group to end with sig: stopped members are
// continued so they can act on it, and SIGKILL follows after the grace
// period unless the group is gone by the time the command finishes.
func (m *Execs) stopLocked(c *Command, sig syscall.Signal) {
	m.signalGroup(c, sig)
	if sig == syscall.SIGKILL {
		return
	}
	m.signalGroup(c, syscall.SIGCONT)
	if c.killTimer == nil {
		c.killTimer = time.AfterFunc(c.grace, func() { m.signalGroup(c, syscall.SIGKILL) })
	}
}

func (m *Execs) signalGroup(c *Command, sig syscall.Signal) error {
	// On a terminal the shell may run its foreground job in a group of
	// its own (job control): that job is the command's too.
	if c.tty != nil {
		if fg := foreground(c.tty); fg > 0 && fg != c.pid {
			_ = syscall.Kill(-fg, sig)
		}
	}
	err := syscall.Kill(-c.pid, sig)
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		m.log.Warn("exec signal failed", "id", c.id, "pgid", c.pid, "signal", signalName(sig), "err", err)
		return fmt.Errorf("signal %s to process group %d: %w", signalName(sig), c.pid, err)
	}
	return nil
}

// Wait returns the result of the command id once it ends. It finds running
// commands and finished ones still in the log. The result is then
// collected: no longer held (see Holder).
func (m *Execs) Wait(ctx context.Context, id string) (proto.ExecResult, error) {
	m.mu.Lock()
	c := m.findLocked(id)
	m.mu.Unlock()
	if c == nil {
		return proto.ExecResult{}, proto.Errorf(proto.ReasonNotFound, "no command %q in the log", id)
	}
	select {
	case <-c.done:
		m.mu.Lock()
		if c.holder != nil {
			c.holder = nil
			m.trimLocked()
		}
		m.mu.Unlock()
		return c.result, nil
	case <-ctx.Done():
		return proto.ExecResult{}, fmt.Errorf("wait for command %s: %w", id, ctx.Err())
	}
}

// Cancel sends signal (default TERM) to the process group of the running
// command id. TERM, INT and HUP are followed by SIGKILL after the grace
// period; they and KILL mark the result Canceled. QUIT, USR1, USR2, CONT
// and STOP are only delivered: a program may handle them and go on.
func (m *Execs) Cancel(id string, signal string) error {
	if signal == "" {
		signal = "TERM"
	}
	sig, ok := signalByName(signal)
	if !ok || !cancelSignals[sig] {
		return proto.InvalidField("signal", "oneof", "%q: must be one of HUP INT QUIT KILL USR1 USR2 TERM CONT STOP", signal)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.findLocked(id)
	if c == nil || c.exited {
		return proto.Errorf(proto.ReasonNotFound, "no running command %q", id)
	}
	m.log.Info("exec cancel", "id", id, "signal", signal)
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP:
		c.canceled = true
		m.stopLocked(c, sig)
		return nil
	case syscall.SIGKILL:
		c.canceled = true
	}
	if err := m.signalGroup(c, sig); err != nil {
		return proto.Errorf(proto.ReasonInternal, "%v", err)
	}
	return nil
}

var cancelSignals = map[syscall.Signal]bool{
	syscall.SIGHUP: true, syscall.SIGINT: true, syscall.SIGQUIT: true, syscall.SIGKILL: true,
	syscall.SIGUSR1: true, syscall.SIGUSR2: true, syscall.SIGTERM: true, syscall.SIGCONT: true, syscall.SIGSTOP: true,
}

// Kill stops the command id (TERM, then KILL after the grace period) and
// marks it Canceled; the agent calls it when the connection of a command
// that is not detached drops. Unknown or finished commands are ignored.
func (m *Execs) Kill(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.findLocked(id)
	if c == nil || c.exited {
		return
	}
	m.log.Info("exec kill", "id", id)
	c.canceled = true
	m.stopLocked(c, syscall.SIGTERM)
}

// Running counts the commands still running.
func (m *Execs) Running() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, c := range m.window {
		if !c.exited {
			n++
		}
	}
	return n
}

// Shutdown stops every running command (TERM, KILL after the grace period;
// their results say Canceled), refuses new ones with busy and waits until
// all have ended and the log is saved.
// When it returns nil, every command's leader is reaped and every process
// group that outlived its leader has been sent SIGKILL. If ctx ends first,
// every group still running gets SIGKILL and Shutdown returns ctx's error
// without waiting further.
func (m *Execs) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	m.closing = true
	for _, c := range m.window {
		if !c.exited {
			c.canceled = true
			m.stopLocked(c, syscall.SIGTERM)
		}
	}
	m.mu.Unlock()

	all := make(chan struct{})
	go func() { m.wg.Wait(); close(all) }()
	select {
	case <-all:
	case <-ctx.Done():
		m.mu.Lock()
		for _, c := range m.window {
			if !c.finished {
				m.signalGroup(c, syscall.SIGKILL)
			}
		}
		m.mu.Unlock()
		return fmt.Errorf("exec shutdown: %w", ctx.Err())
	}

	// Members that ignored TERM may outlive their leader until the grace
	// period ends; do not leave them behind.
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.window {
		if c.killTimer != nil && c.killTimer.Stop() {
			m.signalGroup(c, syscall.SIGKILL)
		}
	}
	return nil
}

// signalName is how the protocol names s: without the SIG prefix (TERM),
// or SIGN for a signal without a name (the real-time ones).
func signalName(s syscall.Signal) string {
	if n := unix.SignalName(s); n != "" {
		return strings.TrimPrefix(n, "SIG")
	}
	return fmt.Sprintf("SIG%d", int(s))
}

// signalByName is the signal the protocol names name (TERM, not SIGTERM).
func signalByName(name string) (syscall.Signal, bool) {
	s := unix.SignalNum("SIG" + name)
	return s, s != 0
}
