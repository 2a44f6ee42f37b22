package service

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/proto"
)

// Reconnection backoff, and the bound of one dial.
const (
	minBackoff  = 500 * time.Millisecond
	maxBackoff  = 30 * time.Second
	dialTimeout = 15 * time.Second
)

// boardReadBuffer is the read buffer of a session with a board: what a
// heartbeat's answer needs. The default (16 KiB) was most of what a
// thousand idle sessions held; bulk data is read past the buffer.
const boardReadBuffer = 1 << 10

// monitor keeps one connection to b at addr until ctx ends: it dials,
// asks board.info every heartbeat, and when the board stops answering
// marks it offline and dials again with backoff. Each failure in a row
// counts towards quarantine. A board with a power driver that does not
// answer the first dial after it was lost is recovered instead: power
// cycles until it comes back with a new boot, or quarantine.
func (s *Service) monitor(ctx context.Context, b *board, addr string) {
	s.dialLoop(ctx, b, addr, false)
}

// dialLoop dials b until a session opens, then hands it to a heartbeat
// and returns: an online board costs no goroutine of its own (a lab holds
// a thousand), only a timer. lost says the last session failed: the next
// failed dial recovers. The session holds a count of s.wg of its own,
// taken while the caller's is still held.
func (s *Service) dialLoop(ctx context.Context, b *board, addr string, lost bool) {
	backoff := minBackoff
	for ctx.Err() == nil {
		c, info, err := s.dialBoard(ctx, b, addr)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if s.failed(b, fmt.Errorf("dial: %w", err)) && lost {
				lost = false
				s.recover(ctx, b, addr)
				continue
			}
			// Jitter keeps a lab's boards from being dialed in step
			// after the service or the network comes back.
			if !sleep(ctx, backoff/2+rand.N(backoff/2+1)) {
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		s.online(b, c, info)
		s.wg.Add(1) // the session's, released when it ends; ours is still held
		s.startHeartbeat(ctx, b, addr, c)
		return
	}
}

// recover power-cycles b until it answers with a new boot, recording
// every step, and quarantines it if it never does.
func (s *Service) recover(ctx context.Context, b *board, addr string) {
	s.mu.Lock()
	d, oldBoot := b.power, b.bootID
	s.mu.Unlock()
	waitBack := func(ctx context.Context) (string, error) {
		for {
			c, info, err := s.dialBoard(ctx, b, addr)
			if err == nil {
				c.Close()
				return info.BootID, nil
			}
			if !sleep(ctx, minBackoff) {
				return "", ctx.Err()
			}
		}
	}
	rc := s.cfg.Recovery
	out, err := power.Recover(ctx, d, waitBack, oldBoot, power.RecoverOptions{Attempts: rc.Attempts, WaitTimeout: rc.Wait.D(),
		Step: func(st power.Step) {
			s.journal.audit(store.AuditEntry{At: st.Time, User: serviceUser, Action: "board.recover", Board: b.id,
				Result: cmp.Or(st.Err, "ok"), Detail: fmt.Sprintf("attempt %d: %s %s", st.Attempt, st.Kind, st.BootID)})
		}})
	if ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if out.Recovered {
		s.log.Info("board recovered", "board", b.id, "boot_id", out.BootID, "power_cycles", out.Attempts)
		return
	}
	if b.state == Offline {
		s.must(s.setStateLocked(b, Quarantined, fmt.Sprintf("not back after %d power cycles: %v", out.Attempts, err)))
	}
}

// dialBoard opens a session with b and asks its info.
func (s *Service) dialBoard(ctx context.Context, b *board, addr string) (*dispatcher.Client, proto.BoardInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	opts, err := s.dialOptions(b, addr)
	if err != nil {
		return nil, proto.BoardInfo{}, err
	}
	c, err := dispatcher.Dial(ctx, addr, opts)
	if err != nil {
		return nil, proto.BoardInfo{}, err
	}
	info, err := c.Info(ctx)
	if err != nil {
		c.Close()
		return nil, info, err
	}
	return c, info, nil
}

// dialOptions are the options of a session with b: its own token file or
// the config's, its fingerprint if the config gives one, the service's
// trust, its id required; on a serial line, through the line's mux
// (lines.go), which records the console.
func (s *Service) dialOptions(b *board, addr string) (dispatcher.DialOptions, error) {
	opts := dispatcher.DialOptions{Trust: s.trust, BoardID: b.id, Logger: s.log.With("board", b.id), ReadBuffer: boardReadBuffer}
	tokenFile := s.cfg.TokenFile
	if b.static != nil {
		if b.static.TokenFile != "" {
			tokenFile = b.static.TokenFile
		}
		if b.static.Fingerprint != "" {
			fp, err := auth.ParseFingerprint(b.static.Fingerprint)
			if err != nil {
				return opts, fmt.Errorf("fingerprint: %w", err)
			}
			opts.Fingerprint = fp
		}
	}
	if tokenFile != "" {
		if err := auth.CheckPrivate(tokenFile); err != nil {
			return opts, fmt.Errorf("token: %w", err)
		}
		raw, err := os.ReadFile(tokenFile)
		if err != nil {
			return opts, fmt.Errorf("token: %w", err)
		}
		opts.Token = strings.TrimSpace(string(raw))
	}
	if onLine(addr) {
		l, err := s.consoles.Log(b.id)
		if err != nil {
			return opts, fmt.Errorf("console record: %w", err)
		}
		opts.Lines = s.lineShare(b, opts, l) // the line's mux records the console
	}
	return opts, nil
}

// onLine reports whether addr is a serial line (serial://, tcp:// of
// ser2net, unix:// of QEMU), whose console text the service records.
func onLine(addr string) bool {
	scheme, _, _ := strings.Cut(addr, "://")
	return scheme == "serial" || scheme == "tcp" || scheme == "unix"
}

// heartbeatTimeout is how long a heartbeat waits for its answer: twice
// the interval, and 2s at least, so that a busy board or a loaded lab
// host is not taken for a dead board. A board whose connection closes
// (its agent stopped, its process killed) is seen at once; one that falls
// silent within an interval and this.
func heartbeatTimeout(every time.Duration) time.Duration { return max(2*every, 2*time.Second) }

// heartbeat watches one session with a board without a goroutine while
// all is well: a timer asks board.info every interval, and the end of the
// connection or of the monitor's context fires the timer at once. The
// beat that finds the session over ends it, and the monitor dials again.
type heartbeat struct {
	s     *Service
	b     *board
	addr  string
	c     *dispatcher.Client
	ctx   context.Context // the monitor's
	every time.Duration

	sess   context.Context // ends with ctx or the connection
	cancel context.CancelCauseFunc
	stops  []func() bool // the context.AfterFuncs

	mu    sync.Mutex // held by a beat throughout: beats never overlap
	timer *time.Timer
	ended bool
}

// startHeartbeat starts the heartbeat of b's session on c, which holds one
// count of s.wg until it ends.
func (s *Service) startHeartbeat(ctx context.Context, b *board, addr string, c *dispatcher.Client) {
	h := &heartbeat{s: s, b: b, addr: addr, c: c, ctx: ctx, every: s.cfg.Heartbeat.D()}
	h.sess, h.cancel = context.WithCancelCause(ctx)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.timer = time.AfterFunc(h.every, h.beat)
	conn := c.Conn()
	h.stops = append(h.stops,
		context.AfterFunc(conn.Context(), func() {
			h.cancel(fmt.Errorf("connection lost: %w", conn.Err()))
		}),
		// After the beat under way, if any (the lock): the end is seen now,
		// not an interval later.
		context.AfterFunc(h.sess, func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			if !h.ended {
				h.timer.Reset(0)
			}
		}))
}

