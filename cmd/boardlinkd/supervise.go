package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"

	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/transport/seriallink"
)

// supervise runs the sim board's bootloader (sim.Supervise): every boot
// is this binary again, with the same arguments, marked as a boot in its
// environment, in the slot the bootloader chose from the state dir's
// bootenv.json. The supervisor holds the serial line across boots.
func supervise(ctx context.Context, cfg Config, args []string, stdout, stderr io.Writer) error {
	log := newLogger(cfg, stderr)
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	if cfg.Listen != "" {
		addr, err := pinPort(cfg.Listen)
		if err != nil {
			return err
		}
		args = append(slices.Clip(args), "--listen", addr) // the last --listen wins
	}
	var uart *sim.UART
	if cfg.Serial != "" {
		uart = &sim.UART{}
		detach, err := attachHost(cfg, uart, log)
		if err != nil {
			return err
		}
		defer detach()
	}
	// From here on the supervisor only waits for its boots.
	if err := trimStartup(); err != nil {
		log.Debug("startup pages kept", "err", err)
	}
	err = sim.Supervise(ctx, sim.SupervisorConfig{
		Boot: func(int) (*exec.Cmd, error) {
			c := exec.Command(exe, args...)
			c.Stdout, c.Stderr = stdout, stderr
			return c, nil
		},
		UART:        uart,
		Dir:         cfg.StateDir, // the supervisor is the A/B boot loader too
		BootDelay:   cfg.SimBootDelay,
		StopTimeout: stopTimeout + 5*time.Second, // the agent's own bound, and then some
		Logger:      log,
	})
	if e, ok := errors.AsType[*sim.ExitError](err); ok {
		return &exitError{code: e.Code, err: err}
	}
	return err
}

// pinPort chooses the port of a listen address with port 0 once, so that
// the board keeps its address across reboots, as a real board does.
func pinPort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port != "0" {
		return addr, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("listen %s: %w", addr, err)
	}
	defer ln.Close()
	return net.JoinHostPort(host, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)), nil
}

// attachHost attaches the host's side of --serial to the UART; detach
// undoes it.
func attachHost(cfg Config, uart *sim.UART, log *slog.Logger) (detach func(), err error) {
	spec, err := cfg.serialLine()
	if err != nil {
		return nil, err
	}
	if spec.unix != "" {
		return attachUnix(spec.unix, uart)
	}
	return attachDevice(spec.dev, spec.baud, uart, log)
}

// attachUnix listens on a unix socket and attaches each connection in
// turn, a new one replacing the old, as QEMU's chardev server does.
func attachUnix(path string, uart *sim.UART) (detach func(), err error) {
	ln, err := listenUnix(path)
	if err != nil {
		return nil, err
	}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			uart.Attach(c)
		}
	}()
	return func() {
		ln.Close()
		<-ended
		uart.Close()
	}, nil
}

// attachDevice attaches a serial device, reopening it after a pause when
// it fails (a USB serial adapter that was unplugged).
func attachDevice(dev string, baud int, uart *sim.UART, log *slog.Logger) (detach func(), err error) {
	port, err := seriallink.OpenPort(dev, baud)
	if err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	stop, ended := make(chan struct{}), make(chan struct{})
	// Attached before the first boot can print: its banner is not lost.
	failed := uart.Attach(port)
	go func() {
		defer close(ended)
		for {
			select {
			case <-failed:
			case <-stop:
				return
			}
			log.Warn("serial line failed; reopening", "dev", dev)
			for port = nil; port == nil; port, _ = seriallink.OpenPort(dev, baud) {
				select {
				case <-stop:
					return
				case <-time.After(time.Second):
				}
			}
			failed = uart.Attach(port)
		}
	}()
	return func() {
		close(stop)
		<-ended
		uart.Close()
	}, nil
}

// listenUnix listens on path, replacing a socket that nobody serves any
// more (a supervisor that was killed leaves its socket behind).
func listenUnix(path string) (net.Listener, error) {
	removeStaleSocket(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("serial: %w", err) // a live one is not ours to take
	}
	return ln, nil
}

// removeStaleSocket removes the unix socket at path if nobody answers on
// it. Anything else at path (a live socket, a file) is left alone, and
// listening there fails.
func removeStaleSocket(path string) {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != fs.ModeSocket {
		return
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return
	}
	os.Remove(path)
}
