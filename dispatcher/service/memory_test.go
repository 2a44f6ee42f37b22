package service

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"
)

// TestMemoryConfig: the memory section is read (sizes as people write
// them), checked, and applied to the process's runtime.
func TestMemoryConfig(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "serve.yaml")
	write := func(memory string) {
		t.Helper()
		if err := os.WriteFile(p, []byte("users: [{name: alice, token_sha256: "+
			"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae}]\nmemory: "+memory+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("{limit: 256MiB, gc_percent: 50, trim_every: 5m}")
	cfg, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if m := cfg.Memory; m.Limit != 256<<20 || m.GCPercent != 50 || m.TrimEvery.D() != 5*time.Minute || m.KeepPages {
		t.Fatalf("%+v", m)
	}
	for _, bad := range []string{"{gc_percent: -2}", "{limit: lots}", "{trim: 5m}"} {
		write(bad)
		if _, err := LoadConfig(p); !errors.Is(err, ErrBadConfig) {
			t.Errorf("memory %s: %v", bad, err)
		}
	}

	oldLimit, oldGC := debug.SetMemoryLimit(-1), debug.SetGCPercent(-1)
	debug.SetGCPercent(oldGC)
	t.Cleanup(func() { debug.SetMemoryLimit(oldLimit); debug.SetGCPercent(oldGC) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ManageMemory(ctx, MemoryConfig{Limit: 256 << 20, GCPercent: 50, KeepPages: true}, slog.New(slog.DiscardHandler))
	if limit, gc := debug.SetMemoryLimit(-1), debug.SetGCPercent(oldGC); limit != 256<<20 || gc != 50 {
		t.Fatalf("applied: limit %d, GOGC %d", limit, gc)
	}
}
