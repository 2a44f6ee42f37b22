// Command bootstrap measures how fast boardlink bootstrap puts the agent
// on a board through its shell, beside ZMODEM (lrzsz's sz on the host, rz
// on the board) on the same line: a pty carrying an interactive /bin/sh
// (the board), behind a simulated serial line paced at -baud (linetest,
// 10 bits per byte) that relays the pty to the host.
//
// All move the same bytes: the agent gzipped, as bootstrap sends it when
// the board has gzip. The bootstrap figures (typing base64 into the
// shell, or its ZMODEM path: rz on the board) are each the whole run up
// to the agent on the board and checked (listen, prompt, probe, chunks
// each checked by sha256, join, decompress), not its start; the plain
// ZMODEM figure is sz's run alone, started at the shell prompt, the file
// checked afterwards.
// Each prints payload bytes per second and the share of the line rate,
// the median of -runs runs with min and max.
//
// Run it from the module root (sz and rz: Debian package lrzsz):
//
//	go run ./bench/bootstrap                     # the agent at 3 Mbaud
//	go run ./bench/bootstrap -baud 115200 -agent /usr/bin/busybox
package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"

	"github.com/boardlink/boardlink/dispatcher/bootstrap"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
)

func main() {
	baud := flag.Int("baud", 3000000, "line rate in bits per second (10 bits per byte)")
	agent := flag.String("agent", "", "the ELF file to send (default: boardlinkd, built stripped)")
	runs := flag.Int("runs", 3, "transfers per method")
	chunk := flag.Int("chunk", bootstrap.DefaultChunkSize, "bootstrap's chunk size")
	flag.BoolVar(&verbose, "v", false, "show what bootstrap types and reads")
	flag.Parse()
	if err := run(*baud, *agent, *runs, *chunk); err != nil {
		fmt.Fprintln(os.Stderr, "bench/bootstrap:", err)
		os.Exit(1)
	}
}

var verbose bool

