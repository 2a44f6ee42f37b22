package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport/wslink"
)

// ExecStreamRequest starts a command through GET
// /api/v1/boards/{id}/exec/stream: an exec with input, and with Tty on a
// terminal on the board. With Tty, Argv ["-"] is the login shell of the
// agent's user (as exec.start's) and the command's stdout and stderr come
// together as its stdout.
type ExecStreamRequest struct {
	ExecRequest
	// Stdin: the command reads what the client sends; without it its
	// stdin is empty.
	Stdin bool   `json:"stdin,omitempty"`
	Tty   bool   `json:"tty,omitempty"`
	Term  string `json:"term,omitempty" validate:"omitempty,max=64,printascii,excludes= "`
	// Rows and Cols are the terminal's size at the start; 0: the agent's.
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
}

// TermSize is a terminal's new size, in character cells.
type TermSize struct {
	Rows uint16 `json:"rows" validate:"min=1"`
	Cols uint16 `json:"cols" validate:"min=1"`
}

// ExecStreamInput is a text message from the client of an exec stream:
// Start first, then any of the others. Stdin's bytes go in binary
// messages.
type ExecStreamInput struct {
	Start  *ExecStreamRequest `json:"start,omitempty"`
	Resize *TermSize          `json:"resize,omitempty"`
	// EOF ends the command's stdin (on a terminal: its end-of-file
	// character).
	EOF bool `json:"eof,omitempty"`
	// Cancel ends the command as a lease's end does: TERM, and its record
	// still comes back.
	Cancel bool `json:"cancel,omitempty"`
}

// The first byte of each binary message from the service: which output
// the rest is.
const (
	StreamStdout byte = 1
	StreamStderr byte = 2
)

// Bounds and beats of an exec stream.
const (
	// maxStdinMessage bounds one binary message of input.
	maxStdinMessage = 64 << 10
	// stdinChunk and outputChunk are how much input the client, and how
	// much output the service, sends in one message.
	stdinChunk  = 32 << 10
	outputChunk = 32 << 10
	// startWait bounds the wait for the start message after the upgrade.
	startWait = 30 * time.Second
	// cancelGrace is how long a client whose context ended waits for the
	// record of the command it canceled.
	cancelGrace = 5 * time.Second
)

// The stream's clocks; variables for the tests.
var (
	// streamPing is how often the service pings the client; streamIdle
	// is how long either end hears nothing (no message, no ping, no pong)
	// before it takes the other for gone.
	streamPing = 15 * time.Second
	streamIdle = 3 * streamPing
	// writeWait bounds the close frame of either end.
	writeWait = 10 * time.Second
)

// Why the service ends a streamed command early.
var (
	errClientLeft  = errors.New("the client closed the session")
	errClientAsked = errors.New("canceled by the client")
)

// ExecIO is where a streamed command's input comes from and where its
// output goes. Nil Stdin sends no input; nil Stdout or Stderr discards
// that output. Resize delivers a terminal's new sizes (with Tty only).
type ExecIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Resize         <-chan dispatcher.Size
}

// Exec runs r on board id through its persistent connection, copying its
// output to stdout and stderr. A board a lease holds runs commands only
// under that lease, whose end cancels them (TERM, then the record comes
// back as usual); the returned cause then says why.
func (s *Service) Exec(ctx context.Context, who user, id, lease string, r ExecRequest, stdout, stderr io.Writer) (ExecOutcome, error) {
	return s.ExecStream(ctx, who, id, lease, ExecStreamRequest{ExecRequest: r}, ExecIO{Stdout: stdout, Stderr: stderr})
}