// beat asks the board's info, and ends the session if it is over or the
// board did not answer.
func (h *heartbeat) beat() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ended {
		return
	}
	if h.sess.Err() != nil {
		h.endLocked(context.Cause(h.sess))
		return
	}
	hctx, cancel := context.WithTimeout(h.sess, heartbeatTimeout(h.every))
	info, err := h.c.Info(hctx)
	cancel()
	switch {
	case h.sess.Err() != nil:
		h.endLocked(context.Cause(h.sess))
	case err != nil:
		h.endLocked(fmt.Errorf("heartbeat: %w", err))
	default:
		h.s.seen(h.b, info)
		h.timer.Reset(h.every)
	}
}

// endLocked closes the session and, unless the monitor is over, records
// the failure and dials again; then it gives back the session's count of
// s.wg, after the new dial loop took its own.
func (h *heartbeat) endLocked(cause error) {
	h.ended = true
	h.timer.Stop()
	for _, stop := range h.stops {
		stop()
	}
	h.cancel(cause)
	h.c.Close()
	defer h.s.wg.Done()
	if h.ctx.Err() != nil {
		return
	}
	h.s.failed(h.b, cause)
	h.s.wg.Go(func() { h.s.dialLoop(h.ctx, h.b, h.addr, true) })
}

// online records a new session with b.
func (s *Service) online(b *board, c *dispatcher.Client, info proto.BoardInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || b.owner != s.owner { // the claim was lost meanwhile
		c.Close()
		return
	}
	if b.client != nil {
		b.client.Close()
	}
	b.client, b.online, b.failures = c, true, 0
	s.seenLocked(b, info)
	if b.state == Offline {
		s.must(s.setStateLocked(b, b.settledLocked(), "connected"))
	}
	s.recordLocked(b)
	s.scheduleLocked(time.Now())
}

