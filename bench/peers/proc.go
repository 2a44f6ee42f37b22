package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// group is a long-lived child in a process group of its own (a Ctrl-C
// reaches only us, and we end the group); the kernel kills it if we die
// first (Pdeathsig).
type group struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// startGroup starts cmd as a group.
func startGroup(cmd *exec.Cmd) (*group, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", filepath.Base(cmd.Path), err)
	}
	g := &group{cmd: cmd, done: make(chan struct{})}
	go func() { g.err = cmd.Wait(); close(g.done) }()
	return g, nil
}

// stop sends SIGTERM to the group, and SIGKILL if it is not gone in 5s.
// Once the leader is reaped its id may be another's: nothing is sent then.
func (g *group) stop() {
	select {
	case <-g.done:
		return
	default:
	}
	pgid := -g.cmd.Process.Pid
	syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(pgid, syscall.SIGKILL)
		<-g.done
	}
}

// agentProc is a boardlinkd sim board: its supervisor and the agent the
// supervisor booted.
type agentProc struct {
	*group
	supervisor, agent int
	log               *logLines
}

var bootRE = regexp.MustCompile(`msg="sim: boot" boot=\d+ pid=(\d+)`)

// startAgent starts boardlinkd (through wrap, e.g. unshare, when given)
// and waits until its first boot says "boardlinkd started".
func startAgent(ctx context.Context, wrap []string, bin string, args ...string) (*agentProc, error) {
	argv := append(append(wrap, bin), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	g, err := startGroup(cmd)
	if err != nil {
		return nil, err
	}
	a := &agentProc{group: g, supervisor: cmd.Process.Pid, log: newLogLines(stderr)}
	if err := a.log.wait(ctx, g.done, "boardlinkd started"); err != nil {
		g.stop()
		return nil, fmt.Errorf("boardlinkd: %w\n%s", err, a.log)
	}
	m := bootRE.FindStringSubmatch(a.log.String())
	if m == nil {
		g.stop()
		return nil, fmt.Errorf("boardlinkd did not log its boot's pid:\n%s", a.log)
	}
	a.agent, _ = strconv.Atoi(m[1])
	return a, nil
}

// logLines collects a process's log lines, and tells waiters of each.
type logLines struct {
	mu    sync.Mutex
	lines []string
	more  chan struct{} // closed and replaced at every line
}

func newLogLines(r io.Reader) *logLines {
	l := &logLines{more: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l.mu.Lock()
			l.lines = append(l.lines, sc.Text())
			close(l.more)
			l.more = make(chan struct{})
			l.mu.Unlock()
		}
	}()
	return l
}

// wait returns once a line holds s, or fails when done closes.
func (l *logLines) wait(ctx context.Context, done <-chan struct{}, s string) error {
	seen := 0
	for {
		l.mu.Lock()
		for ; seen < len(l.lines); seen++ {
			if strings.Contains(l.lines[seen], s) {
				l.mu.Unlock()
				return nil
			}
		}
		more := l.more
		l.mu.Unlock()
		select {
		case <-more:
		case <-done:
			return fmt.Errorf("exited before logging %q", s)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(30 * time.Second):
			return fmt.Errorf("no %q after 30s", s)
		}
	}
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// procStatus returns a /proc/PID/status field in KiB (VmRSS, VmHWM).
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// clockTick is the unit of /proc/PID/stat's times: USER_HZ, 100 on Linux.
const clockTick = 10 * time.Millisecond

// machineCPU returns the CPU time every CPU of the machine spent busy
// since it booted: user, nice, system, irq and softirq of /proc/stat's
// first line (not idle, iowait or the hypervisor's steal).
func machineCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, errors.New("/proc/stat: no cpu line")
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7} { // user nice system (idle iowait) irq softirq
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += n
	}
	return time.Duration(busy) * clockTick, nil
}

// procCPU returns the CPU time pid spent, user plus system
// (utime+stime of /proc/PID/stat).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name in parentheses may hold spaces: fields count from
	// after its closing one; utime and stime are fields 14 and 15.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("unreadable /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(u+s) * clockTick, nil
}
