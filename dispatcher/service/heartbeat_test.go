package service

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
)

// frozenRelay forwards TCP connections to a board until frozen; then it
// reads nothing more and closes nothing, as a hung board or a cut cable
// would: only the heartbeat's timeout can tell.
type frozenRelay struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  []net.Conn
	frozen bool
}

// startFrozenRelay relays to the board at addr (wss://HOST:PORT); its
// addr reaches the board through it.
func startFrozenRelay(t *testing.T, addr string) (*frozenRelay, string) {
	t.Helper()
	scheme, hostport, _ := strings.Cut(addr, "://")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &frozenRelay{ln: ln, target: hostport}
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range r.conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", r.target)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, c, b)
			if r.frozen {
				stopReading(c, b)
			}
			r.mu.Unlock()
			go io.Copy(b, c) // their end leaves both open
			go io.Copy(c, b)
		}
	}()
	return r, scheme + "://" + ln.Addr().String()
}

func (r *frozenRelay) freeze() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.frozen = true
	stopReading(r.conns...)
}

func stopReading(cs ...net.Conn) {
	for _, c := range cs {
		c.SetReadDeadline(time.Unix(1, 0))
	}
}

// TestHeartbeatSilentBoard: an online board costs the service no
// goroutine of the monitor's (its heartbeat is a timer), and a board that
// falls silent with its connection open is seen offline by the
// heartbeat's timeout, while the others stay idle.
func TestHeartbeatSilentBoard(t *testing.T) {
	l := startLab(t, labOptions{boards: 2, ttl: time.Minute})
	l.waitIdle()
	silent := l.sim.Boards[1]
	r, addr := startFrozenRelay(t, silent.Addr())
	l.stopService()
	for i := range l.cfg.Boards {
		if l.cfg.Boards[i].ID == silent.ID {
			l.cfg.Boards[i].Address = addr
		}
	}
	l.start(nil)
	l.waitIdle()
	testenv.Eventually(t, "no monitor goroutine while every board is online", func() bool {
		buf := make([]byte, 4<<20)
		buf = buf[:runtime.Stack(buf, true)]
		return !bytes.Contains(buf, []byte("service.(*Service).dialLoop")) && !bytes.Contains(buf, []byte("service.(*Service).monitor"))
	})

	r.freeze()
	off := l.waitState(silent.ID, Offline)
	if !strings.Contains(off.Reason, "heartbeat") {
		t.Errorf("offline for %q, want the heartbeat's timeout", off.Reason)
	}
	if b, err := l.svc.Board(l.sim.Boards[0].ID); err != nil || b.State != Idle {
		t.Errorf("the other board: %+v, %v", b, err)
	}
}