// seen records a heartbeat's answer.
func (s *Service) seen(b *board, info proto.BoardInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seenLocked(b, info)
}

func (s *Service) seenLocked(b *board, info proto.BoardInfo) {
	b.lastSeen, b.agent, b.slots = time.Now(), info.Agent, info.Slots
	if info.Model != "" {
		b.model = info.Model
	}
	if b.static == nil || len(b.static.Labels) == 0 {
		b.labels = info.Labels
	}
	if info.BootID != b.bootID {
		if b.bootID != "" {
			s.journal.audit(store.AuditEntry{User: serviceUser, Action: "board.boot", Board: b.id, Result: "ok",
				Detail: fmt.Sprintf("new boot id %s (was %s)", info.BootID, b.bootID)})
		}
		b.bootID = info.BootID
		s.recordLocked(b)
		s.journal.sight(store.Sighting{BoardID: b.id, Address: b.address, Model: b.model, Labels: b.labels,
			BootID: b.bootID, Version: info.Agent, LastSeen: b.lastSeen})
	}
}

// failed records a failed dial or heartbeat of b: offline, one more
// failure in a row, and quarantine past the threshold for a board without
// a power driver. It reports whether b may be recovered: it has a
// driver and nobody holds it out of the lab.
func (s *Service) failed(b *board, cause error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.owner != s.owner {
		return false // the claim was lost: another service drives it
	}
	if b.client != nil {
		b.client.Close()
		b.client = nil
	}
	if b.online {
		s.log.Warn("board lost", "board", b.id, "err", cause)
		// Its commands ran on the connection that failed.
		for _, r := range b.runs {
			r.cancel(fmt.Errorf("board %s: %w", b.id, cause))
		}
	}
	b.online = false
	b.failures++
	switch b.state {
	case Idle, Leased, Updating:
		s.must(s.setStateLocked(b, Offline, cause.Error()))
	}
	if b.power != nil {
		s.recordLocked(b)
		return b.state == Offline
	}
	if q := s.cfg.QuarantineAfter; q > 0 && b.failures >= q && b.state == Offline {
		s.must(s.setStateLocked(b, Quarantined, fmt.Sprintf("%d failed health checks in a row; last: %v", b.failures, cause)))
	} else {
		s.recordLocked(b)
	}
	return false
}

// must logs an error that a correct program never makes: a transition
// the table refuses where the code expects none.
func (s *Service) must(err error) {
	if err != nil {
		s.log.Error("service: internal error", "err", err)
	}
}

// result is an error as the audit log's result: "ok" or its text.
func result(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
