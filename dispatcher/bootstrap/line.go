package bootstrap

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxHeld bounds what the line keeps of text nobody waited for yet: the
// oldest goes first (a board that floods its console loses nothing we
// need, since markers and prompts are at the end).
const maxHeld = 1 << 20

// deadliner is a line whose blocked reads and writes can be cut short
// (net.Conn, a pty's *os.File).
type deadliner interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// line reads a board's console in one goroutine and keeps what it read,
// so that the shell session can wait for text (a prompt, a marker) while
// it types.
type line struct {
	rw    io.ReadWriter
	trace io.Writer // -v: what is typed and read; nil for none
	// secrets are masked in the trace of what is typed.
	secrets []string

	mu     sync.Mutex
	held   []byte
	err    error         // the read error that ended the reader
	change chan struct{} // closed and replaced when held or err changes
	stop   chan struct{}
	done   chan struct{}
}

func newLine(rw io.ReadWriter, trace io.Writer) *line {
	l := &line{rw: rw, trace: trace, change: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go l.read()
	return l
}

func (l *line) read() {
	defer close(l.done)
	buf := make([]byte, 4096)
	for {
		n, err := l.rw.Read(buf)
		select {
		case <-l.stop:
			return // what came after close is the next reader's
		default:
		}
		l.mu.Lock()
		if n > 0 {
			l.tracef("read %q", buf[:n])
			l.held = append(l.held, buf[:n]...)
			if over := len(l.held) - maxHeld; over > 0 {
				l.held = append(l.held[:0], l.held[over:]...)
			}
		}
		if err != nil {
			l.err = err
		}
		if n > 0 || err != nil {
			close(l.change)
			l.change = make(chan struct{})
		}
		l.mu.Unlock()
		if err != nil {
			return
		}
		// A serial port's reads time out now and then (n == 0): read on.
	}
}

func (l *line) tracef(format string, args ...any) {
	if l.trace != nil {
		fmt.Fprintf(l.trace, "bootstrap: "+format+"\n", args...)
	}
}

// close stops the reader, leaving the line to the next user: its blocked
// read is cut short where the line allows it (a socket, a pollable pty);
// a serial port's reads return by themselves.
func (l *line) close() {
	close(l.stop)
	d, ok := l.rw.(deadliner)
	if ok && d.SetReadDeadline(time.Now()) == nil {
		<-l.done
		_ = d.SetReadDeadline(time.Time{})
		return
	}
	// A serial port's read returns within its timeout; a read that
	// blocks for good (a file in blocking mode) ends with the line, and
	// drops what it got then.
	select {
	case <-l.done:
	case <-time.After(250 * time.Millisecond):
	}
}

// wait waits until match finds what it wants in the text held, and
// consumes the text up to the end match returns. It fails when the line
// fails or ctx ends; on failure, the text held is left for tail.
func (l *line) wait(ctx context.Context, match func([]byte) (end int, ok bool)) ([]byte, error) {
	for {
		l.mu.Lock()
		if end, ok := match(l.held); ok {
			got := bytes.Clone(l.held[:end])
			l.held = append(l.held[:0], l.held[end:]...)
			l.mu.Unlock()
			return got, nil
		}
		err, change := l.err, l.change
		l.mu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("reading the line: %w", err)
		}
		select {
		case <-change:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// drop forgets what is held (what came before a command of ours).
func (l *line) drop() {
	l.mu.Lock()
	l.held = l.held[:0]
	l.mu.Unlock()
}

// tail is the last n bytes held, for error messages.
func (l *line) tail(n int) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.held[max(0, len(l.held)-n):])
}

// write types b; what is traced instead of it (a password) is shown.
// ctx's end cuts a blocked write short where the line allows it.
func (l *line) write(ctx context.Context, b []byte, shown string) error {
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	for _, s := range l.secrets {
		if s != "" {
			shown = strings.ReplaceAll(shown, s, "********")
		}
	}
	l.tracef("typed %s", shown)
	if d, ok := l.rw.(deadliner); ok {
		stop := context.AfterFunc(ctx, func() { _ = d.SetWriteDeadline(time.Now()) })
		defer func() {
			if !stop() {
				_ = d.SetWriteDeadline(time.Time{})
			}
		}()
	}
	if _, err := l.rw.Write(b); err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return fmt.Errorf("writing to the line: %w", err)
	}
	return nil
}

// typeLine types s and a newline, traced as it is.
func (l *line) typeLine(ctx context.Context, s string) error {
	return l.write(ctx, []byte(s+"\n"), strconv.Quote(s+"\n"))
}

// ErrCommand is a command of bootstrap's that failed on the board.
var ErrCommand = errors.New("bootstrap: a command failed on the board")

// shell runs commands in the board's shell, their output delimited by
// markers with a token of the session's, so that neither the echo of
// what is typed nor console text around it (kernel messages) is taken
// for output.
type shell struct {
	*line
	token string
	n     int // commands run, numbering the markers
}

func newShell(l *line) *shell {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return &shell{line: l, token: hex.EncodeToString(b)}
}

// marks returns the begin and end markers of the next command: as
// typed, split by an empty quoted string, so that the echo of the
// command line never holds them; and as the board prints them.
func (s *shell) marks() (typedB, typedE, begin, end string) {
	s.n++
	id := fmt.Sprintf("%s%d", s.token, s.n)
	return "BLB''" + id, "BLE''" + id, "BLB" + id, "BLE" + id
}

// cmdBody is what is typed after a command line (a here-document's
// lines), and what the trace shows instead.
type cmdBody struct {
	data  []byte
	shown string
}

func withBody(data []byte, shown string) cmdBody { return cmdBody{data, shown} }

// run runs cmd (one line, as short as the board's line editor takes) and
// returns its output and exit status; bodies are typed after it.
func (s *shell) run(ctx context.Context, timeout time.Duration, cmd string, bodies ...cmdBody) (string, int, error) {
	tb, te, begin, end := s.marks()
	line := "echo " + tb + "; " + cmd + "; echo " + te + ":$?"
	s.drop()
	if err := s.typeLine(ctx, line); err != nil {
		return "", 0, err
	}
	for _, b := range bodies {
		if err := s.write(ctx, b.data, b.shown); err != nil {
			return "", 0, err
		}
	}
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("%w: no answer within %v to %q", ErrCommand, timeout, cmd))
	defer cancel()
	endRe := regexp.MustCompile(regexp.QuoteMeta(end) + `:(\d+)[\r\n]`)
	got, err := s.wait(ctx, func(b []byte) (int, bool) {
		if m := endRe.FindIndex(b); m != nil {
			return m[1], true
		}
		return 0, false
	})
	if err != nil {
		return "", 0, err
	}
	m := endRe.FindSubmatchIndex(got)
	status, _ := strconv.Atoi(string(got[m[2]:m[3]]))
	out := got[:m[0]]
	if i := bytes.LastIndex(out, []byte(begin)); i >= 0 {
		out = out[i+len(begin):]
	}
	return string(bytes.TrimLeft(out, "\r\n")), status, nil
}

// check runs cmd and fails unless it exits 0.
func (s *shell) check(ctx context.Context, timeout time.Duration, cmd string, bodies ...cmdBody) (string, error) {
	out, status, err := s.run(ctx, timeout, cmd, bodies...)
	if err == nil && status != 0 {
		err = fmt.Errorf("%w: %q exited %d: %s", ErrCommand, cmd, status, bytes.TrimSpace([]byte(out)))
	}
	return out, err
}
