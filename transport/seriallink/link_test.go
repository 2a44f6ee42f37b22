package seriallink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
)

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// The agent's end of a pty is opened by path through OpenPort, so the
// real serial code (read timeouts returning (0, nil)) runs.
func TestPtyLink(t *testing.T) {
	testenv.CheckLeaks(t)
	master, slave := testenv.RawPTY(t)
	port, err := OpenPort(slave.Name(), 115200)
	if err != nil {
		t.Fatal(err)
	}
	_, _, hl, al := openPair(t, master, port, testConfig(), testConfig())
	ctx := context.Background()

	t.Run("both ways", func(t *testing.T) {
		for i := range 20 {
			msg := fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%d,"method":"board.info"}`, i)
			if err := hl.WriteMessage(ctx, transport.Text, msg); err != nil {
				t.Fatal(err)
			}
			typ, got, err := al.ReadMessage()
			if err != nil || typ != transport.Text || !bytes.Equal(got, msg) {
				t.Fatalf("agent read %v %q %v", typ, got, err)
			}
			reply := append([]byte{1, 2, 0, 0xFE}, msg...)
			if err := al.WriteMessage(ctx, transport.Binary, reply); err != nil {
				t.Fatal(err)
			}
			typ, got, err = hl.ReadMessage()
			if err != nil || typ != transport.Binary || !bytes.Equal(got, reply) {
				t.Fatalf("host read %v %q %v", typ, got, err)
			}
		}
	})

	t.Run("large", func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 1))
		big := randBytes(r, 300<<10)
		go func() { echoOnce(al) }()
		if err := hl.WriteMessage(ctx, transport.Binary, big); err != nil {
			t.Fatal(err)
		}
		_, got, err := hl.ReadMessage()
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("echo of %d bytes: %d bytes, %v", len(big), len(got), err)
		}
	})

	t.Run("concurrent writers", func(t *testing.T) {
		const writers, each = 8, 40
		go echoN(al, writers*each)
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(w), 2))
				for i := range each {
					msg := append(fmt.Appendf(nil, "%d:%d:", w, i), randBytes(r, r.IntN(3000))...)
					if err := hl.WriteMessage(ctx, transport.Binary, msg); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		next := make([]int, writers)
		for range writers * each {
			_, got, err := hl.ReadMessage()
			if err != nil {
				t.Fatal(err)
			}
			var w, i int
			if _, err := fmt.Sscanf(string(got), "%d:%d:", &w, &i); err != nil || i != next[w] {
				t.Fatalf("writer %d message %d arrived, want %d (%v)", w, i, next[w], err)
			}
			next[w]++
		}
		wg.Wait()
	})

	if c, ok := hl.(transport.ChunkSizer); !ok || c.MaxChunk() != DefaultMaxPayload-5 {
		t.Errorf("MaxChunk: %v", c)
	}
}

func echoOnce(l transport.Link) { echoN(l, 1) }

func echoN(l transport.Link, n int) {
	for range n {
		typ, p, err := l.ReadMessage()
		if err != nil || l.WriteMessage(context.Background(), typ, p) != nil {
			return
		}
	}
}

// A thousand request/response exchanges over a line that corrupts and
// drops bytes and has kernel lines written into the board's output.
func TestNoisyLine(t *testing.T) {
	testenv.CheckLeaks(t)
	line := linetest.New(linetest.Config{Corrupt: 0.001, Drop: 0.0002, Inject: 0.05, Seed: 7})
	hcfg := testConfig()
	hcfg.ConsoleBuffer = 1 << 20 // the whole run's console text: a reader that lags under load loses none
	he, ae, hl, al := openPair(t, line.Host(), line.Board(), hcfg, testConfig())
	console := drain(he.Console())
	go echo(al)

	r := rand.New(rand.NewPCG(7, 7))
	ctx := context.Background()
	for i := range 1000 {
		typ := transport.Text
		var msg []byte
		if i%2 == 0 {
			msg = fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%d,"method":"exec.start","params":{"cmd":"%x"}}`, i, randBytes(r, r.IntN(400)))
		} else {
			typ, msg = transport.Binary, append(fmt.Appendf(nil, "%d:", i), randBytes(r, r.IntN(3000))...)
		}
		if err := hl.WriteMessage(ctx, typ, msg); err != nil {
			t.Fatalf("exchange %d: write: %v", i, err)
		}
		gotTyp, got, err := hl.ReadMessage()
		if err != nil || gotTyp != typ || !bytes.Equal(got, msg) {
			t.Fatalf("exchange %d: got %v %d bytes %v, want %v %d bytes", i, gotTyp, len(got), err, typ, len(msg))
		}
	}
	// Stop the board, let the host read all it sent, then stop the host.
	ae.Close()
	testenv.Eventually(t, "the host to read all the board sent", func() bool { return he.Stats().WireIn >= line.Stats().Bytes[1] })
	he.Close()
	text := console()
	injected := line.Injected()
	if missing, ok := inOrder(text, injected); !ok {
		t.Fatalf("console line %s missing (of %d injected)", missing, len(injected))
	}
	ls, hs := line.Stats(), he.Stats()
	t.Logf("line: %+v", ls)
	t.Logf("host: %+v", hs)
	if ls.Corrupted == 0 || ls.Lines < 100 || hs.Recovered == 0 {
		t.Errorf("the line was not noisy enough to prove anything")
	}
}

