package agent

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/boardlink/boardlink/proto"
)

// BenchmarkExecLog runs `true` b.N times, one after the other, with the
// log persisted and full (100 commands), and waits until every record is
// saved: the cost of a command with its log, as a board pays it.
//
//	go test -run '^$' -bench ExecLog -benchtime 300x ./agent/
func BenchmarkExecLog(b *testing.B) {
	path := filepath.Join(b.TempDir(), "exec-log.json")
	m := NewExecs(ExecOptions{LogPath: path})
	ctx := context.Background()
	runTrue := func() {
		c, err := m.Start(proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := m.Wait(ctx, c.ID()); err != nil {
			b.Fatal(err)
		}
	}
	for range defaultLogSize {
		runTrue()
	}
	b.ResetTimer()
	for range b.N {
		runTrue()
	}
	if err := m.Shutdown(ctx); err != nil { // every save done
		b.Fatal(err)
	}
}