func run(baud int, agent string, runs, chunk int) error {
	tmp, err := os.MkdirTemp("", "bench-bootstrap-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if agent == "" {
		agent = filepath.Join(tmp, "boardlinkd")
		cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", agent, "./cmd/boardlinkd")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build: %w\n%s", err, out)
		}
	}
	bin, err := os.ReadFile(agent)
	if err != nil {
		return err
	}
	// What both move: the agent gzipped as bootstrap gzips it.
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	_, _ = zw.Write(bin)
	_ = zw.Close()
	gzFile := filepath.Join(tmp, "boardlinkd.gz")
	if err := os.WriteFile(gzFile, gz.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Printf("%s: %d bytes, %d gzipped; line %d baud (%.0f bytes/s)\n", agent, len(bin), gz.Len(), baud, float64(baud)/10)

	methods := []struct {
		name string
		run  func(ctx context.Context, b *board) (time.Duration, error)
	}{
		{"bootstrap base64", func(ctx context.Context, b *board) (time.Duration, error) {
			return viaBootstrap(ctx, b, agent, bin, chunk, "base64")
		}},
		{"bootstrap zmodem", func(ctx context.Context, b *board) (time.Duration, error) {
			return viaBootstrap(ctx, b, agent, bin, chunk, "zmodem")
		}},
		{"plain sz/rz", func(ctx context.Context, b *board) (time.Duration, error) {
			return viaZmodem(ctx, b, gzFile, gz.Bytes())
		}},
	}
	for _, m := range methods {
		var took []time.Duration
		for i := 0; i < runs; i++ {
			d, err := func() (time.Duration, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
				defer cancel()
				b, err := newBoard(tmp, baud)
				if err != nil {
					return 0, err
				}
				defer b.close()
				return m.run(ctx, b)
			}()
			if errors.Is(err, exec.ErrNotFound) {
				fmt.Printf("%-18s skipped: %v (Debian package lrzsz)\n", m.name, err)
				break
			}
			if err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			took = append(took, d)
		}
		if len(took) == 0 {
			continue
		}
		slices.Sort(took)
		rate := func(d time.Duration) float64 { return float64(gz.Len()) / d.Seconds() }
		med := took[len(took)/2]
		fmt.Printf("%-18s %8.0f bytes/s (%4.1f%% of the line), %v median of %d, min %v, max %v\n", m.name,
			rate(med), 100*rate(med)/(float64(baud)/10), med.Round(time.Millisecond), len(took),
			took[0].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
	}
	return nil
}

// board is an interactive sh on a pty, reached through a paced line.
type board struct {
	dir    string
	line   *linetest.Line
	host   *linetest.Port
	master *os.File
	slave  *os.File
	sh     *exec.Cmd
	relays chan struct{}
}

func newBoard(tmp string, baud int) (*board, error) {
	dir, err := os.MkdirTemp(tmp, "board-")
	if err != nil {
		return nil, err
	}
	master, slave, err := pty.Open()
	if err != nil {
		return nil, err
	}
	b := &board{dir: dir, master: master, slave: slave, relays: make(chan struct{}, 2),
		line: linetest.New(linetest.Config{Baud: baud})}
	b.sh = exec.Command("/bin/sh", "-i")
	b.sh.Dir = dir
	b.sh.Stdin, b.sh.Stdout, b.sh.Stderr = slave, slave, slave
	b.sh.Env = append(os.Environ(), "PS1=$ ", "ENV=")
	b.sh.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := b.sh.Start(); err != nil {
		master.Close()
		slave.Close()
		return nil, err
	}
	b.host = b.line.Host()
	boardEnd := b.line.Board()
	go b.relay(boardEnd, master)
	go b.relay(master, boardEnd)
	return b, nil
}

func (b *board) relay(dst io.Writer, src io.Reader) {
	_, _ = io.Copy(dst, src)
	b.relays <- struct{}{}
}

func (b *board) close() {
	_ = b.sh.Process.Kill()
	_ = b.sh.Wait()
	b.host.Close()
	b.line.Board().Close()
	b.master.Close()
	b.slave.Close()
	for range 2 {
		<-b.relays
	}
}

func viaBootstrap(ctx context.Context, b *board, agent string, bin []byte, chunk int, enc string) (time.Duration, error) {
	o := bootstrap.Options{Agent: agent, Token: strings.Repeat("t", 16),
		Dir: filepath.Join(b.dir, "bl"), NoStart: true, ChunkSize: chunk, Listen: 100 * time.Millisecond, Encoding: enc}
	if verbose {
		o.Trace = os.Stderr
	}
	start := time.Now()
	res, err := bootstrap.Run(ctx, b.host, o)
	took := time.Since(start)
	if err != nil {
		return 0, err
	}
	if got, _ := os.ReadFile(res.Remote); !bytes.Equal(got, bin) {
		return 0, errors.New("the agent on the board differs")
	}
	return took, nil
}

// viaZmodem types rz into the shell, runs sz on the host end of the line
// and waits for the shell's word that rz ended.
func viaZmodem(ctx context.Context, b *board, file string, want []byte) (time.Duration, error) {
	sz, err := exec.LookPath("sz")
	if err != nil {
		return 0, err
	}
	if _, err := exec.LookPath("rz"); err != nil {
		return 0, err
	}
	shown := &waiter{}
	go func() { _, _ = io.Copy(shown, b.host) }()
	if _, err := io.WriteString(b.host, "stty -echo; echo RE''ADY\n"); err != nil {
		return 0, err
	}
	if err := shown.wait(ctx, "READY"); err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := io.WriteString(b.host, "rz -b -y -q; echo RZ''DONE:$?\n"); err != nil {
		return 0, err
	}
	// sz reads the line through a pipe: the copier above hands it over.
	pr, pw, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer pr.Close()
	shown.setTee(pw)
	cmd := exec.CommandContext(ctx, sz, "-b", "-q", file)
	cmd.Stdin, cmd.Stdout = pr, b.host
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	shown.setTee(nil)
	pw.Close()
	if err != nil {
		return 0, fmt.Errorf("sz: %w: %s", err, stderr.String())
	}
	if err := shown.wait(ctx, "RZDONE:0"); err != nil {
		return 0, err
	}
	took := time.Since(start)
	got, _ := os.ReadFile(filepath.Join(b.dir, filepath.Base(file)))
	if sha256.Sum256(got) != sha256.Sum256(want) {
		return 0, fmt.Errorf("rz wrote %d bytes, not the %d sent", len(got), len(want))
	}
	return took, nil
}

// waiter keeps what the board printed and, while a tee is set, hands it
// on (to sz).
type waiter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	tee  io.Writer
	more chan struct{}
}

func (w *waiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.tee != nil {
		_, _ = w.tee.Write(p)
	}
	if w.more != nil {
		close(w.more)
		w.more = nil
	}
	return len(p), nil
}

func (w *waiter) setTee(t io.Writer) {
	w.mu.Lock()
	w.tee = t
	w.mu.Unlock()
}

// wait waits until text has been printed, and forgets what came before.
func (w *waiter) wait(ctx context.Context, text string) error {
	for {
		w.mu.Lock()
		if i := bytes.Index(w.buf.Bytes(), []byte(text)); i >= 0 {
			w.buf.Next(i + len(text))
			w.mu.Unlock()
			return nil
		}
		if w.more == nil {
			w.more = make(chan struct{})
		}
		more := w.more
		w.mu.Unlock()
		select {
		case <-more:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %q: %w", text, ctx.Err())
		}
	}
}
