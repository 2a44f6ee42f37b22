package service

import (
	"context"
	"maps"
	"slices"

	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/dispatcher"
)

// discover adds the boards mDNS and the serial ports find to the
// inventory, and follows a board that moves to a new address, until ctx
// ends. A board that goes away stays in the inventory: its heartbeat
// finds it offline.
func (s *Service) discover(ctx context.Context) {
	r := &dispatcher.Resolver{Ifaces: s.cfg.Discovery.Ifaces, NoMDNS: !s.cfg.Discovery.MDNS,
		NoSerial: !s.cfg.Discovery.Serial, Logger: s.log,
		Warn: func(msg string) { s.log.Warn("discovery: " + msg) }}
	err := r.Watch(ctx, func(ev discovery.Event) error {
		if ev.Op == discovery.Added || ev.Op == discovery.Updated {
			s.found(ev.Record)
		}
		return nil
	})
	if err != nil && ctx.Err() == nil {
		s.log.Error("discovery stopped", "err", err)
	}
}

// found adds or updates a discovered board. A static entry wins: its
// address is the config's.
func (s *Service) found(rec discovery.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || rec.ID == "" || rec.Address == "" {
		return
	}
	b := s.boards[rec.ID]
	switch {
	case b == nil:
		b = &board{id: rec.ID, state: Offline}
		s.boards[b.id] = b
		s.ids = append(s.ids, b.id)
		slices.Sort(s.ids)
	case b.static != nil || b.address == rec.Address && b.client != nil:
		return
	}
	b.address, b.source, b.model, b.labels, b.local = rec.Address, rec.Source, rec.Model, maps.Clone(rec.Labels), true
	s.recordLocked(b)
	s.log.Info("board found", "board", b.id, "address", b.address, "source", b.source)
	if b.owner == s.owner {
		s.watchLocked(b)
	} else {
		s.kickClaims() // it is driven once claimed
	}
}
