package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/internal/atomicfile"
)

// The ids of the boards this host saw last (a session, an ls), for the
// completion of BOARD: at most seenMax, each for seenFresh.
const (
	seenFormat = 1
	seenMax    = 500
	seenFresh  = 30 * 24 * time.Hour
	// seenRefresh is how stale a board's entry may get before a session
	// with it rewrites the file: a rewrite (two fsyncs) costs more than the
	// rest of a short call, and completion needs no fresher date.
	seenRefresh = time.Hour
)

// seenPath is $XDG_CACHE_HOME/boardlink/seen.json, or "" without a cache
// directory (then nothing is remembered).
func seenPath() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "boardlink", "seen.json")
}

// readSeen is the fresh ids of seenPath, by when they were last seen.
func readSeen() map[string]time.Time {
	seen := map[string]time.Time{}
	if p := seenPath(); p == "" || atomicfile.ReadJSON(p, seenFormat, &seen) != nil {
		return map[string]time.Time{}
	}
	for id, at := range seen {
		if time.Since(at) > seenFresh {
			delete(seen, id)
		}
	}
	return seen
}

// rememberIDs notes ids as seen now, best effort: completion only.
func rememberIDs(ids ...string) {
	p := seenPath()
	if p == "" || len(ids) == 0 {
		return
	}
	seen := readSeen()
	stale := false
	for _, id := range ids {
		if id != "" && time.Since(seen[id]) > seenRefresh {
			seen[id], stale = time.Now(), true
		}
	}
	if !stale {
		return
	}
	for len(seen) > seenMax { // the oldest go first
		oldest := ""
		for id, at := range seen {
			if oldest == "" || at.Before(seen[oldest]) {
				oldest = id
			}
		}
		delete(seen, oldest)
	}
	if os.MkdirAll(filepath.Dir(p), 0o700) == nil {
		_ = atomicfile.WriteJSON(p, seenFormat, seen)
	}
}

// completeBoard completes the BOARD argument of every verb that takes
// one first: the names of the boards file and the ids seen lately. Later
// arguments (local paths) complete as files.
func completeBoard(g *globals) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveDefault
		}
		var out []string
		if f, err := g.boards(); err == nil {
			out = append(out, f.names()...)
		}
		for id := range readSeen() {
			out = append(out, id)
		}
		slices.Sort(out)
		out = slices.Compact(out)
		out = slices.DeleteFunc(out, func(s string) bool { return !strings.HasPrefix(s, toComplete) })
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeBoards gives every verb whose first argument is BOARD its
// completion.
func completeBoards(g *globals, root *cobra.Command) {
	for _, c := range root.Commands() {
		if f := strings.Fields(c.Use); len(f) > 1 && f[1] == "BOARD" && c.ValidArgsFunction == nil {
			c.ValidArgsFunction = completeBoard(g)
		}
	}
}
