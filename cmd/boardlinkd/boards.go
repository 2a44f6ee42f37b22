package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/fx"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/board/linux"
	"github.com/boardlink/boardlink/board/sim"
)

// The agent's fx graph is the same for every board (serve): the command
// manager, the OTA state machine, the agent, its WebSocket and serial
// servers and mDNS. A board contributes only boardParts, which the caller
// of serve opens first (newSimBoard, newLinuxBoard), so that a board that
// cannot open says why in its own words.

// stateBoard is a board as the common parts see it: the agent's view
// (identity, boot id, boot time) and the state directory.
type stateBoard interface {
	agent.Board
	Dir() string
}

// platform is what a board does around a boot of the agent.
type platform struct {
	// up says the agent serves: to the sim board's supervisor.
	up func()
	// attrs name this boot in the "boardlinkd started" log line.
	attrs []any
	// reboot reboots the board once the agent has stopped cleanly after
	// a reboot request; its error is serve's result.
	reboot func(ctx context.Context, log *slog.Logger) error
	// showCode shows a pairing code where the board's operator looks,
	// besides the log; nil: the log is enough (the sim board's log is
	// its console).
	showCode func(line string)
}

// serialServer makes the agent's server on the --serial line; nil
// without --serial.
type serialServer func(*agent.Agent) *agent.SerialServer

// boardParts is what a board provides to the agent's fx graph.
type boardParts struct {
	fx.Out

	Board    stateBoard
	Boot     board.BootControl // the A/B boot loader, for the OTA state machine; nil: no slots, no updates
	Serial   serialServer
	Platform *platform
}

// newSimBoard boots the sim board in the slot its boot loader, the
// supervisor, chose and handed down in h. A reboot is the agent's exit
// with sim.ExitReboot: the supervisor boots again.
func newSimBoard(cfg Config, h *sim.Handoff) (boardParts, error) {
	b, err := sim.Open(cfg.StateDir, sim.Options{ID: cfg.ID, Model: cfg.Model, Labels: maps.Clone(cfg.Labels), Slot: h.Slot})
	if err != nil {
		return boardParts{}, err
	}
	p := boardParts{Board: b, Boot: b.BootControl(), Platform: &platform{
		up:    h.Up,
		attrs: []any{"boot", h.Boot},
		reboot: func(context.Context, *slog.Logger) error {
			return &exitError{code: sim.ExitReboot}
		},
	}}
	if h.UART != nil { // the boot's end of the UART the supervisor holds
		p.Serial = func(a *agent.Agent) *agent.SerialServer { return agent.NewLineSerialServer(a, "uart", h.UART) }
	}
	return p, nil
}

// rebootTimeout bounds the reboot command of a linux board.
const rebootTimeout = time.Minute

// newLinuxBoard opens a linux board, the system boardlinkd runs on:
// identity in the state dir, boot id and time from the kernel, and A/B
// slots through U-Boot's or GRUB's environment if it has them (without,
// Boot is nil and the agent serves no updates). A reboot runs the reboot
// command, after which boardlinkd exits 0. Once the agent serves, systemd
// is told so (a Type=notify unit).
func newLinuxBoard(cfg Config) (boardParts, error) {
	b, err := linux.Open(linux.BoardConfig{Dir: cfg.StateDir, ID: cfg.ID, Model: cfg.Model, Labels: maps.Clone(cfg.Labels),
		Boot: cfg.bootConfig(), RebootCommand: cfg.RebootCommand})
	if errors.Is(err, board.ErrNoModel) {
		return boardParts{}, fmt.Errorf("--model is required at this board's first start (it is then kept in %s): %w",
			filepath.Join(cfg.StateDir, board.IdentityFile), err)
	}
	if err != nil {
		return boardParts{}, err
	}
	loader := cfg.Boot
	if loader == "" {
		loader = "none"
	}
	notify := takeNotifySocket()
	p := boardParts{Board: b, Platform: &platform{
		up:       func() { notifyReady(notify) },
		showCode: toConsole,
		attrs:    []any{"board", boardLinux, "boot_id", b.BootID(), "loader", loader},
		reboot: func(ctx context.Context, log *slog.Logger) error {
			ctx, cancel := context.WithTimeout(ctx, rebootTimeout)
			defer cancel()
			log.Info("reboot: running the reboot command", "command", strings.Join(b.RebootCommand(), " "))
			if err := b.Reboot(ctx); err != nil {
				return &exitError{code: 1, err: err}
			}
			log.Info("reboot: the reboot command returned; exiting")
			return nil
		},
	}}
	// A nil *linux.BootControl in the interface would look like a boot
	// loader to the update machine.
	if bc := b.BootControl(); bc != nil {
		p.Boot = bc
	}
	if cfg.Serial != "" {
		line, err := cfg.serialLine()
		if err != nil {
			return boardParts{}, err
		}
		if line.unix != "" {
			p.Serial = func(a *agent.Agent) *agent.SerialServer {
				removeStaleSocket(line.unix)
				return agent.NewUnixSerialServer(a, line.unix)
			}
		} else {
			p.Serial = func(a *agent.Agent) *agent.SerialServer { return agent.NewSerialServer(a, line.dev, line.baud) }
		}
	}
	return p, nil
}

// toConsole writes line to the system console, where a board's operator
// sees it (a serial console, a screen), besides the journal; best effort.
func toConsole(line string) {
	f, err := os.OpenFile("/dev/console", os.O_WRONLY|syscall.O_NOCTTY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.WriteString("\r\n" + line + "\r\n")
}
