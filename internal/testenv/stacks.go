package testenv

import (
	"runtime"
	"strings"
)

// Parked reports whether, at one instant, each function of fns is on the
// stack of some goroutine and every goroutine with one of them on its
// stack is parked: waiting on a channel, a lock, a timer or the network
// poller, not running, runnable nor in a system call. A test waits for it
// (with Eventually) to know that a goroutine reached a blocking call, or
// that everything a connection's goroutines were handed has been handled.
// A function is named as in a stack trace, with its package's last path
// element: "transport.(*Conn).readLoop".
func Parked(fns ...string) bool {
	seen := make(map[string]bool, len(fns))
	for _, g := range goroutines() {
		var hit bool
		for _, fn := range fns {
			if g.has(fn) {
				seen[fn], hit = true, true
			}
		}
		if hit && !g.parked() {
			return false
		}
	}
	return len(seen) == len(fns)
}

// goroutine is one goroutine of a stack dump.
type goroutine struct {
	state string   // as in the header: "select", "IO wait, 2 minutes"
	funcs []string // fully qualified, innermost first
}

func (g goroutine) has(fn string) bool {
	for _, f := range g.funcs {
		if f == fn || strings.HasSuffix(f, "/"+fn) {
			return true
		}
	}
	return false
}

func (g goroutine) parked() bool {
	state, _, _ := strings.Cut(g.state, ",")
	switch state {
	case "running", "runnable", "syscall":
		return false
	}
	return true
}

// goroutines dumps the stacks of every goroutine but the caller's.
func goroutines() []goroutine {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	blocks := strings.Split(string(buf), "\n\n")
	var gs []goroutine
	for _, b := range blocks[1:] { // the first is the caller
		lines := strings.Split(b, "\n")
		_, state, _ := strings.Cut(lines[0], "[")
		g := goroutine{state: strings.TrimSuffix(state, "]:")}
		for _, l := range lines[1:] {
			if strings.HasPrefix(l, "\t") || strings.HasPrefix(l, "created by ") {
				continue
			}
			if i := strings.LastIndex(l, "("); i > 0 {
				l = l[:i]
			}
			g.funcs = append(g.funcs, l)
		}
		gs = append(gs, g)
	}
	return gs
}
