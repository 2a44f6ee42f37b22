// Command linemux measures what a call over a serial line costs when each
// call is a new client (as each `boardlink exec` is a new process): opening
// the line directly (listen for the agent's beacon, open a session,
// authenticate), and through the line's mux (package linemux), beside one
// exec round trip on a session that is already open.
//
// The board is an agent in this process on one side of a pty; the other
// side is served on a unix socket the way QEMU's -chardev
// socket,server=on serves a board's UART: one client at a time, a new one
// replacing the old, and what the board prints with no client there is
// lost. Each exec runs `true` with -n calls per case, -gap apart: the
// time a new boardlink process takes to start, in which what the agent
// says after the last session ends (its first beacon) reaches no one.
//
// Run it from the module root:
//
//	go run ./bench/linemux
//	go run ./bench/linemux -n 10
package main

import (
	"context"
	"crypto/ed25519"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/creack/pty"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/linemux"
	"github.com/boardlink/boardlink/dispatcher/lineshare"
	"golang.org/x/term"
)

const token = "bench-linemux-token-0123456789"

func main() {
	n := flag.Int("n", 10, "calls per case")
	gap := flag.Duration("gap", 50*time.Millisecond, "pause before each new client, as a new process takes to start")
	flag.Parse()
	if err := run(*n, *gap); err != nil {
		fmt.Fprintln(os.Stderr, "linemux:", err)
		os.Exit(1)
	}
}

func run(n int, gap time.Duration) error {
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "bench-linemux-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	addr, stop, err := startBoard(ctx, tmp)
	if err != nil {
		return err
	}
	defer stop()
	opts := dispatcher.DialOptions{Token: token, Trust: dispatcher.NewKnownBoards("")}
	exec := func(c *dispatcher.Client) error {
		res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"true"}})
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("exit %d", res.ExitCode)
		}
		return err
	}
	newClient := func(o dispatcher.DialOptions) func() error {
		return func() error {
			c, err := dispatcher.Dial(ctx, addr, o)
			if err != nil {
				return err
			}
			defer c.Close()
			return exec(c)
		}
	}

	c, err := dispatcher.Dial(ctx, addr, opts)
	if err != nil {
		return err
	}
	rt, err := measure(n, gap, func() error { return exec(c) })
	c.Close()
	if err != nil {
		return err
	}
	direct, err := measure(n, gap, newClient(opts))
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}

	dir := filepath.Join(tmp, "run")
	var muxes sync.WaitGroup
	muxCtx, stopMux := context.WithCancel(ctx)
	defer func() { stopMux(); muxes.Wait() }()
	shared := opts
	shared.Lines = &dispatcher.LineShare{Dir: dir, Start: func(ctx context.Context, addr string) error {
		m, err := linemux.Listen(ctx, linemux.Config{Addr: addr, Dial: opts, Dir: dir, Idle: -1})
		if err != nil {
			return err
		}
		muxes.Go(func() { _ = m.Serve(muxCtx) })
		return nil
	}}
	if err := lineshare.EnsureDir(dir); err != nil {
		return err
	}
	first, err := measure(1, gap, newClient(shared)) // starts the mux
	if err != nil {
		return fmt.Errorf("mux: %w", err)
	}
	mux, err := measure(n, gap, newClient(shared))
	if err != nil {
		return fmt.Errorf("mux: %w", err)
	}

	fmt.Printf("%d calls per case, %v apart; a unix socket served as QEMU's chardev, to an agent on a pty\n", n, gap)
	report("one exec round trip, session open", rt, nil)
	report("a new client per exec, line opened directly", direct, nil)
	report("the first call through the mux (starts it)", first, nil)
	report("a new client per exec, through the line mux", mux, &rt)
	return nil
}

// measure runs f n times and returns each run's duration, less the gap
// a new client waits before it starts.
func measure(n int, gap time.Duration, f func() error) ([]time.Duration, error) {
	var d []time.Duration
	for range n {
		time.Sleep(gap) // a benchmark's pause, not a test's wait
		start := time.Now()
		if err := f(); err != nil {
			return nil, err
		}
		d = append(d, time.Since(start))
	}
	return d, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// report prints the median and every run in ms; with against (the runs to
// compare with), the median and the worst run as multiples of theirs.
func report(what string, d []time.Duration, against *[]time.Duration) {
	each := make([]string, len(d))
	for i, x := range d {
		each[i] = ms(x)
	}
	fmt.Printf("%-46s %8s ms/exec median  (each: %s)\n", what, ms(median(d)), strings.Join(each, " "))
	if against != nil {
		base := float64(median(*against))
		fmt.Printf("%-46s %8.2fx one exec round trip (worst call: %.2fx)\n", "",
			float64(median(d))/base, float64(slices.Max(d))/base)
	}
}

// startBoard runs an agent on a pty and serves the pty's other side on a
// unix socket as QEMU does; it returns the line's address.
func startBoard(ctx context.Context, dir string) (string, func(), error) {
	b, err := sim.Open(filepath.Join(dir, "board"), sim.Options{ID: "bench-board"})
	if err != nil {
		return "", nil, err
	}
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		return "", nil, err
	}
	execs := agent.NewExecs(agent.ExecOptions{})
	a := agent.New(b, execs, agent.Config{Auth: agent.AuthConfig{Key: key, Tokens: []agent.Token{{Name: "bench", Value: token}}}})
	master, uart, err := pty.Open()
	if err != nil {
		return "", nil, err
	}
	if _, err := term.MakeRaw(int(uart.Fd())); err != nil {
		return "", nil, err
	}
	srv := agent.NewLineSerialServer(a, "pty", master)
	if err := srv.Start(ctx); err != nil {
		return "", nil, err
	}
	sock := filepath.Join(dir, "uart.sock")
	cd, err := serveChardev(sock, uart)
	if err != nil {
		return "", nil, err
	}
	return "unix://" + sock, func() {
		cd.Close()
		uart.Close()
		_ = srv.Stop(context.Background())
		_ = execs.Shutdown(context.Background())
	}, nil
}

// chardev serves a UART on a unix socket as QEMU's chardev does.
type chardev struct {
	ln   net.Listener
	mu   sync.Mutex
	cur  net.Conn
	uart io.Writer
}

func serveChardev(sock string, uart io.ReadWriter) (*chardev, error) {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	cd := &chardev{ln: ln, uart: uart}
	go func() { // the board's output goes to the client there is, if any
		buf := make([]byte, 4096)
		for {
			n, err := uart.Read(buf)
			if err != nil {
				return
			}
			cd.mu.Lock()
			if cd.cur != nil {
				_, _ = cd.cur.Write(buf[:n])
			}
			cd.mu.Unlock()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cd.mu.Lock()
			if cd.cur != nil {
				cd.cur.Close()
			}
			cd.cur = c
			cd.mu.Unlock()
			go func() { _, _ = io.Copy(uart, c) }()
		}
	}()
	return cd, nil
}

func (cd *chardev) Close() {
	cd.ln.Close()
	cd.mu.Lock()
	if cd.cur != nil {
		cd.cur.Close()
	}
	cd.mu.Unlock()
}
