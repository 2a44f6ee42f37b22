package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/atomicfile"
)

// resolveTimeout bounds how long a board id is looked for.
const resolveTimeout = 2 * time.Second

// cacheFresh is how long a resolved address is tried first without
// discovery. A stale or wrong entry costs one failed dial, then discovery.
const cacheFresh = 10 * time.Minute

// errUnknownBoard marks an id that matches no board, or several.
var errUnknownBoard = errors.New("unknown board")

// dialID finds the board named id (or a unique prefix of an id) and dials
// it, trying the address cached from an earlier call first.
func (g *globals) dialID(ctx context.Context, id string, opts dispatcher.DialOptions) (*dispatcher.Client, error) {
	cache := loadCache()
	if e, ok := cache[id]; ok && time.Since(e.Seen) < cacheFresh {
		// The address may hold another board by now: only the id counts,
		// and the board's key is checked as always.
		o := opts
		o.BoardID = e.ID
		if c, err := dispatcher.Dial(ctx, e.Address, o); err == nil {
			return c, nil
		} else if errors.Is(err, dispatcher.ErrUntrusted) && !errors.As(err, new(*dispatcher.WrongBoardError)) {
			return nil, err // the right board with the wrong key: say so, never look further
		}
	}
	recs, err := findBoards(ctx, g, lsOptions{timeout: resolveTimeout}, id)
	if err != nil {
		return nil, fmt.Errorf("looking for board %q: %w", id, err)
	}
	r, err := pick(id, recs)
	if err != nil {
		return nil, err
	}
	cache[r.ID] = cacheEntry{ID: r.ID, Address: r.Address, Seen: time.Now()}
	cache[id] = cache[r.ID]
	saveCache(cache)
	opts.BoardID = r.ID
	if opts.Fingerprint.IsZero() && r.FP != "" {
		// What the board announced must be what it proves.
		if fp, err := auth.ParseFingerprint(r.FP); err == nil {
			opts.Fingerprint = fp
		}
	}
	return dispatcher.Dial(ctx, r.Address, opts)
}

// resolve turns BOARD into an address without opening a session: an
// address as it is, an id through discovery.
func (g *globals) resolve(ctx context.Context, board string) (string, error) {
	if u, err := url.Parse(board); err == nil && u.Scheme != "" {
		return board, nil
	}
	recs, err := findBoards(ctx, g, lsOptions{timeout: resolveTimeout}, board)
	if err != nil {
		return "", fmt.Errorf("looking for board %q: %w", board, err)
	}
	r, err := pick(board, recs)
	if err != nil {
		return "", &usageError{err}
	}
	return r.Address, nil
}

// pick chooses the board an id names: an exact match, else the only board
// whose id starts with it.
func pick(id string, recs []discovery.Record) (discovery.Record, error) {
	var prefixed []discovery.Record
	for _, r := range recs {
		if r.ID == id {
			return r, nil
		}
		if strings.HasPrefix(r.ID, id) {
			prefixed = append(prefixed, r)
		}
	}
	switch len(prefixed) {
	case 1:
		return prefixed[0], nil
	case 0:
		seen := make([]string, len(recs))
		for i, r := range recs {
			seen[i] = r.ID
		}
		slices.Sort(seen)
		if len(seen) == 0 {
			return discovery.Record{}, fmt.Errorf("%w %q: no board answered within %s (check --iface, or give an address such as ws://HOST:7207)",
				errUnknownBoard, id, resolveTimeout)
		}
		return discovery.Record{}, fmt.Errorf("%w %q: boards seen: %s", errUnknownBoard, id, strings.Join(seen, ", "))
	}
	var names []string
	for _, r := range prefixed {
		names = append(names, r.ID+" ("+r.Address+")")
	}
	return discovery.Record{}, fmt.Errorf("%w: %q is ambiguous: %s", errUnknownBoard, id, strings.Join(names, ", "))
}

type cacheEntry struct {
	ID      string    `json:"id"`
	Address string    `json:"address"`
	Seen    time.Time `json:"seen"`
}

const cacheFormat = 2

func cachePath() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "boardlink", "boards.json")
}

// loadCache reads the id cache; any problem means an empty cache.
func loadCache() map[string]cacheEntry {
	cache := map[string]cacheEntry{}
	if p := cachePath(); p != "" {
		_ = atomicfile.ReadJSON(p, cacheFormat, &cache)
	}
	return cache
}

// saveCache writes the cache, best effort: it only saves time.
func saveCache(cache map[string]cacheEntry) {
	p := cachePath()
	if p == "" || os.MkdirAll(filepath.Dir(p), 0o755) != nil {
		return
	}
	for id, e := range cache {
		if time.Since(e.Seen) > cacheFresh {
			delete(cache, id)
		}
	}
	_ = atomicfile.WriteJSON(p, cacheFormat, cache)
}