// ExecStream is Exec with input and, with r.Tty, on a terminal on the
// board: sio.Stdin is typed on it and sio.Resize changes its size.
func (s *Service) ExecStream(ctx context.Context, who user, id, lease string, r ExecStreamRequest, sio ExecIO) (ExecOutcome, error) {
	s.mu.Lock()
	c, err := s.runnableLocked(ctx, who, id, lease)
	if err != nil {
		s.mu.Unlock()
		return ExecOutcome{}, err
	}
	b := s.boards[id]
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.nextRun++
	n := s.nextRun
	if b.runs == nil {
		b.runs = map[uint64]*run{}
	}
	b.runs[n] = &run{lease: lease, cancel: cancel}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(b.runs, n)
		s.mu.Unlock()
	}()
	sio, started := s.metrics.execStarted(sio)
	var res proto.ExecResult
	timeout := time.Duration(r.TimeoutMs) * time.Millisecond
	if r.Tty {
		res, err = c.Shell(ctx, dispatcher.ShellRequest{Argv: r.Argv, Shell: r.Shell, Env: r.Env, Cwd: r.Cwd,
			Timeout: timeout, KillSignal: r.KillSignal, Term: r.Term, Size: dispatcher.Size{Rows: r.Rows, Cols: r.Cols},
			Stdin: sio.Stdin, Stdout: sio.Stdout, Resize: sio.Resize})
	} else {
		res, err = c.Exec(ctx, dispatcher.ExecRequest{Argv: r.Argv, Shell: r.Shell, Env: r.Env, Cwd: r.Cwd,
			Timeout: timeout, KillSignal: r.KillSignal, Stdin: sio.Stdin, Stdout: sio.Stdout, Stderr: sio.Stderr})
	}
	out := ExecOutcome{Result: res}
	if ctx.Err() != nil {
		out.Canceled = context.Cause(ctx).Error()
	}
	s.metrics.execDone(started, out, err)
	return out, err
}

// runnableLocked is the connection a command of who under lease (maybe
// "") runs on, on board id; or why it may not run there now.
func (s *Service) runnableLocked(ctx context.Context, who user, id, lease string) (*dispatcher.Client, error) {
	b := s.boards[id]
	if b == nil {
		return nil, fmt.Errorf("board %s: %w", id, ErrNoSuchBoard)
	}
	if err := s.accessLocked(ctx, who, b, lease); err != nil {
		return nil, err
	}
	if b.client == nil || s.stopped {
		return nil, fmt.Errorf("board %s: %w", id, ErrOffline)
	}
	return b.client, nil
}

// argvDetail is a command as the audit log records it.
func argvDetail(argv []string) string {
	d := strings.Join(argv, " ")
	if len(d) > 200 {
		d = d[:200] + "..."
	}
	return d
}

// streamUpgrader upgrades an exec stream. Its default origin check
// refuses a page of another site that would borrow a browser's session.
var streamUpgrader = websocket.Upgrader{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 4 << 10, WriteBufferSize: 32 << 10}

// hExecStream is GET /api/v1/boards/{id}/exec/stream: a WebSocket that
// carries a command's start, stdin, resizes and cancel from the client,
// and its output and final record from the service. A refusal before
// the upgrade (no token, a lease holds the board, offline) is the API's
// usual error; after it, an error frame.
func (s *Service) hExecStream(w http.ResponseWriter, r *http.Request, c *call) error {
	if !websocket.IsWebSocketUpgrade(r) {
		return &APIError{Status: http.StatusBadRequest, Reason: string(proto.ReasonInvalidParams),
			Message: "exec/stream takes a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)"}
	}
	s.mu.Lock()
	_, err := s.runnableLocked(r.Context(), c.user, c.board, c.lease)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	ws, err := streamUpgrader.Upgrade(w, r, nil)
	if err != nil {
		c.detail = "websocket upgrade: " + err.Error() // Upgrade answered
		return nil
	}
	defer ws.Close()
	c.detail = s.execSession(r.Context(), ws, c)
	return nil
}

