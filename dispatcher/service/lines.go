package service

import (
	"context"
	"errors"
	"io"
	"path/filepath"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/linemux"
)

// A serial line holds one session, and the service needs several with a
// board on one: its persistent connection, and the sessions of their own
// that a reboot, an OTA or a rollout open. So the service reaches its
// serial boards through line muxes of its own (package linemux), run in
// its process, one per line, started by the first dial and kept while the
// service runs. A mux records the board's console too, from the line
// itself: text printed while no session is up (a reboot) is kept.

// linesDir holds the sockets and lock files of the service's muxes.
func (s *Service) linesDir() string { return filepath.Join(s.st.Dir(), "lines") }

// lineShare is how sessions with b on its line at addr reach it: through
// its mux, started if none runs, which authenticates with opts and
// records the console into record.
func (s *Service) lineShare(b *board, opts dispatcher.DialOptions, record io.Writer) *dispatcher.LineShare {
	return &dispatcher.LineShare{Dir: s.linesDir(), Start: func(ctx context.Context, addr string) error {
		return s.startMux(ctx, b, addr, opts, record)
	}}
}

// startMux takes the line at addr for a mux that serves until the service
// stops (or the line ends: the next dial starts another). One that
// another dial started meanwhile serves already.
func (s *Service) startMux(ctx context.Context, b *board, addr string, opts dispatcher.DialOptions, record io.Writer) error {
	m, err := linemux.Listen(ctx, linemux.Config{Addr: addr, Dial: opts, Dir: s.linesDir(), Idle: -1,
		Console: record, Logger: opts.Logger})
	if errors.Is(err, linemux.ErrRunning) {
		return nil
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	life, stopping := s.ctx, s.stopped || s.ctx == nil
	if !stopping {
		s.wg.Add(1) // under mu: Stop waits for the muxes too
	}
	s.mu.Unlock()
	if stopping {
		done, cancel := context.WithCancel(context.Background())
		cancel()
		_ = m.Serve(done) // ends at once, freeing the line
		return errServiceStopping
	}
	go func() {
		defer s.wg.Done()
		if err := m.Serve(life); err != nil {
			s.log.Warn("line mux ended", "board", b.id, "line", addr, "err", err)
		}
	}()
	return nil
}
