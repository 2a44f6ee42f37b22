package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/agent/ota"
	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/version"
)

// serve is one boot of the board: it builds the agent with fx from the
// common parts and the board's own (parts: newSimBoard's or
// newLinuxBoard's), starts it, tells the board it is up, and stops it
// when ctx ends or the agent asks for a reboot; then the board reboots
// (platform.reboot).
func serve(ctx context.Context, cfg Config, parts boardParts, stderr io.Writer) error {
	log := newLogger(cfg, stderr)
	key, created, err := auth.LoadOrCreateKey(cfg.keyFile())
	if err != nil {
		return fmt.Errorf("the board's key: %w", err)
	}
	if created {
		log.Info("made the board's key", "file", cfg.keyFile(), "fingerprint", auth.FingerprintOf(key.Public().(ed25519.PublicKey)))
	}
	reboot := make(rebootRequest, 1)
	leave := new(leaving)
	var (
		boot board.BootControl
		plat *platform
		ag   *agent.Agent
	)
	app := fx.New(
		fx.WithLogger(func() fxevent.Logger { return fxevent.NopLogger }),
		fx.Supply(cfg, log, reboot, key, leave),
		fx.Provide(func() boardParts { return parts }),
		fx.Provide(newExecs, newOTA, newAgent, newServers, newMDNS),
		fx.Invoke(lifecycle),
		fx.Populate(&boot, &plat, &ag),
	)
	if err := app.Err(); err != nil {
		return err
	}
	startCtx, cancel := context.WithTimeout(ctx, stopTimeout)
	defer cancel()
	if err := app.Start(startCtx); err != nil {
		return err
	}
	plat.up()
	logAccess(log, cfg, key)
	started := append([]any{"version", version.Version, "id", ag.Info(ctx).ID, "state_dir", cfg.StateDir, "roots", cfg.Roots}, plat.attrs...)
	if boot == nil {
		log.Info("boardlinkd started", append(started, "ota", "off: no A/B slots")...)
	} else if st, err := boot.State(ctx); err != nil {
		log.Info("boardlinkd started", started...)
		log.Warn("boot loader", "err", err)
	} else {
		log.Info("boardlinkd started", append(started, "slot", st.Booted, "active", st.Active, "trial", st.Trial)...)
	}
	if err := trimStartup(); err != nil {
		log.Debug("startup pages kept", "err", err)
	}
	rebooting := false
	select {
	case <-ctx.Done():
	case sig := <-app.Done():
		log.Info("signal", "signal", sig)
	case <-reboot:
		log.Info("rebooting")
		rebooting = true
		leave.reboot.Store(true)
	}
	// The same clean stop for a reboot as for SIGTERM (lifecycle).
	stopCtx, cancelStop := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancelStop()
	if err := app.Stop(stopCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("boardlinkd stopped")
	if rebooting {
		return plat.reboot(context.WithoutCancel(ctx), log)
	}
	return nil
}

// afterCommands is the part of the stop's time kept for the steps after
// the commands: the update machine's stop and the mDNS goodbye, which fx
// skips once the stop's deadline has passed.
const afterCommands = 2 * time.Second

// component is a part of the agent that starts and stops; name is how the
// log calls it.
type component struct {
	name        string
	start, stop func(context.Context) error
}

// servers are the agent's servers that --listen, --insecure-listen and
// --serial ask for; mdns is its mDNS announcement, none with --no-mdns or
// without a WebSocket server.
type (
	servers []component
	mdns    []component
)

// components are what lifecycle starts and stops.
type components struct {
	fx.In

	Execs   *agent.Execs
	OTA     *ota.Updater
	Servers servers
	MDNS    mdns
}

// lifecycle appends the hooks that start and stop the agent. Both orders
// are written out here, each read as it runs, rather than following from
// the order in which fx happens to call the constructors.
//
// Start: the command log, the update machine (a trial boot's health check
// may begin at once), the servers, and last the mDNS announcement of a
// server that listens.
//
// Stop: the servers stop accepting and end their sessions (with the
// commands that die with their connection); then the commands left
// (detached ones) end; then the update machine's work stops, its state on
// disk; and last mDNS says goodbye, once nothing of the board answers.
// The same stop serves a reboot and SIGTERM.
func lifecycle(lc fx.Lifecycle, log *slog.Logger, c components) {
	commands := component{"commands", func(context.Context) error { return c.Execs.LoadLog() }, func(ctx context.Context) error {
		// A group that outlasts the stop (it ignores TERM, with a long
		// grace) is killed early enough for the steps after this one.
		if d, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, d.Add(-afterCommands))
			defer cancel()
		}
		return c.Execs.Shutdown(ctx)
	}}
	local := []component{commands}
	if c.OTA != nil {
		local = append(local, component{"ota", c.OTA.Start, c.OTA.Stop})
	}
	srv, ann := []component(c.Servers), []component(c.MDNS)
	start := slices.Concat(local, srv, ann)
	stop := slices.Concat(srv, local, ann)

	// fx runs OnStart hooks in the order they were appended and OnStop
	// hooks in reverse: so the stops go first, backwards, each a hook of
	// its own, and then the starts. When a start fails, fx runs the stops
	// of every hook before it, which are all of them: stopping a component
	// that never started does nothing.
	for _, s := range slices.Backward(stop) {
		lc.Append(fx.Hook{OnStop: func(ctx context.Context) error {
			if err := s.stop(ctx); err != nil {
				return fmt.Errorf("stop %s: %w", s.name, err)
			}
			log.Info("stopped", "component", s.name)
			return nil
		}})
	}
	for _, s := range start {
		lc.Append(fx.Hook{OnStart: s.start})
	}
}