func TestTooLarge(t *testing.T) {
	testenv.CheckLeaks(t)
	line := linetest.New(linetest.Config{})
	acfg := testConfig()
	acfg.MaxMessage = 10_000
	_, _, hl, al := openPair(t, line.Host(), line.Board(), testConfig(), acfg)
	ctx := context.Background()
	go func() {
		for _, n := range []int{10_001, 5, 10_000 - msgOverhead, 50_000, 0} {
			if err := hl.WriteMessage(ctx, transport.Binary, make([]byte, n)); err != nil {
				t.Error(err)
			}
		}
	}()
	for _, want := range []int{-1, 5, 10_000 - msgOverhead, -1, 0} {
		_, got, err := al.ReadMessage()
		switch {
		case want < 0 && !errors.Is(err, transport.ErrTooLarge):
			t.Fatalf("want ErrTooLarge, got %d bytes, %v", len(got), err)
		case want >= 0 && (err != nil || len(got) != want):
			t.Fatalf("want %d bytes, got %d, %v", want, len(got), err)
		}
	}
}

// A slow reader holds the writer back instead of growing a buffer, and a
// writer that gives up mid-message leaves no half message behind.
func TestFlowControlAndAbort(t *testing.T) {
	testenv.CheckLeaks(t)
	line := linetest.New(linetest.Config{})
	cfg := testConfig()
	cfg.MaxMessage = 64 << 10
	_, _, hl, al := openPair(t, line.Host(), line.Board(), cfg, cfg)
	ctx := context.Background()

	// Fill the agent's read queue and window; nobody reads there.
	chunk := make([]byte, 1000)
	var sent int
	for {
		wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err := hl.WriteMessage(wctx, transport.Binary, chunk)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if sent++; sent > 1000 {
			t.Fatal("the writer was never held back")
		}
	}
	read := func(i int) {
		typ, got, err := al.ReadMessage()
		if err != nil || typ != transport.Binary || len(got) != len(chunk) {
			t.Fatalf("message %d: %v %d bytes, %v", i, typ, len(got), err)
		}
	}
	// Make room for a few frames, then write a message that needs more:
	// part of it is queued when the writer gives up.
	for i := range 5 {
		read(i)
	}
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if err := hl.WriteMessage(wctx, transport.Text, bytes.Repeat([]byte("x"), 20_000)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("big write: %v", err)
	}
	cancel()
	done := make(chan error, 1)
	go func() { done <- hl.WriteMessage(ctx, transport.Text, []byte("last")) }()
	for i := 5; i < sent; i++ {
		read(i)
	}
	if typ, got, err := al.ReadMessage(); err != nil || typ != transport.Text || string(got) != "last" {
		t.Fatalf("after the aborted message: %v %d bytes, %v", typ, len(got), err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestCloseResetsPeer(t *testing.T) {
	testenv.CheckLeaks(t)
	line := linetest.New(linetest.Config{})
	he, ae, hl, al := openPair(t, line.Host(), line.Board(), testConfig(), testConfig())
	if err := hl.WriteMessage(context.Background(), transport.Text, []byte("bye")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := hl.Close(); err != nil {
		t.Fatal(err)
	}
	if _, got, err := al.ReadMessage(); err != nil || string(got) != "bye" {
		t.Fatalf("message before close: %q %v", got, err)
	}
	if _, _, err := al.ReadMessage(); !errors.Is(err, ErrSessionReset) {
		t.Fatalf("agent read after host close: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("peer noticed after %v", d)
	}
	if _, _, err := hl.ReadMessage(); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("host read after close: %v", err)
	}
	hl.Close() // idempotent

	// The agent beacons again; the host can dial anew.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	accepted := make(chan transport.Link, 1)
	go func() {
		l, _ := ae.Accept(ctx)
		accepted <- l
	}()
	hl2, err := he.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	al2 := <-accepted
	go echoOnce(al2)
	if err := hl2.WriteMessage(ctx, transport.Text, []byte("again")); err != nil {
		t.Fatal(err)
	}
	if _, got, err := hl2.ReadMessage(); err != nil || string(got) != "again" {
		t.Fatalf("second session: %q %v", got, err)
	}

	// Closing the endpoint unblocks a pending read.
	errc := make(chan error, 1)
	go func() { _, _, err := hl2.ReadMessage(); errc <- err }()
	testenv.Eventually(t, "the read to block", func() bool { return testenv.Parked("seriallink.(*link).ReadMessage") })
	he.Close()
	if err := <-errc; !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("read after endpoint close: %v", err)
	}
	if _, _, err := al2.ReadMessage(); !errors.Is(err, ErrSessionReset) {
		t.Fatalf("agent read after host endpoint close: %v", err)
	}
}
