package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"time"

	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// startedDelay is how long exec.run waits before it announces a command
// whose stdin is not streamed with exec.started.
const startedDelay = 20 * time.Millisecond

// execRun answers exec.run: it starts the command as exec.start would,
// waits for its end and answers with its record and the output that went
// to no stream, so that a short command costs one round trip.
func (s *session) execRun(ctx context.Context, c *transport.Conn, params json.RawMessage) (any, error) {
	var p proto.ExecRunParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	var (
		eio            ExecIO
		streams        []*transport.Stream
		stdout, stderr *capture
	)
	defer func() {
		for _, st := range streams {
			st.Close()
		}
	}()
	for _, out := range []struct {
		field string
		id    uint32
		w     *io.Writer
		cap   **capture
	}{{"stdout", p.Stdout, &eio.Stdout, &stdout}, {"stderr", p.Stderr, &eio.Stderr, &stderr}} {
		if out.id == 0 {
			if p.MaxOutput > 0 { // else only counted, as a stream of 0 is
				*out.cap = &capture{max: p.MaxOutput}
				*out.w = *out.cap
			}
			continue
		}
		st, err := attach(c, out.field, out.id)
		if err != nil {
			return nil, err
		}
		streams = append(streams, st)
		*out.w = st
	}
	switch {
	case p.StdinStream != 0:
		st, err := attach(c, "stdin_stream", p.StdinStream)
		if err != nil {
			return nil, err
		}
		streams = append(streams, st)
		eio.Stdin = st
	case len(p.Stdin) > 0:
		eio.Stdin = bytes.NewReader(p.Stdin)
	}
	cmd, err := s.results.Start(proto.ExecStartParams{Argv: p.Argv, Shell: p.Shell, Env: p.Env, ClearEnv: p.ClearEnv,
		Cwd: p.Cwd, TimeoutMs: p.TimeoutMs, KillSignal: p.KillSignal}, eio)
	if err != nil {
		return nil, err
	}
	if !s.own(cmd) {
		s.a.execs.Kill(cmd.ID()) // the connection ended while it started
	}
	announce := func() {
		_ = c.Notify(ctx, proto.NoteExecStarted, proto.ExecStarted{Token: p.Started, ID: cmd.ID(), PID: cmd.PID()})
	}
	switch {
	case p.StdinStream != 0:
		announce() // stdin flows once the caller has it
	case p.Started != "":
		// Only a command that outlives startedDelay is announced: the
		// caller needs the id to cancel it, and a short one is answered
		// before a person could press Ctrl-C.
		t := time.NewTimer(startedDelay)
		defer t.Stop()
		select {
		case <-cmd.Done():
		case <-t.C:
			announce()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	select {
	case <-cmd.Done():
		s.disown(cmd)
	case <-ctx.Done():
		// The connection ended: the session kills what it owns.
		return nil, ctx.Err()
	}
	res, err := s.a.execs.Wait(ctx, cmd.ID())
	if err != nil {
		return nil, err
	}
	out := proto.NewExecRunResult(res)
	if stdout != nil {
		out.Stdout, out.Truncated = stdout.buf, stdout.truncated
	}
	if stderr != nil {
		out.Stderr, out.Truncated = stderr.buf, out.Truncated || stderr.truncated
	}
	return out, nil
}

// own makes cmd die with the connection (session.end kills what it owns);
// false if the connection already ended.
func (s *session) own(cmd *Command) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.owned == nil {
		return false
	}
	s.owned[cmd.ID()] = cmd
	return true
}

func (s *session) disown(cmd *Command) {
	s.mu.Lock()
	delete(s.owned, cmd.ID())
	s.mu.Unlock()
}

// capture keeps the first max bytes written to it and counts the rest as
// truncated; it never fails, so the command is never held up.
type capture struct {
	buf       []byte
	max       int
	truncated bool
}

func (c *capture) Write(p []byte) (int, error) {
	keep := p[:min(len(p), c.max-len(c.buf))]
	c.buf = append(c.buf, keep...)
	c.truncated = c.truncated || len(keep) < len(p)
	return len(p), nil
}
