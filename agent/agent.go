package agent

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardlink/boardlink/agent/fetch"
	"github.com/boardlink/boardlink/agent/ota"
	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/internal/version"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// Board is what the agent needs from the board it runs on.
type Board interface {
	Identity() board.Identity
	BootID() string
	BootedAt() time.Time
}

// Config configures an Agent.
type Config struct {
	// Token authenticates serial sessions in session.hello (WebSocket
	// connections are checked before the upgrade). Empty: no token needed.
	Token  string
	Logger *slog.Logger
	// Roots are the directories file requests may touch (absolute paths);
	// none: the file methods refuse every path.
	Roots []string
	// CacheDir holds file.download's content-addressed package cache and
	// its partial downloads; "" keeps no cache.
	CacheDir string
	// Reboot restarts the board. The agent calls it once, in its own
	// goroutine, after system.reboot's answer has been sent; it must stop
	// the agent cleanly (ending running commands) and reboot. Nil:
	// system.reboot is not served.
	Reboot func()
	// OTA runs A/B updates; nil: the ota family is not served.
	OTA *ota.Updater
	// Limits bound what peers may make the agent hold (zero: defaults).
	Limits Limits
}

// Agent serves the protocol for one board.
type Agent struct {
	board Board
	execs *Execs
	cfg   Config
	log   *slog.Logger
	seq   atomic.Uint64 // transfer ids

	fetcher *fetch.Fetcher

	mu       sync.Mutex
	claimed  map[string]chan struct{} // targets of transfers under way; closed on release
	rebooted bool
}

// New returns an agent for b whose commands run under execs.
func New(b Board, execs *Execs, cfg Config) *Agent {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Limits = cfg.Limits.WithDefaults()
	return &Agent{board: b, execs: execs, cfg: cfg, log: cfg.Logger, claimed: map[string]chan struct{}{},
		fetcher: fetch.New(fetch.Options{CacheDir: cfg.CacheDir, Logger: cfg.Logger})}
}

// claim marks key (a transfer's target) as in use. If it is, claim waits
// a little: a push retried after a cut link often arrives before the old
// transfer noticed the cut.
func (a *Agent) claim(key string) bool {
	deadline := time.After(claimWait)
	for {
		a.mu.Lock()
		held, busy := a.claimed[key]
		if !busy {
			a.claimed[key] = make(chan struct{})
			a.mu.Unlock()
			return true
		}
		a.mu.Unlock()
		select {
		case <-held:
		case <-deadline:
			return false
		}
	}
}

// claimWait bounds how long a transfer waits for another on its target.
const claimWait = 5 * time.Second

func (a *Agent) release(key string) {
	a.mu.Lock()
	close(a.claimed[key])
	delete(a.claimed, key)
	a.mu.Unlock()
}

// Capabilities lists the method families and features this agent serves.
func (a *Agent) Capabilities() []string {
	caps := []string{proto.CapExec, proto.CapExecDetach}
	if len(a.cfg.Roots) > 0 {
		caps = append(caps, proto.CapFile, proto.CapDownload)
	}
	if a.cfg.Reboot != nil {
		caps = append(caps, proto.CapReboot)
	}
	if a.cfg.OTA != nil {
		caps = append(caps, proto.CapOTA)
	}
	return caps
}

// Info answers board.info.
func (a *Agent) Info() proto.BoardInfo {
	id := a.board.Identity()
	host, _ := os.Hostname()
	booted := a.board.BootedAt()
	return proto.BoardInfo{
		ID: id.ID, Model: id.Model, Labels: id.Labels, Hostname: host,
		Arch: runtime.GOARCH, Agent: version.Version, Protocol: proto.Version,
		BootID: a.board.BootID(), BootedAt: booted, UptimeMs: time.Since(booted).Milliseconds(),
		Slots: a.slots(), Capabilities: a.Capabilities(),
	}
}

// slots reports the A/B slots, when the agent runs updates.
func (a *Agent) slots() []proto.Slot {
	out := []proto.Slot{}
	if a.cfg.OTA == nil {
		return out
	}
	st, err := a.cfg.OTA.Status(context.Background())
	if err != nil {
		a.log.Warn("slots", "err", err)
		return out
	}
	for _, s := range st.Slots {
		out = append(out, proto.Slot{Name: s.Name, Version: s.Version, Booted: s.Booted, Active: s.Active})
	}
	return out
}

// bootedSlot names the slot running now, or "".
func (a *Agent) bootedSlot() string {
	for _, s := range a.slots() {
		if s.Booted {
			return s.Name
		}
	}
	return ""
}

// Beacon is the payload the agent announces on an idle serial line.
func (a *Agent) Beacon() []byte {
	id := a.board.Identity()
	b, _ := json.Marshal(proto.Beacon{
		ID: id.ID, Model: id.Model, Protocol: proto.Version, Capabilities: a.Capabilities(),
		Version: version.Version, BootID: a.board.BootID(), Labels: id.Labels, Slot: a.bootedSlot(),
	})
	return b
}

// ServeLink serves one connection until it ends or ctx is canceled. With
// preauthorized false (the serial link) every request but session.hello is
// refused until a hello carries the token.
func (a *Agent) ServeLink(ctx context.Context, l transport.Link, preauthorized bool) {
	s := &session{a: a, owned: map[string]*Command{}, transfers: map[string]*transfer{}}
	s.authed.Store(preauthorized || a.cfg.Token == "")
	c := transport.NewConn(l, transport.Config{Handler: s, Logger: a.log})
	c.Start()
	select {
	case <-c.Done():
	case <-ctx.Done():
		c.Close()
	}
	s.end()
}

