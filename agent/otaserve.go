package agent

import (
	"context"
	"encoding/json"
	"time"

	"github.com/boardlink/boardlink/agent/ota"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// defaultOTAWait bounds an ota.wait that names no timeout.
const defaultOTAWait = 30 * time.Second

// otaCall serves the ota family from the agent's Updater.
func (s *session) otaCall(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
	u := s.a.cfg.OTA
	switch r.Method {
	case proto.MethodOTAStatus:
		var p proto.BoardInfoParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		return u.Status(ctx)
	case proto.MethodOTAPlan, proto.MethodOTAStart:
		var p proto.OTAImageParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		progress := otaProgress(ctx, c, p.Progress)
		if r.Method == proto.MethodOTAPlan {
			return u.Plan(ctx, p, progress)
		}
		// A fetch from p.URL is a download like file.download's, within
		// the same limits.
		lim := s.a.cfg.Limits
		return u.Begin(ctx, p, ota.FetchLimits{MaxBytes: lim.MaxDownload, Deadline: lim.DownloadDeadline}, progress)
	case proto.MethodOTAWrite:
		// The chunks are received after this request is answered.
		return s.otaWrite(context.WithoutCancel(ctx), c, r.Params)
	case proto.MethodOTAActivate:
		var p proto.OTAActivateParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		reboot, err := u.Activate(ctx, p.ID, time.Duration(p.HoldMs)*time.Millisecond)
		if err != nil {
			return nil, err
		}
		r.AfterReply = func() { go reboot() }
		return u.Status(ctx)
	case proto.MethodOTACommit:
		var p proto.OTAIDParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		if err := u.Commit(ctx, p.ID); err != nil {
			return nil, err
		}
		return u.Status(ctx)
	case proto.MethodOTARollback:
		var p proto.OTARollbackParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		if err := u.Rollback(ctx, p.ID, p.Reason); err != nil {
			return nil, err
		}
		return u.Status(ctx)
	case proto.MethodOTAWait:
		var p proto.OTAWaitParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		wait := defaultOTAWait
		if p.TimeoutMs > 0 {
			wait = time.Duration(p.TimeoutMs) * time.Millisecond
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		return u.Wait(wctx, p.Since)
	case proto.MethodOTAAbort:
		var p proto.OTAIDParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		if err := u.Abort(ctx, p.ID); err != nil {
			return nil, err
		}
		return u.Status(ctx)
	}
	return nil, proto.Errorf(proto.ReasonMethodNotFound, "method not found: %s", r.Method)
}

// otaProgress sends the progress of a plan or a start as notifications
// with the caller's token; none without one.
func otaProgress(ctx context.Context, c *transport.Conn, token string) ota.Progress {
	if token == "" {
		return nil
	}
	return func(phase string, bytes, total int64) {
		// Best effort: a lost notification only makes a bar jump.
		_ = c.Notify(ctx, proto.NoteProgress, proto.Progress{Token: token, Phase: phase, Bytes: bytes, Total: total})
	}
}

// otaWrite attaches the caller's chunk stream and receives it in the
// background, as a transfer the caller collects with file.wait.
func (s *session) otaWrite(ctx context.Context, c *transport.Conn, params json.RawMessage) (any, error) {
	var p proto.OTAWriteParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	st, err := attach(c, "stream", p.Stream)
	if err != nil {
		return nil, err
	}
	id, t := s.newTransfer()
	go func() {
		start := time.Now()
		n := &countingReader{r: st}
		err := s.a.cfg.OTA.Receive(ctx, p.ID, n)
		if err != nil {
			st.Reset(string(proto.ReasonOf(err)))
		}
		st.Close()
		t.finish(proto.FileResult{Bytes: n.n, DurationMs: msSince(start)}, err)
	}()
	return proto.OTAWriteResult{Transfer: id}, nil
}

type countingReader struct {
	r interface{ Read([]byte) (int, error) }
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
