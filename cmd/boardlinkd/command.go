package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/internal/version"
	"github.com/boardlink/boardlink/proto"
)

// stopTimeout bounds a clean shutdown: commands get their grace period,
// connections their close handshake.
const stopTimeout = 15 * time.Second

func newCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		cfg        Config
		configFile string
		labels     []string
	)
	cmd := &cobra.Command{
		Use:   "boardlinkd --board sim --state-dir DIR [--listen ADDR] [--serial DEV[:BAUD]] [flags]",
		Short: "The boardlink agent: a structured device API for the board it runs on",
		Long: `boardlinkd runs on a board and serves the boardlink protocol: board.info,
and exec with real exit codes, separate stdout and stderr, timeouts and
cancellation, so a host never has to parse a serial shell.

It listens for WebSocket connections on --listen (path /v1/ws, default port
7207; loopback only unless told otherwise: a lab board listens on :7207
with --token-file) and, with --serial, speaks the framed serial protocol on a serial port,
announcing itself there with a periodic beacon while idle. Bytes outside
frames on that line (the kernel console) do not disturb it.

With --token-file, every connection must present the token: as
"Authorization: Bearer TOKEN" on the WebSocket upgrade, and in session.hello
on the serial link.

The sim board keeps its identity (id, model, labels) and boot history under
--state-dir; every start is a new boot with a fresh boot id.

The board advertises itself over mDNS (_boardlink._tcp, instance name = the
board id, TXT: id, model, proto, caps, ver, boot, slot, l.KEY; never the
token) on --iface interfaces, or every up multicast-capable one; a server
listening on loopback only is advertised only where --iface says. It says
goodbye when it stops. --no-mdns turns this off.

A YAML file given with --config may hold the same settings (keys: board,
state_dir, listen, serial, token_file, id, model, labels, ifaces, no_mdns,
exec_log_size, verbose); flags given on the command line win.

SIGINT or SIGTERM stops the agent cleanly: connections are closed and every
running command's process group is ended (TERM, then KILL after its grace).`,
		Example: `  boardlinkd --board sim --state-dir /tmp/board1 --listen 127.0.0.1:7207
  boardlinkd --board sim --state-dir /var/lib/boardlink --serial /dev/ttyGS0:115200 --token-file /etc/boardlink/token
  boardlinkd --config /etc/boardlink/agent.yaml`,
		Version:       version.Version,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				file, err := loadConfigFile(configFile)
				if err != nil {
					return err
				}
				cfg = mergeConfig(file, cfg, cmd)
			}
			if len(labels) > 0 {
				parsed, err := parseLabels(labels)
				if err != nil {
					return err
				}
				cfg.Labels = parsed
			}
			if err := cfg.validate(); err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, stderr)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	f := cmd.Flags()
	f.StringVar(&cfg.Board, "board", "sim", "board backend (sim)")
	f.StringVar(&cfg.StateDir, "state-dir", "", "directory for the board's persistent state (required)")
	f.StringVar(&cfg.Listen, "listen", fmt.Sprintf("127.0.0.1:%d", DefaultPort), `WebSocket listen address ("" to disable)`)
	f.StringVar(&cfg.Serial, "serial", "", "serial device to serve the framed protocol on, as DEV[:BAUD] (default baud 115200)")
	f.StringVar(&cfg.TokenFile, "token-file", "", "file holding the token every client must present")
	f.StringVar(&cfg.ID, "id", "", "board id (default: the stored one, or a generated sim-XXXXXX)")
	f.StringVar(&cfg.Model, "model", "", "board model (default: the stored one, or sim)")
	f.StringArrayVar(&labels, "label", nil, "label as KEY=VALUE (repeatable; replaces the stored labels)")
	f.IntVar(&cfg.ExecLogSize, "exec-log-size", 100, "number of commands kept in the command log")
	f.BoolVarP(&cfg.Verbose, "verbose", "v", false, "log to stderr at debug level")
	f.StringVar(&configFile, "config", "", "YAML config file with the same keys")
	f.StringArrayVar(&cfg.Ifaces, "iface", nil, "interface to advertise on over mDNS (repeatable; default: every up, multicast-capable one)")
	f.BoolVar(&cfg.NoMDNS, "no-mdns", false, "do not advertise over mDNS")
	cmd.SetHelpFunc(func(c *cobra.Command, args []string) {
		fmt.Fprintf(c.OutOrStdout(), "%s\n\n%s", c.Long, c.UsageString())
	})
	return cmd
}

// mergeConfig starts from the file and applies the flags the user set.
func mergeConfig(file, flags Config, cmd *cobra.Command) Config {
	set := func(name string) bool { return cmd.Flags().Changed(name) }
	out := file
	if out.Board == "" || set("board") {
		out.Board = flags.Board
	}
	if set("state-dir") {
		out.StateDir = flags.StateDir
	}
	if out.Listen == "" && out.Serial == "" || set("listen") {
		out.Listen = flags.Listen
	}
	for name, pair := range map[string][2]*string{
		"serial": {&out.Serial, &flags.Serial}, "token-file": {&out.TokenFile, &flags.TokenFile},
		"id": {&out.ID, &flags.ID}, "model": {&out.Model, &flags.Model},
	} {
		if set(name) {
			*pair[0] = *pair[1]
		}
	}
	if out.ExecLogSize == 0 || set("exec-log-size") {
		out.ExecLogSize = flags.ExecLogSize
	}
	out.Verbose = out.Verbose || flags.Verbose
	out.NoMDNS = out.NoMDNS || flags.NoMDNS
	if set("iface") {
		out.Ifaces = flags.Ifaces
	}
	return out
}

