package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/boardlink/boardlink/dispatcher"
)

// resolver finds boards by id as ls lists them (mDNS on --iface, and
// serial ports), with the id cache; doubts go to stderr.
func (g *globals) resolver() *dispatcher.Resolver {
	cache, _ := dispatcher.DefaultResolveCachePath() // no cache dir: no cache
	return &dispatcher.Resolver{Ifaces: g.ifaces, CacheFile: cache, Logger: g.logger(), Warn: g.warn}
}

func (g *globals) warn(msg string) { fmt.Fprintf(g.stderr, "boardlink: warning: %s\n", msg) }

// resolve turns BOARD into an address without opening a session.
func (g *globals) resolve(ctx context.Context, board string) (string, error) {
	addr, err := g.resolver().Address(ctx, board)
	if errors.Is(err, dispatcher.ErrUnknownBoard) {
		return "", &usageError{err}
	}
	return addr, err
}
