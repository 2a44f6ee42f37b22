package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/boardlink/boardlink/transport/seriallink"
)

// SerialServer serves the agent over serial-framed lines: a serial port,
// or (for tests and the demo) each connection to a unix socket, the way
// QEMU exports a board's UART. One session runs at a time per line; a new
// session from the host ends the previous one.
type SerialServer struct {
	// Link tunes the serial-framed link of every line (framing, window,
	// compact encoding); zero fields take seriallink's defaults. The
	// beacon and the logger are the agent's. Set it before Start.
	Link seriallink.Config

	agent *Agent
	what  string
	open  func() error // run by Start: opens the port, or listens
	// next yields the next line to serve; it blocks until one is there.
	next       func(ctx context.Context) (io.ReadWriteCloser, error)
	close      func() error
	oneAtATime bool // a port: take the next line only when this one ended

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewSerialServer serves on the serial port dev at baud. The port is
// opened on Start; when it fails (a USB gadget port vanishes while the
// cable is out) it is reopened after a pause.
func NewSerialServer(a *Agent, dev string, baud int) *SerialServer {
	var port io.ReadWriteCloser
	s := &SerialServer{agent: a, what: dev, oneAtATime: true, close: func() error { return nil }}
	s.open = func() (err error) {
		port, err = seriallink.OpenPort(dev, baud)
		return err
	}
	s.next = func(ctx context.Context) (io.ReadWriteCloser, error) {
		if p := port; p != nil {
			port = nil
			return p, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
		return seriallink.OpenPort(dev, baud)
	}
	return s
}

// NewUnixSerialServer listens on a unix socket at path and serves every
// connection to it as a serial line.
func NewUnixSerialServer(a *Agent, path string) *SerialServer {
	var ln net.Listener
	s := &SerialServer{agent: a, what: "unix:" + path}
	s.open = func() (err error) {
		ln, err = net.Listen("unix", path)
		return err
	}
	s.next = func(context.Context) (io.ReadWriteCloser, error) { return ln.Accept() }
	s.close = func() error { return ln.Close() }
	return s
}

// NewLineSerialServer serves on line, a serial line that is already open
// (a sim board's UART, handed down by its supervisor), named what in logs.
// Close of line must unblock a pending Read. Once Started, the server owns
// line: it serves it until it ends or Stop closes it, and takes no other.
func NewLineSerialServer(a *Agent, what string, line io.ReadWriteCloser) *SerialServer {
	s := &SerialServer{agent: a, what: what, oneAtATime: true,
		open: func() error { return nil }, close: func() error { return nil }}
	s.next = func(ctx context.Context) (io.ReadWriteCloser, error) {
		if l := line; l != nil {
			line = nil
			return l, nil
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s
}

// Start opens the port or listens (so a missing device fails here) and
// serves in the background.
func (s *SerialServer) Start(context.Context) error {
	if err := s.open(); err != nil {
		return fmt.Errorf("serial %s: %w", s.what, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(1)
	go s.loop(ctx)
	s.agent.log.Info("serving serial-framed link", "line", s.what)
	return nil
}

func (s *SerialServer) loop(ctx context.Context) {
	defer s.wg.Done()
	for {
		line, err := s.next(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.agent.log.Error("serial line", "line", s.what, "err", err)
			}
			return
		}
		ended := make(chan struct{})
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer close(ended)
			s.serveLine(ctx, line)
		}()
		if s.oneAtATime {
			select {
			case <-ended:
			case <-ctx.Done():
				return
			}
		}
	}
}

// serveLine runs sessions on one line until it fails or ctx ends. When ctx
// ends, ServeLink closes the session, which lingers until what was queued
// (the answer to system.reboot) is acknowledged; only then is the line
// closed.
func (s *SerialServer) serveLine(ctx context.Context, line io.ReadWriteCloser) {
	cfg := s.Link
	cfg.Beacon, cfg.Logger = s.agent.Beacon, s.agent.log
	ep := seriallink.NewEndpoint(line, cfg)
	defer ep.Close()
	for {
		link, err := ep.Accept(ctx)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, io.EOF) {
				s.agent.log.Debug("serial line ended", "line", s.what, "err", err)
			}
			return
		}
		s.agent.ServeLink(ctx, link, Peer{Addr: s.what, Link: "serial"})
	}
}

// Stop ends every session and line and waits for them.
func (s *SerialServer) Stop(ctx context.Context) error {
	if s.cancel == nil {
		return nil
	}
	s.cancel()
	err := s.close()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
