package service

import (
	"context"
	"log/slog"
	"math"
	"runtime/debug"
	"time"

	"github.com/boardlink/boardlink/internal/footprint"
	"github.com/boardlink/boardlink/internal/units"
)

// MemoryConfig is how the service process holds its memory
// (docs/service.md, "Memory").
type MemoryConfig struct {
	// Limit is the Go runtime's soft memory limit (debug.SetMemoryLimit):
	// past it the collector runs harder, so that the heap stays under it.
	// 0: none (or GOMEMLIMIT's).
	Limit units.Size `yaml:"limit" validate:"min=0"`
	// GCPercent is the collector's GOGC (debug.SetGCPercent); 0: Go's
	// default, 100 (or GOGC's); -1: off (then only Limit collects).
	GCPercent int `yaml:"gc_percent" validate:"min=-1,max=10000"`
	// TrimEvery is how often the service gives back its free heap and
	// drops its binary's pages that it touched once and not since (start,
	// a rare request); the first trim comes a minute after the start
	// (default 10m).
	TrimEvery Duration `yaml:"trim_every"`
	// KeepPages turns the trims off.
	KeepPages bool `yaml:"keep_pages"`
}

// Defaults of MemoryConfig.
const (
	DefaultTrimEvery = 10 * time.Minute
	firstTrim        = time.Minute
)

// ManageMemory applies m to this process (the service's: the settings
// are the Go runtime's, for the whole process) and trims its memory as
// m says until ctx ends. The trims cost a timer between them.
func ManageMemory(ctx context.Context, m MemoryConfig, log *slog.Logger) {
	if m.Limit > 0 {
		debug.SetMemoryLimit(int64(m.Limit))
	}
	if m.GCPercent != 0 {
		debug.SetGCPercent(m.GCPercent)
	}
	limit := debug.SetMemoryLimit(-1)
	if limit == math.MaxInt64 {
		limit = 0
	}
	log.Info("memory", "limit_bytes", limit, "gc_percent", m.GCPercent, "trim_every", m.TrimEvery.D(), "keep_pages", m.KeepPages)
	if m.KeepPages {
		return
	}
	every := m.TrimEvery.D()
	if every == 0 {
		every = DefaultTrimEvery
	}
	go func() {
		t := time.NewTimer(min(firstTrim, every))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := footprint.Trim(); err != nil {
				log.Warn("memory: trim", "err", err)
			}
			t.Reset(every)
		}
	}()
}