// execSession runs one exec stream on ws, and returns what the audit log
// records of it.
func (s *Service) execSession(ctx context.Context, ws *websocket.Conn, c *call) string {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Output is written without a bound, as input is: a client may read
	// it as slowly as it likes (a pager, a terminal on hold); one gone
	// is heard no more (it pings as the service does), and readInput
	// then closes the socket under the write.
	w := newWSWriter(ws, streamPing, 0, func(err error) {
		_ = wslink.Abort(ws) // ends readInput's read of a client gone
		cancel(fmt.Errorf("%w: %w", errClientLeft, err))
	})
	ws.SetReadLimit(maxBody) // the start message, as a POST's body
	_ = ws.SetReadDeadline(time.Now().Add(startWait))
	req, err := readStart(ws)
	if err != nil {
		w.finish(ExecFrame{Error: apiError(err)})
		return "no start: " + err.Error()
	}
	detail := argvDetail(req.Argv)
	if req.Tty {
		detail = "tty: " + detail
	}
	ws.SetReadLimit(maxStdinMessage)
	sio := ExecIO{Stdout: tagWriter{w, StreamStdout}, Stderr: tagWriter{w, StreamStderr}}
	var (
		pr    *io.PipeReader
		stdin *io.PipeWriter
	)
	if req.Stdin {
		pr, stdin = io.Pipe()
		sio.Stdin = pr
	}
	var sizes chan dispatcher.Size
	if req.Tty {
		sizes = make(chan dispatcher.Size, 1)
		sio.Resize = sizes
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		readInput(ws, w, stdin, sizes, cancel)
	}()
	out, err := s.ExecStream(ctx, c.user, c.board, c.lease, *req, sio)
	if pr != nil {
		pr.Close() // a write of input the command never read ends with it
	}
	switch {
	case err != nil:
		w.finish(ExecFrame{Error: apiError(err)})
		detail += "; " + err.Error()
	default:
		w.finish(ExecFrame{Outcome: &out})
		if out.Canceled != "" {
			detail += "; canceled: " + out.Canceled
		}
	}
	// The client closes its end once it has read the outcome, which ends
	// readInput's read. Closing first would answer its pongs still on
	// the way with a reset, which some systems let cost the client what
	// it has not read yet. A client that does not close is not waited
	// for longer than its close frame was.
	select {
	case <-read:
	case <-time.After(writeWait):
	}
	ws.Close()
	<-read
	return detail
}

// readStart reads the stream's first message, which must start a command.
func readStart(ws *websocket.Conn) (*ExecStreamRequest, error) {
	kind, raw, err := ws.ReadMessage()
	if err != nil {
		return nil, fmt.Errorf("reading the start message: %w", err)
	}
	var in ExecStreamInput
	if kind != websocket.TextMessage {
		return nil, &FieldError{"start", "the first message must be a text message {\"start\": {...}}"}
	}
	if perr := proto.DecodeParams(raw, &in); perr != nil {
		return nil, perr
	}
	if in.Start == nil || in.Resize != nil || in.EOF || in.Cancel {
		return nil, &FieldError{"start", "the first message must be {\"start\": {...}} alone"}
	}
	return in.Start, nil
}

// readInput is the stream's one reader: it writes binary messages to
// stdin (nil: the command takes no input), passes resizes to sizes and
// ends when the client leaves, canceling the command, or when the
// connection is closed at the end.
func readInput(ws *websocket.Conn, w *wsWriter, stdin *io.PipeWriter, sizes chan dispatcher.Size, cancel context.CancelCauseFunc) {
	idle := streamIdle // read once: a reader may outlive a test that set it
	alive := func(string) error { return ws.SetReadDeadline(time.Now().Add(idle)) }
	_ = alive("")
	ws.SetPongHandler(alive)
	ws.SetPingHandler(func(data string) error {
		w.pong(data)
		return alive(data)
	})
	protocol := func(msg string) { cancel(fmt.Errorf("%w: %s", errClientLeft, msg)) }
	for {
		kind, raw, err := ws.ReadMessage()
		if err != nil {
			cancel(fmt.Errorf("%w: %w", errClientLeft, err))
			_ = wslink.Abort(ws) // a write of output to a client gone ends
			if stdin != nil {
				stdin.CloseWithError(err)
			}
			return
		}
		_ = alive("")
		if kind == websocket.BinaryMessage {
			if stdin == nil {
				protocol("input for a command started without stdin")
				return
			}
			// Blocks until the command reads it: the client's input
			// waits in its socket, not here. The wait was the
			// command's, not a silence of the client's.
			_, _ = stdin.Write(raw)
			_ = alive("")
			continue
		}
		var in ExecStreamInput
		if perr := proto.DecodeParams(raw, &in); perr != nil {
			protocol("a bad message: " + perr.Error())
			return
		}
		switch {
		case in.Start != nil:
			protocol("a second start")
			return
		case in.Cancel:
			cancel(errClientAsked)
		case in.EOF && stdin != nil:
			stdin.Close()
		case in.Resize != nil && sizes != nil:
			select { // a size not taken yet is stale: replace it
			case <-sizes:
			default:
			}
			sizes <- dispatcher.Size{Rows: in.Resize.Rows, Cols: in.Resize.Cols}
		}
	}
}