func parseLabels(kvs []string) (map[string]string, error) {
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want KEY=VALUE", kv)
		}
		out[k] = v
	}
	return out, nil
}

// serve builds the agent with fx, starts it, and stops it when ctx ends.
func serve(ctx context.Context, cfg Config, stderr io.Writer) error {
	level := slog.LevelInfo
	if cfg.Verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	app := fx.New(
		fx.WithLogger(func() fxevent.Logger { return fxevent.NopLogger }),
		fx.Supply(cfg, log),
		fx.Provide(newBoard, newExecs, newAgent, newWebSocket),
		fx.Invoke(startMDNS, startSerial),
	)
	if err := app.Err(); err != nil {
		return err
	}
	startCtx, cancel := context.WithTimeout(ctx, stopTimeout)
	defer cancel()
	if err := app.Start(startCtx); err != nil {
		return err
	}
	log.Info("boardlinkd started", "version", version.Version)
	select {
	case <-ctx.Done():
	case sig := <-app.Done():
		log.Info("signal", "signal", sig)
	}
	stopCtx, cancelStop := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
	defer cancelStop()
	if err := app.Stop(stopCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("boardlinkd stopped")
	return nil
}

func newBoard(cfg Config) (*sim.Board, error) {
	return sim.Open(cfg.StateDir, sim.Options{ID: cfg.ID, Model: cfg.Model, Labels: maps.Clone(cfg.Labels)})
}

// newExecs registers the command manager first, so that it stops last:
// after the listeners, every remaining process group is ended.
func newExecs(lc fx.Lifecycle, cfg Config, b *sim.Board, log *slog.Logger) *agent.Execs {
	m := agent.NewExecs(agent.ExecOptions{LogSize: cfg.ExecLogSize, LogPath: filepath.Join(b.Dir(), "exec-log.json"), Logger: log})
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error { return m.LoadLog() },
		OnStop:  m.Shutdown,
	})
	return m
}

func newAgent(cfg Config, b *sim.Board, m *agent.Execs, log *slog.Logger) (*agent.Agent, error) {
	tok, err := cfg.token()
	if err != nil {
		return nil, err
	}
	return agent.New(b, m, agent.Config{Token: tok, Logger: log}), nil
}

// newWebSocket returns the WebSocket server, or nil without --listen.
func newWebSocket(lc fx.Lifecycle, cfg Config, a *agent.Agent) *agent.WebSocketServer {
	if cfg.Listen == "" {
		return nil
	}
	s := agent.NewWebSocketServer(a, cfg.Listen)
	lc.Append(fx.Hook{OnStart: s.Start, OnStop: s.Stop})
	return s
}

// startMDNS advertises the WebSocket server once it listens, and says
// goodbye before it stops. A server on loopback only is advertised only on
// the interfaces named with --iface: elsewhere nobody could reach it.
func startMDNS(lc fx.Lifecycle, cfg Config, a *agent.Agent, ws *agent.WebSocketServer, log *slog.Logger) {
	if cfg.NoMDNS || ws == nil {
		return
	}
	adv := discovery.NewAdvertiser(discovery.AdvertiseConfig{Ifaces: cfg.Ifaces, Logger: log})
	lc.Append(fx.Hook{
		OnStart: func(ctx context.Context) error {
			addr, ok := ws.Addr().(*net.TCPAddr)
			if !ok {
				return fmt.Errorf("mdns: unexpected listen address %v", ws.Addr())
			}
			if addr.IP.IsLoopback() && len(cfg.Ifaces) == 0 {
				log.Info("mdns: not advertising: listening on loopback only (give --iface to advertise anyway)")
				adv = nil
				return nil
			}
			return adv.Start(ctx, boardRecord(a.Info(), addr.Port))
		},
		OnStop: func(ctx context.Context) error {
			if adv == nil {
				return nil
			}
			return adv.Stop(ctx)
		},
	})
}

// boardRecord is what the agent announces: never a secret.
func boardRecord(info proto.BoardInfo, port int) discovery.Record {
	r := discovery.Record{ID: info.ID, Model: info.Model, Protocol: info.Protocol, Capabilities: info.Capabilities,
		Version: info.Agent, BootID: info.BootID, Labels: info.Labels, Port: port}
	for _, s := range info.Slots {
		if s.Booted {
			r.Slot = s.Name
		}
	}
	return r
}

func startSerial(lc fx.Lifecycle, cfg Config, a *agent.Agent) error {
	if cfg.Serial == "" {
		return nil
	}
	dev, baud, err := cfg.serialPort()
	if err != nil {
		return err
	}
	s := agent.NewSerialServer(a, dev, baud)
	lc.Append(fx.Hook{OnStart: s.Start, OnStop: s.Stop})
	return nil
}
