package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/boardlink/boardlink/transport/wslink"
)

// WebSocketServer serves the agent at wslink.Path over HTTP.
type WebSocketServer struct {
	agent  *Agent
	addr   string
	log    *slog.Logger
	ln     net.Listener
	srv    *http.Server
	cancel context.CancelFunc

	mu       sync.Mutex
	stopping bool
	conns    sync.WaitGroup
}

// NewWebSocketServer prepares a server on addr (host:port); it listens on
// Start and requires the agent's token, if it has one, before upgrading.
func NewWebSocketServer(a *Agent, addr string) *WebSocketServer {
	return &WebSocketServer{agent: a, addr: addr, log: a.log}
}

// Start listens and serves in the background; a busy port fails here.
func (s *WebSocketServer) Start(context.Context) error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.ln, s.cancel = ln, cancel
	mux := http.NewServeMux()
	mux.Handle(wslink.Path, &wslink.Server{Token: s.agent.cfg.Token, Context: ctx,
		Serve: func(ctx context.Context, l *wslink.Link) {
			s.mu.Lock()
			if s.stopping {
				s.mu.Unlock()
				return
			}
			s.conns.Add(1)
			s.mu.Unlock()
			defer s.conns.Done()
			s.agent.ServeLink(ctx, l, true)
		}})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("websocket server", "err", err)
		}
	}()
	s.log.Info("serving websocket", "addr", ln.Addr().String())
	return nil
}

// Addr is the address actually listened on (useful with port 0).
func (s *WebSocketServer) Addr() net.Addr { return s.ln.Addr() }

// Stop closes the listener and every connection, waiting for them to end.
func (s *WebSocketServer) Stop(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	s.cancel()
	err := s.srv.Shutdown(ctx) // hijacked WebSocket connections are ended by cancel
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return err
}