// session is one connection's state.
type session struct {
	a      *Agent
	authed atomic.Bool
	mu     sync.Mutex
	owned  map[string]*Command // commands that die with this connection
	// transfers are this connection's pushes and pulls, until file.wait
	// collects them.
	transfers map[string]*transfer
}

// end kills the commands the connection owned that are still running.
func (s *session) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.owned {
		s.a.execs.Kill(id)
	}
	s.owned = nil
}

func (s *session) Handle(ctx context.Context, c *transport.Conn, r *transport.Request) (any, error) {
	if r.Notification {
		return nil, nil // the agent takes no notifications in v1
	}
	if r.Method == proto.MethodHello {
		return s.hello(r.Params)
	}
	if !s.authed.Load() {
		return nil, proto.Errorf(proto.ReasonUnauthorized, "session.hello with the board's token must come first")
	}
	switch r.Method {
	case proto.MethodBoardInfo:
		var p proto.BoardInfoParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		return s.a.Info(), nil
	case proto.MethodExecStart:
		return s.execStart(c, r.Params)
	case proto.MethodExecWait:
		var p proto.ExecWaitParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		return s.a.execs.Wait(ctx, p.ID)
	case proto.MethodExecCancel:
		var p proto.ExecCancelParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		return nil, s.a.execs.Cancel(p.ID, p.Signal)
	case proto.MethodExecLog:
		var p proto.ExecLogParams
		if err := proto.DecodeParams(r.Params, &p); err != nil {
			return nil, err
		}
		return proto.ExecLogResult{Entries: s.a.execs.Log(p.Limit)}, nil
	case proto.MethodFileStat:
		return s.fileStat(r.Params)
	case proto.MethodFilePush:
		return s.filePush(c, r)
	case proto.MethodFilePull:
		return s.filePull(c, r)
	case proto.MethodFileWait:
		return s.fileWait(ctx, r.Params)
	case proto.MethodFileDownload:
		return s.fileDownload(ctx, c, r.Params)
	case proto.MethodOTAStatus, proto.MethodOTAPlan, proto.MethodOTAStart, proto.MethodOTAWrite,
		proto.MethodOTAActivate, proto.MethodOTAWait, proto.MethodOTAAbort:
		if s.a.cfg.OTA != nil {
			return s.otaCall(ctx, c, r)
		}
	case proto.MethodSystemReboot:
		if s.a.cfg.Reboot != nil {
			return s.a.reboot(r)
		}
	}
	return nil, proto.Errorf(proto.ReasonMethodNotFound, "method not found: %s", r.Method)
}

// reboot answers system.reboot, then hands the board to cfg.Reboot, once:
// a second request while the first is under way is busy.
func (a *Agent) reboot(r *transport.Request) (any, error) {
	var p proto.RebootParams
	if err := proto.DecodeParams(r.Params, &p); err != nil {
		return nil, err
	}
	a.mu.Lock()
	already := a.rebooted
	a.rebooted = true
	a.mu.Unlock()
	if already {
		return nil, proto.Errorf(proto.ReasonBusy, "a reboot is under way")
	}
	running := a.execs.Running()
	a.log.Info("reboot requested", "running_commands", running)
	r.AfterReply = func() { go a.cfg.Reboot() }
	return proto.RebootResult{BootID: a.board.BootID(), Commands: running}, nil
}

func (s *session) hello(params json.RawMessage) (any, error) {
	var p proto.HelloParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	if p.Protocol < proto.MinVersion {
		return nil, proto.Errorf(proto.ReasonIncompatible,
			"protocol %d is not served; this agent speaks %d to %d", p.Protocol, proto.MinVersion, proto.Version)
	}
	if tok := s.a.cfg.Token; tok != "" && !s.authed.Load() {
		a, b := sha256.Sum256([]byte(p.Token)), sha256.Sum256([]byte(tok))
		if subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
			return nil, proto.Errorf(proto.ReasonUnauthorized, "wrong token")
		}
		s.authed.Store(true)
	}
	return proto.HelloResult{Protocol: min(p.Protocol, proto.Version), Agent: version.Version,
		BoardID: s.a.board.Identity().ID, Capabilities: s.a.Capabilities()}, nil
}

// execStart attaches the caller's streams and starts the command. The
// streams are closed when the command ends.
func (s *session) execStart(c *transport.Conn, params json.RawMessage) (any, error) {
	var p proto.ExecStartParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	var (
		streams []*transport.Stream
		io      ExecIO
	)
	closeAll := func() {
		for _, st := range streams {
			st.Close()
		}
	}
	for _, want := range []struct {
		field string
		id    uint32
		set   func(*transport.Stream)
	}{
		{"stdin", p.Stdin, func(st *transport.Stream) { io.Stdin = st }},
		{"stdout", p.Stdout, func(st *transport.Stream) { io.Stdout = st }},
		{"stderr", p.Stderr, func(st *transport.Stream) { io.Stderr = st }},
	} {
		if want.id == 0 {
			continue
		}
		st, err := c.AttachStream(want.id)
		if err != nil {
			closeAll()
			return nil, proto.InvalidField(want.field, "stream", "%v", err)
		}
		streams = append(streams, st)
		want.set(st)
	}
	cmd, err := s.a.execs.Start(p, io)
	if err != nil {
		closeAll()
		return nil, err
	}
	if !p.Detach {
		s.mu.Lock()
		if s.owned == nil { // the connection ended while we started
			s.mu.Unlock()
			s.a.execs.Kill(cmd.ID())
		} else {
			s.owned[cmd.ID()] = cmd
			s.mu.Unlock()
		}
	}
	go func() {
		<-cmd.Done()
		closeAll()
		s.mu.Lock()
		delete(s.owned, cmd.ID())
		s.mu.Unlock()
	}()
	return proto.ExecStartResult{ID: cmd.ID(), PID: cmd.PID()}, nil
}