// newExecs is the command manager; its log is in the state dir.
func newExecs(cfg Config, b stateBoard, log *slog.Logger) *agent.Execs {
	limits := cfg.Limits.agent().WithDefaults()
	return agent.NewExecs(agent.ExecOptions{LogSize: cfg.ExecLogSize, LogPath: filepath.Join(b.Dir(), "exec-log.json"), Logger: log,
		MaxCommands: limits.MaxCommands, ResultGrace: limits.ResultGrace})
}

// newOTA is the update state machine, its state in STATE_DIR/ota; nil
// on a board without A/B slots, which serves no updates.
func newOTA(cfg Config, b stateBoard, boot board.BootControl, log *slog.Logger, reboot rebootRequest) (*ota.Updater, error) {
	if boot == nil {
		return nil, nil
	}
	var keys []ed25519.PublicKey
	for _, path := range cfg.TrustKeys {
		k, err := image.LoadPublicKey(path)
		if err != nil {
			return nil, fmt.Errorf("--trust-key: %w", err)
		}
		keys = append(keys, k)
	}
	return ota.New(ota.Config{Dir: filepath.Join(b.Dir(), "ota"), Boot: boot, Model: b.Identity().Model,
		BootID: b.BootID(), Keys: keys, HealthChecks: cfg.HealthChecks, HealthTimeout: cfg.HealthTimeout,
		Reboot: reboot.reboot, Logger: log}), nil
}

func newAgent(cfg Config, b stateBoard, m *agent.Execs, u *ota.Updater, log *slog.Logger, reboot rebootRequest,
	key ed25519.PrivateKey, plat *platform) (*agent.Agent, error) {
	tokens, err := cfg.tokens()
	if err != nil {
		return nil, err
	}
	roots, err := cfg.fileRoots()
	if err != nil {
		return nil, err
	}
	return agent.New(b, m, agent.Config{Logger: log, Roots: roots, CacheDir: filepath.Join(b.Dir(), "cache"),
		Reboot: reboot.reboot, OTA: u, Limits: cfg.Limits.agent(),
		Auth: agent.AuthConfig{Key: key, Tokens: tokens, NoAuth: cfg.NoAuth, Pairing: cfg.pairing(),
			PairedFile: cfg.pairedFile(), CodeFile: cfg.codeFile(), ShowCode: plat.showCode},
	}), nil
}

// advertised is the WebSocket server mDNS announces: wss:// on --listen
// if there is one, else ws:// on --insecure-listen; nil without either.
type advertised struct {
	ws     *agent.WebSocketServer
	secure bool
}

// serverOut is what newServers provides.
type serverOut struct {
	fx.Out

	Servers    servers
	Advertised advertised
}

// newServers makes the servers the config asks for: wss:// on --listen,
// ws:// on --insecure-listen, and the framed protocol on the line the
// board gives for --serial (serialServer).
func newServers(cfg Config, a *agent.Agent, serial serialServer) serverOut {
	var out serverOut
	if cfg.InsecureListen != "" {
		ws := agent.NewInsecureWebSocketServer(a, cfg.InsecureListen)
		out.Servers = append(out.Servers, component{"ws", ws.Start, ws.Stop})
		out.Advertised = advertised{ws: ws}
	}
	if cfg.Listen != "" {
		ws := agent.NewWebSocketServer(a, cfg.Listen)
		out.Servers = append(out.Servers, component{"wss", ws.Start, ws.Stop})
		out.Advertised = advertised{ws: ws, secure: true}
	}
	if serial != nil {
		s := serial(a)
		out.Servers = append(out.Servers, component{"serial", s.Start, s.Stop})
	}
	return out
}

// leaving tells the mDNS announcement why the agent stops: for a reboot,
// set before the stop, browsers are told the board will be back, so that
// it stays listed and its return (a new boot id) is one update.
type leaving struct{ reboot atomic.Bool }

// newMDNS announces the advertised server once it listens, and says
// goodbye when it stops, or that it reboots (leaving). A server on
// loopback only is announced only on the interfaces named with --iface:
// elsewhere nobody could reach it.
func newMDNS(cfg Config, a *agent.Agent, adv advertised, log *slog.Logger, leave *leaving) mdns {
	if cfg.NoMDNS || adv.ws == nil {
		return nil
	}
	var ad *discovery.Advertiser // nil until it announces
	start := func(ctx context.Context) error {
		addr, ok := adv.ws.Addr().(*net.TCPAddr)
		if !ok {
			return fmt.Errorf("mdns: unexpected listen address %v", adv.ws.Addr())
		}
		if addr.IP.IsLoopback() && len(cfg.Ifaces) == 0 {
			log.Info("mdns: not advertising: listening on loopback only (give --iface to advertise anyway)")
			return nil
		}
		d := discovery.NewAdvertiser(discovery.AdvertiseConfig{Ifaces: cfg.Ifaces, Logger: log})
		if err := d.Start(ctx, discovery.RecordOf(a.Info(ctx), addr.Port, adv.secure)); err != nil {
			return err
		}
		ad = d
		return nil
	}
	stop := func(ctx context.Context) error {
		switch {
		case ad == nil:
			return nil
		case leave.reboot.Load():
			return ad.Reboot(ctx, 0)
		}
		return ad.Stop(ctx)
	}
	return mdns{{"mdns", start, stop}}
}
