package seriallink

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
)

// acceptOne accepts a session on e in the background.
func acceptOne(t *testing.T, e *Endpoint) <-chan transport.Link {
	ch := make(chan transport.Link, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := e.Accept(ctx)
		if err != nil {
			t.Errorf("accept: %v", err)
		}
		ch <- l
	}()
	return ch
}

func exchange(t *testing.T, hl, al transport.Link, msg string) {
	t.Helper()
	go echoOnce(al)
	if err := hl.WriteMessage(context.Background(), transport.Text, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	if _, got, err := hl.ReadMessage(); err != nil || string(got) != msg {
		t.Fatalf("exchange %q: %q %v", msg, got, err)
	}
}

// The agent process dies and a new one opens the line: the host's link
// fails promptly, a new Dial works, and the old session's frames are
// ignored.
func TestAgentRestart(t *testing.T) {
	testenv.CheckLeaks(t)
	line := linetest.New(linetest.Config{})
	crashPort := line.Board()
	he, ae1, hl, al := openPair(t, line.Host(), crashPort, testConfig(), testConfig())
	exchange(t, hl, al, "before")

	// Crash: the port goes away under the agent, no RST is sent.
	crashPort.Close()
	ae1.Close()
	ae2 := NewEndpoint(line.Board(), Config{Beacon: beaconOf("board-1"), BeaconInterval: 50 * time.Millisecond})
	defer ae2.Close()
	accepted := acceptOne(t, ae2)

	start := time.Now()
	errc := make(chan error, 1)
	go func() { _, _, err := hl.ReadMessage(); errc <- err }()
	// The host keeps writing into the void, as a real one would.
	hl.WriteMessage(context.Background(), transport.Text, []byte("lost"))
	if err := <-errc; !errors.Is(err, ErrSessionReset) {
		t.Fatalf("host read after agent restart: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("host noticed the restart after %v", d)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hl2, err := he.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	al2 := <-accepted
	exchange(t, hl2, al2, "after")

	// A late frame of the old session reaches the host: ignored.
	old := hl.(*link).tag
	line.Inject(string(wire(header{typ: typeData, tag: old, seq: 0}, []byte("stale"))))
	exchange(t, hl2, al2, "still fine")
	if _, _, err := hl.ReadMessage(); !errors.Is(err, ErrSessionReset) {
		t.Fatalf("old link: %v", err)
	}
}

// A second Dial replaces the first session at both ends.
func TestRedialReplacesSession(t *testing.T) {
	testenv.CheckLeaks(t)
	line := linetest.New(linetest.Config{})
	he, ae, hl1, al1 := openPair(t, line.Host(), line.Board(), testConfig(), testConfig())
	accepted := acceptOne(t, ae)
	hl2, err := he.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	al2 := <-accepted
	for name, l := range map[string]transport.Link{"host": hl1, "agent": al1} {
		if _, _, err := l.ReadMessage(); !errors.Is(err, ErrSessionReset) {
			t.Errorf("%s's first link: %v", name, err)
		}
	}
	exchange(t, hl2, al2, "second")
}

// readOnly fails the test on any write: Probe must only listen.
type readOnly struct {
	t *testing.T
	r io.Reader
}

func (r readOnly) Read(p []byte) (int, error) { return r.r.Read(p) }
func (r readOnly) Write(p []byte) (int, error) {
	r.t.Errorf("Probe wrote %q", p)
	return len(p), nil
}

func TestProbe(t *testing.T) {
	testenv.CheckLeaks(t)
	line := linetest.New(linetest.Config{})
	ae := NewEndpoint(line.Board(), Config{Beacon: beaconOf("board-7"), BeaconInterval: 50 * time.Millisecond})
	defer ae.Close()
	go ae.Accept(context.Background()) // starts beaconing; ends at Close
	line.Inject("[    0.000000] Booting Linux on physical CPU 0x0\r\n")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := Probe(ctx, readOnly{t, line.Host()})
	if err != nil || string(got) != `{"id":"board-7"}` {
		t.Fatalf("Probe = %q, %v", got, err)
	}
}

// A line with only a shell on it: Probe and Dial find nothing and never
// write to it.
func TestShellLine(t *testing.T) {
	testenv.CheckLeaks(t)
	line := linetest.New(linetest.Config{})
	stop := make(chan struct{})
	shellDone := make(chan struct{})
	go func() { // the board runs a login shell, not the agent
		defer close(shellDone)
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				line.Inject("buildroot login: \r\n$ ls\r\nbin  etc  usr\r\n\xfe\x00")
			}
		}
	}()
	defer func() { close(stop); <-shellDone }()

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if got, err := Probe(ctx, readOnly{t, line.Host()}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Probe on a shell = %q, %v", got, err)
	}

	he := NewEndpoint(line.Host(), Config{})
	defer he.Close()
	console := he.Console()
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := he.Dial(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial on a shell: %v", err)
	}
	if n := line.Stats().Bytes[0]; n != 0 {
		t.Fatalf("%d bytes were written towards the board", n)
	}
	buf := make([]byte, 200)
	if n, _ := io.ReadFull(console, buf); !strings.Contains(string(buf[:n]), "buildroot login: \r\n$ ls\r\n") {
		t.Fatalf("console: %q", buf[:n])
	}
}

// The peer goes silent: both ends give up within DeadAfter, whether they
// were sending or idle.
func TestDeadPeer(t *testing.T) {
	testenv.CheckLeaks(t)
	line := linetest.New(linetest.Config{})
	cfg := testConfig()
	cfg.DeadAfter = time.Second
	_, _, hl, al := openPair(t, line.Host(), line.Board(), cfg, cfg)
	exchange(t, hl, al, "alive")

	line.SetCut(true)
	start := time.Now()
	if err := hl.WriteMessage(context.Background(), transport.Text, []byte("into the void")); err != nil {
		t.Fatal(err)
	}
	for name, l := range map[string]transport.Link{"sending host": hl, "idle agent": al} {
		_, _, err := l.ReadMessage()
		if !errors.Is(err, ErrDead) {
			t.Errorf("%s: %v", name, err)
		}
		if d := time.Since(start); d > cfg.DeadAfter+cfg.DeadAfter/2 {
			t.Errorf("%s gave up after %v", name, d)
		}
	}
	if err := hl.WriteMessage(context.Background(), transport.Text, []byte("x")); !errors.Is(err, ErrDead) {
		t.Errorf("write on a dead link: %v", err)
	}
}

// Sequence numbers wrap after 65535; a long transfer must not notice.
func TestSeqWrap(t *testing.T) {
	testenv.CheckLeaks(t)
	line := linetest.New(linetest.Config{Corrupt: 0.001, Seed: 3})
	_, _, hl, al := openPair(t, line.Host(), line.Board(), testConfig(), testConfig())
	exchange(t, hl, al, "before")
	idle := func(l *link) bool {
		l.e.mu.Lock()
		defer l.e.mu.Unlock()
		return len(l.snd) == 0 && l.rcvBase == l.rcvNext
	}
	testenv.Eventually(t, "the last acknowledgements to land", func() bool { return idle(hl.(*link)) && idle(al.(*link)) })
	// Move both directions to just before the wrap.
	setSeq := func(l *link, snd, rcv uint16) {
		l.e.mu.Lock()
		defer l.e.mu.Unlock()
		if len(l.snd) != 0 || l.rcvBase != l.rcvNext {
			t.Fatal("link not idle")
		}
		l.sndUna, l.peerLimit = snd, snd+uint16(l.window)
		l.rcvBase, l.rcvNext, l.rcvHigh = rcv, rcv, rcv
	}
	setSeq(hl.(*link), 65500, 65400)
	setSeq(al.(*link), 65400, 65500)
	r := rand.New(rand.NewPCG(3, 3))
	for range 100 {
		exchange(t, hl, al, string(randBytes(r, 3000)))
	}
	hl.(*link).e.mu.Lock()
	una := hl.(*link).sndUna
	hl.(*link).e.mu.Unlock()
	if una >= 65500 {
		t.Fatalf("host did not wrap: sndUna %d", una)
	}
}

type nopLine struct{}

func (nopLine) Read([]byte) (int, error)  { return 0, io.EOF }
func (nopLine) Write([]byte) (int, error) { return 0, io.EOF }
func (nopLine) Close() error              { return nil }

// FuzzSession feeds an agent's session arbitrary CRC-valid frames (any
// type, flags, seq, ack, window, SACK bitmap) interleaved with its own
// sending; nothing may panic and the queues stay bounded.
func FuzzSession(f *testing.F) {
	f.Add([]byte("\x01\x00\x00\x01\x00\x00\x00\x00\x08\x03abc\x02\x00\x00\x01\x00\x00\x00\x02\x08\x01\xff"))
	f.Add([]byte("\x01\x01\x00\x01\x00\x05\x00\x00\x08\x00\x01\x00\x00\x01\x00\x00\x00\x00\x08\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := Config{Window: 8, MaxPayload: 32, MaxMessage: 200}
		e := NewEndpoint(nopLine{}, cfg)
		e.role = roleAgent
		e.onFrame(header{typ: typeSyn, tag: 1}, hello(&e.cfg, offer(&e.cfg)))
		e.mu.Lock()
		l := e.sess
		for range 5 {
			l.enqueue(flagMore, make([]byte, 32))
		}
		l.enqueue(0, nil)
		e.mu.Unlock()
		now := time.Now()
		for len(data) >= headerLen+1 {
			h := header{typ: data[0] % 8, flags: data[1], tag: uint16(data[2])<<8 | uint16(data[3]),
				seq: uint16(data[4])<<8 | uint16(data[5]), ack: uint16(data[6])<<8 | uint16(data[7]), wnd: data[8]}
			n := min(int(data[9]), len(data)-headerLen-1, 40)
			payload := data[headerLen+1 : headerLen+1+n]
			data = data[headerLen+1+n:]
			e.onFrame(h, payload)
			e.mu.Lock()
			now = now.Add(7 * time.Millisecond)
			e.nextWrite(now, nil)
			if l.err == nil && (len(l.snd) > l.window+1 || l.readyCost > 2*cfg.MaxMessage+msgOverhead) {
				t.Fatalf("unbounded: %d frames queued, read queue %d", len(l.snd), l.readyCost)
			}
			if len(l.ready) > 0 { // the reader takes one
				l.readyCost -= len(l.ready[0].data) + msgOverhead
				l.ready = l.ready[1:]
				if l.err == nil {
					l.deliver()
				}
			}
			e.mu.Unlock()
		}
	})
}

// A host that vanishes without its RST reaching the agent (QEMU drops what
// its socket client wrote last) is followed by one that listens before it
// writes: the agent, whose old session sees no traffic, must still speak
// within a beacon interval. With a keepalive of DeadAfter/5 (12 minutes
// here) the second Dial would wait for it.
func TestVanishedHostReplacedAtOnce(t *testing.T) {
	testenv.CheckLeaks(t)
	line := linetest.New(linetest.Config{})
	acfg := Config{Beacon: beaconOf("board-1"), BeaconInterval: 20 * time.Millisecond, DeadAfter: time.Hour}
	he1, ae, hl, al := openPair(t, line.Host(), line.Board(), testConfig(), acfg)
	exchange(t, hl, al, "first host")

	line.SetCut(true) // the first host's RST is lost
	he1.Close()
	line.SetCut(false)

	accepted := acceptOne(t, ae)
	he2 := NewEndpoint(line.Host(), testConfig())
	defer he2.Close()
	hl2, err := he2.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	al2 := <-accepted
	if _, _, err := al.ReadMessage(); !errors.Is(err, ErrSessionReset) {
		t.Errorf("the vanished host's session: %v, want a reset by the new one", err)
	}
	exchange(t, hl2, al2, "second host")
}
