package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
)

// resolver finds boards by id as ls lists them (mDNS on --iface, and
// serial ports), with the id cache; doubts go to stderr.
func (g *globals) resolver() *dispatcher.Resolver {
	cache, _ := dispatcher.DefaultResolveCachePath() // no cache dir: no cache
	return &dispatcher.Resolver{Ifaces: g.ifaces, CacheFile: cache, Logger: g.logger(), Warn: g.warn}
}

func (g *globals) warn(msg string) { fmt.Fprintf(g.stderr, "boardlink: warning: %s\n", msg) }

// resolve turns BOARD into an address without opening a session: a name
// from the boards file, an address (checked, in the form Dial uses), or a
// board id, found by discovery.
func (g *globals) resolve(ctx context.Context, board string) (string, error) {
	addr, _, err := g.target(board)
	if err != nil {
		return "", err
	}
	if a, err := dispatcher.ParseAddress(addr); !errors.Is(err, dispatcher.ErrNeedsDiscovery) {
		if err != nil {
			return "", &usageError{err}
		}
		return a, nil
	}
	start := time.Now()
	rec, err := g.resolver().Resolve(ctx, addr)
	if errors.Is(err, dispatcher.ErrUnknownBoard) {
		return "", &usageError{err}
	}
	if err != nil {
		return "", err
	}
	g.debug("resolved", "board", addr, "id", rec.ID, "address", rec.Address, "source", rec.Source,
		"took", time.Since(start).Round(time.Millisecond))
	return rec.Address, nil
}
