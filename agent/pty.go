package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/proto"
)

// Terminals (protocol 5, docs/protocol.md section 5.12): exec.start with
// tty runs its command on a pseudo-terminal of its own, exec.resize sets
// the terminal's size.

// LoginShell, as the whole argv of a command started with tty, asks for
// the login shell of the agent's user (see loginShell).
const LoginShell = "-"

const (
	defaultRows, defaultCols = 24, 80
	// defaultTerm is TERM when the request names none: a terminal that
	// promises nothing beyond printing text.
	defaultTerm = "dumb"
	// passwdFile is where the login shell is looked up; maxPasswd bounds
	// how much of it is read.
	passwdFile = "/etc/passwd"
	maxPasswd  = 4 << 20
)

// checkTTY validates the terminal fields of p beyond their own rules.
func checkTTY(p proto.ExecStartParams) error {
	if !p.Tty {
		if p.Term != "" || p.Rows != 0 || p.Cols != 0 {
			return proto.InvalidField("tty", "required_with", "term, rows and cols are for a command on a terminal (tty)")
		}
		return nil
	}
	if p.Stderr != 0 {
		return proto.InvalidField("stderr", "tty", "must be 0 with tty: the terminal prints standard error with standard output, on the stdout stream")
	}
	return nil
}

// isLoginShell reports whether p asks for the login shell.
func isLoginShell(p proto.ExecStartParams) bool {
	return p.Tty && !p.Shell && len(p.Argv) == 1 && p.Argv[0] == LoginShell
}

// startTTY starts cmd on a new pseudo-terminal and returns the terminal's
// master. The command leads a new session (its pid is also its process
// group) with the terminal as its controlling one, so that the
// terminal's own signals reach its foreground job: Ctrl-C (the byte 0x03)
// SIGINT, a resize SIGWINCH, the end of the session SIGHUP.
func startTTY(cmd *exec.Cmd, p proto.ExecStartParams) (*os.File, error) {
	master, slave, err := openPTY()
	if err != nil {
		return nil, proto.Errorf(proto.ReasonInternal, "cannot open a terminal: %v", err)
	}
	defer slave.Close() // the child holds its own copies
	rows, cols := p.Rows, p.Cols
	if rows == 0 {
		rows = defaultRows
	}
	if cols == 0 {
		cols = defaultCols
	}
	if err := setSize(master, rows, cols); err != nil {
		master.Close()
		return nil, proto.Errorf(proto.ReasonInternal, "cannot size the terminal: %v", err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	// Ctty 0: the child's standard input, the terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		master.Close()
		return nil, startError(err)
	}
	return master, nil
}

// ttyCommand is the command p asks for on a terminal: its argv, or the
// login shell of the agent's user, with TERM set: p's term, else the one
// p's env sets, else defaultTerm.
func ttyCommand(p proto.ExecStartParams) *exec.Cmd {
	env := commandEnv(p)
	cmd := newCommand(p)
	if isLoginShell(p) {
		u := loginShell(passwdFile)
		cmd = exec.Command(u.shell)
		cmd.Args[0] = "-" + filepath.Base(u.shell) // as login(1) marks a login shell
		env = append(env, "SHELL="+u.shell)
		for _, kv := range [][2]string{{"HOME", u.home}, {"USER", u.name}, {"LOGNAME", u.name}} {
			if _, ok := envValue(env, kv[0]); kv[1] != "" && !ok {
				env = append(env, kv[0]+"="+kv[1])
			}
		}
		// It starts in its home, as after a login.
		cmd.Dir = p.Cwd
		if home, _ := envValue(env, "HOME"); cmd.Dir == "" && isDir(home) {
			cmd.Dir = home
		}
	}
	// Not the agent's own TERM: it says nothing of the client's terminal.
	switch _, inEnv := p.Env["TERM"]; {
	case p.Term != "":
		env = append(env, "TERM="+p.Term) // exec.Cmd keeps the last of duplicate keys
	case !inEnv:
		env = append(env, "TERM="+defaultTerm)
	}
	cmd.Env = env
	return cmd
}

// envValue is the value env gives key: the last, as exec.Cmd keeps.
func envValue(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], key+"="); ok {
			return v, true
		}
	}
	return "", false
}

func isDir(path string) bool {
	fi, err := os.Stat(path)
	return path != "" && err == nil && fi.IsDir()
}

// loginUser is what a login shell needs to know of the agent's user.
type loginUser struct{ name, home, shell string }

// loginShell finds the agent's user in passwd (by uid: the agent
// may run without $USER). Its shell is the one there unless that is
// missing, not executable, or refuses logins (nologin, false: the agent
// already runs any command for its peers, so refusing a shell protects
// nothing); then $SHELL, then /bin/sh.
func loginShell(passwd string) loginUser {
	u := passwdEntry(passwd, os.Getuid())
	for _, sh := range []string{u.shell, os.Getenv("SHELL")} {
		if base := filepath.Base(sh); filepath.IsAbs(sh) && base != "nologin" && base != "false" && isExecutable(sh) {
			u.shell = sh
			return u
		}
	}
	u.shell = "/bin/sh"
	return u
}

