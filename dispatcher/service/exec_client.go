package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// ExecStream runs a command on a board under lease (or none) through the
// service's exec stream: what sio.Stdin gives is its input (r.Stdin is
// set from it), its output goes to sio.Stdout and sio.Stderr as it comes,
// and with r.Tty each size on sio.Resize is the terminal's. Canceling ctx
// cancels the command (TERM) and still returns its record when the
// service sends it within a few seconds. A Read of sio.Stdin still
// pending when it returns is left to end by itself (a terminal may never
// reach EOF); nothing else outlives the call.
func (c *Client) ExecStream(ctx context.Context, id, lease string, r ExecStreamRequest, sio ExecIO) (ExecOutcome, error) {
	r.Stdin = sio.Stdin != nil
	ws, err := c.dialStream(ctx, "/api/v1/boards/"+url.PathEscape(id)+"/exec/stream", lease)
	if err != nil {
		return ExecOutcome{}, err
	}
	ws.SetReadLimit(maxFrame)
	// Input is written without a bound: a command may leave its stdin
	// unread as long as it likes (the service reads none meanwhile, and
	// this write waits in the socket), and a service gone shows in
	// readOutput, whose end closes the socket under the write. The
	// client pings too: the service hears it while it sends nothing.
	w := newWSWriter(ws, streamPing, 0, nil)
	defer func() {
		// The outcome came (the service closes its end next), or the
		// stream failed: the socket goes first, so that a write of
		// input still waiting ends.
		ws.Close()
		w.finish(nil)
	}()
	if err := w.sendJSON(ExecStreamInput{Start: &r}); err != nil {
		return ExecOutcome{}, fmt.Errorf("exec stream: sending the start: %w", err)
	}
	if sio.Stdin != nil {
		go pumpStdin(sio.Stdin, w)
	}
	if r.Tty && sio.Resize != nil {
		go func() {
			for {
				select {
				case <-w.gone:
					return
				case sz, ok := <-sio.Resize:
					if !ok {
						return
					}
					if sz.Rows > 0 && sz.Cols > 0 { // a terminal that does not know its size
						_ = w.sendJSON(ExecStreamInput{Resize: &TermSize{Rows: sz.Rows, Cols: sz.Cols}})
					}
				}
			}
		}()
	}
	// Canceled: the command is asked to end, and its record awaited a
	// while; the request may wait behind input the command has not read.
	stop := context.AfterFunc(ctx, func() {
		time.AfterFunc(cancelGrace, func() { ws.Close() })
		_ = w.sendJSON(ExecStreamInput{Cancel: true})
	})
	defer stop()
	out, err := readOutput(ws, w, sio)
	if err != nil && ctx.Err() != nil {
		return out, fmt.Errorf("exec stream: %w (%w)", context.Cause(ctx), err)
	}
	return out, err
}

// pumpStdin sends in to the command, in binary messages, and its end.
func pumpStdin(in io.Reader, w *wsWriter) {
	buf := make([]byte, stdinChunk)
	for {
		n, err := in.Read(buf)
		if n > 0 && w.send(websocket.BinaryMessage, append([]byte(nil), buf[:n]...)) != nil {
			return
		}
		if errors.Is(err, io.EOF) {
			_ = w.sendJSON(ExecStreamInput{EOF: true})
			return
		}
		if err != nil {
			return
		}
	}
}

// readOutput is the client's one reader: it copies the command's output
// to sio until the final record or an error comes.
func readOutput(ws *websocket.Conn, w *wsWriter, sio ExecIO) (ExecOutcome, error) {
	// The service pings every streamPing: silence longer than
	// streamIdle is a service, or a network, gone.
	idle := streamIdle // read once: a reader may outlive a test that set it
	alive := func() { _ = ws.SetReadDeadline(time.Now().Add(idle)) }
	alive()
	ws.SetPingHandler(func(data string) error {
		alive()
		w.pong(data)
		return nil
	})
	for {
		kind, raw, err := ws.ReadMessage()
		if err != nil {
			return ExecOutcome{}, fmt.Errorf("exec stream: the service ended it without the command's outcome: %w", err)
		}
		alive()
		if kind == websocket.TextMessage {
			var f ExecFrame
			if err := json.Unmarshal(raw, &f); err != nil {
				return ExecOutcome{}, fmt.Errorf("exec stream: a bad message: %w", err)
			}
			switch {
			case f.Error != nil:
				return ExecOutcome{}, f.Error
			case f.Outcome != nil:
				return *f.Outcome, nil
			}
			continue
		}
		if len(raw) == 0 {
			return ExecOutcome{}, errors.New("exec stream: an empty output message")
		}
		var out io.Writer
		switch raw[0] {
		case StreamStdout:
			out = sio.Stdout
		case StreamStderr:
			out = sio.Stderr
		default:
			return ExecOutcome{}, fmt.Errorf("exec stream: output of an unknown stream %d", raw[0])
		}
		if out != nil {
			if _, err := out.Write(raw[1:]); err != nil {
				return ExecOutcome{}, err
			}
			alive() // the wait was this end's, not a silence of the service's
		}
	}
}

// dialStream opens a WebSocket on the API at path, authenticated as every
// request. A refusal is its *APIError.
func (c *Client) dialStream(ctx context.Context, path, lease string) (*websocket.Conn, error) {
	u := "ws" + strings.TrimPrefix(c.base, "http") + path // http -> ws, https -> wss
	d := websocket.Dialer{Proxy: http.ProxyFromEnvironment, HandshakeTimeout: 30 * time.Second,
		ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10}
	if tr, ok := c.http.Transport.(*http.Transport); ok {
		d.TLSClientConfig = tr.TLSClientConfig
	}
	h := http.Header{"Authorization": {"Bearer " + c.token}}
	if lease != "" {
		h.Set(LeaseHeader, lease)
	}
	ws, resp, err := d.DialContext(ctx, u, h)
	if err == nil {
		return ws, nil
	}
	if resp == nil {
		return nil, fmt.Errorf("exec stream: %w", err)
	}
	// Dial kept up to 1 KiB of the refusal's body.
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxFrame))
	var e struct {
		Error *APIError `json:"error"`
	}
	if json.Unmarshal(raw, &e) != nil || e.Error == nil {
		return nil, &APIError{Status: resp.StatusCode, Reason: ReasonInternal,
			Message: fmt.Sprintf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(raw)))}
	}
	return nil, e.Error
}