// wsMessage is one message for a wsWriter.
type wsMessage struct {
	kind int
	data []byte
}

// wsWriter is the one goroutine that writes a WebSocket (either
// end's): messages come to it on a channel, with a ping every ping (0:
// none) between them and the pongs its reader asks for, each written
// within wait (0: no bound; the reader's silence bound ends a write to a
// peer gone, by closing the socket).
type wsWriter struct {
	ws      *websocket.Conn
	msgs    chan wsMessage
	pongs   chan string   // the last ping not answered yet
	closing chan struct{} // closed by finish
	gone    chan struct{} // closed when it stops writing
	// onFail is called if a write fails (nil: nothing), and the writer
	// stops. It leaves the socket open: what the peer sent before it
	// left is still there for the reader.
	onFail func(error)
}

func newWSWriter(ws *websocket.Conn, ping, wait time.Duration, onFail func(error)) *wsWriter {
	w := &wsWriter{ws: ws, msgs: make(chan wsMessage), pongs: make(chan string, 1), closing: make(chan struct{}),
		gone: make(chan struct{}), onFail: onFail}
	go w.loop(ping, wait, writeWait) // read here: the clocks are a test's to set before a stream
	return w
}

func (w *wsWriter) loop(every, wait, closeWait time.Duration) {
	defer close(w.gone)
	var tick <-chan time.Time
	if every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	deadline := func() time.Time {
		if wait <= 0 {
			return time.Time{} // none
		}
		return time.Now().Add(wait)
	}
	for {
		var err error
		select {
		case m := <-w.msgs:
			_ = w.ws.SetWriteDeadline(deadline())
			err = w.ws.WriteMessage(m.kind, m.data)
		case p := <-w.pongs:
			err = w.ws.WriteControl(websocket.PongMessage, []byte(p), deadline())
		case <-tick:
			err = w.ws.WriteControl(websocket.PingMessage, nil, deadline())
		case <-w.closing:
			_ = w.ws.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(closeWait))
			return
		}
		if err != nil {
			if w.onFail != nil {
				w.onFail(err)
			}
			return
		}
	}
}

// pong has the writer answer a ping, in its turn: the reader that asks
// never waits on a write (behind input the other end does not read yet,
// the pong would wait, and the output with it). An unanswered ping is
// replaced by a newer one, whose pong is enough (RFC 6455 5.5.3).
func (w *wsWriter) pong(data string) {
	select {
	case <-w.pongs:
	default:
	}
	select {
	case w.pongs <- data:
	default:
	}
}

// send hands a message to the writer; it fails once the writer stopped.
func (w *wsWriter) send(kind int, data []byte) error {
	select {
	case w.msgs <- wsMessage{kind, data}:
		return nil
	case <-w.gone:
		return errClientLeft
	}
}

// sendJSON sends v as a text message.
func (w *wsWriter) sendJSON(v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return w.send(websocket.TextMessage, raw)
}

// finish sends last (unless nil) and the close frame, and waits until
// the writer is done. It is called once.
func (w *wsWriter) finish(last any) {
	if last != nil {
		_ = w.sendJSON(last)
	}
	close(w.closing)
	<-w.gone
}

// tagWriter sends what is written to it as binary messages tagged with
// the output they are.
type tagWriter struct {
	w   *wsWriter
	tag byte
}

func (t tagWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), outputChunk)] // the client bounds a message
		msg := make([]byte, 1+len(chunk))
		msg[0] = t.tag
		copy(msg[1:], chunk)
		if err := t.w.send(websocket.BinaryMessage, msg); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}