// passwdEntry is uid's entry of the passwd file path; zero when there is
// none or the file cannot be read.
func passwdEntry(path string, uid int) loginUser {
	f, err := os.Open(path)
	if err != nil {
		return loginUser{}
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, maxPasswd))
	want := strconv.Itoa(uid)
	for sc.Scan() {
		// name:password:uid:gid:gecos:home:shell
		fields := strings.Split(sc.Text(), ":")
		if len(fields) == 7 && fields[2] == want {
			return loginUser{name: fields[0], home: fields[5], shell: fields[6]}
		}
	}
	return loginUser{}
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// openPTY opens a pseudo-terminal pair. creack/pty's ioctls go through
// Fd, which leaves the master in blocking mode, where a read can neither
// be given a deadline nor be ended by Close; run's drain and the end of a
// command rely on both, so the master handed out is a non-blocking
// duplicate that the runtime's poller serves. Terminal ioctls on it go
// through SyscallConn for the same reason (setSize, foreground).
func openPTY() (master, slave *os.File, err error) {
	m, s, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	defer m.Close()
	fd, err := unix.FcntlInt(m.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err == nil {
		err = unix.SetNonblock(fd, true)
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		s.Close()
		return nil, nil, fmt.Errorf("pty master: %w", err)
	}
	return os.NewFile(uintptr(fd), m.Name()), s, nil
}

// control runs f on the descriptor of a terminal's master that is still
// open.
func control(master *os.File, f func(fd int) error) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// setSize sets the terminal's window size; the kernel sends SIGWINCH to
// its foreground process group when it changes.
func setSize(master *os.File, rows, cols uint16) error {
	return control(master, func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
}

// foreground is the terminal's foreground process group, 0 when unknown
// (the master is closed).
func foreground(master *os.File) int {
	pgrp := 0
	_ = control(master, func(fd int) error {
		var err error
		pgrp, err = unix.IoctlGetInt(fd, unix.TIOCGPGRP)
		return err
	})
	return pgrp
}

// eofChar is the terminal's end-of-file character (VEOF, Ctrl-D).
func eofChar(master *os.File) byte {
	c := byte(4)
	_ = control(master, func(fd int) error {
		tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		if err == nil && tio.Cc[unix.VEOF] != 0 {
			c = tio.Cc[unix.VEOF]
		}
		return err
	})
	return c
}

// copyTTYInput feeds the client's input to the terminal. When the input
// ends the terminal gets its end-of-file character, as a person types
// Ctrl-D: a shell reading piped commands then exits. After a line not
// ended by a newline it is typed twice: the first only hands over the
// line.
func (m *Execs) copyTTYInput(c *Command, master *os.File, r io.Reader) {
	w := &lastByte{w: master, last: '\n'}
	_, err := io.Copy(w, r)
	if err == nil {
		eof := []byte{eofChar(master)}
		if w.last != '\n' && w.last != '\r' {
			eof = append(eof, eof[0])
		}
		_, err = master.Write(eof)
	}
	// The command may end without reading all of its input.
	if err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, syscall.EIO) {
		m.log.Debug("exec terminal input ended", "id", c.id, "err", err)
	}
}

// lastByte remembers the last byte written through it.
type lastByte struct {
	w    io.Writer
	last byte
}

func (l *lastByte) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	if n > 0 {
		l.last = p[n-1]
	}
	return n, err
}

// Resize sets the window size of the running command id, started on a
// terminal; its foreground job gets SIGWINCH.
func (m *Execs) Resize(id string, rows, cols uint16) error {
	if rows == 0 || cols == 0 {
		return proto.InvalidField("rows", "min", "rows and cols must be at least 1, got %dx%d", rows, cols)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.findLocked(id)
	switch {
	case c == nil || c.exited: // the terminal closes once the leader exited
		return proto.Errorf(proto.ReasonNotFound, "no running command %q", id)
	case c.tty == nil:
		return proto.InvalidField("id", "tty", "command %s does not run on a terminal (started without tty)", id)
	}
	if err := setSize(c.tty, rows, cols); err != nil {
		return proto.Errorf(proto.ReasonInternal, "resize the terminal of %s: %v", id, err)
	}
	m.log.Debug("exec resize", "id", id, "rows", rows, "cols", cols)
	return nil
}

// execResize answers exec.resize.
func (s *session) execResize(params json.RawMessage) (any, error) {
	var p proto.ExecResizeParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	return nil, s.a.execs.Resize(p.ID, p.Rows, p.Cols)
}
