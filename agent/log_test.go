package agent_test

import (
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
)

// logLines reads a JSON log: one object per line.
func logLines(t *testing.T, buf *testenv.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	dec := json.NewDecoder(strings.NewReader(buf.String()))
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("log is not JSON lines: %v\n%s", err, buf)
		}
		out = append(out, m)
	}
	return out
}

// find is the first line with msg whose attributes include want.
func find(lines []map[string]any, msg string, want map[string]any) map[string]any {
	for _, l := range lines {
		if l["msg"] != msg {
			continue
		}
		ok := true
		for k, v := range want {
			if l[k] != v {
				ok = false
			}
		}
		if ok {
			return l
		}
	}
	return nil
}

// TestLogsSessionsAndTransfers: the agent logs, each line with the board
// id, a refused login, every session (peer, how it authenticated, how
// long it lasted), every push and pull (bytes, sha256, duration) at INFO,
// and each call at DEBUG.
func TestLogsSessionsAndTransfers(t *testing.T) {
	var buf testenv.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// The clock moves past the lockout that the refused login earns.
	var later atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(later.Load())) }
	h := newHarnessConfig(t, "", agent.Config{Logger: log, Auth: agent.AuthConfig{Now: now}})
	ctx := ctxTimeout(t, time.Minute)

	bad := h.opts()
	bad.Token = "not-the-token"
	if c, err := dispatcher.Dial(ctx, h.wsURL(), bad); err == nil {
		c.Close()
		t.Fatal("a wrong token was taken")
	}
	later.Store(int64(time.Hour))
	// The refused login pinned the board's key: the token now rides on the
	// wss:// upgrade (docs/protocol.md, 2.6).
	c := dialWS(t, h)
	local := filepath.Join(t.TempDir(), "in.bin")
	sum := writeRandom(t, local, 100<<10)
	remote := filepath.Join(h.root, "in.bin")
	if _, err := c.Push(ctx, local, remote, dispatcher.TransferOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pull(ctx, remote, filepath.Join(t.TempDir(), "back.bin"), dispatcher.TransferOptions{}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	testenv.Eventually(t, "the session's end in the log", func() bool {
		return find(logLines(t, &buf), "session ended", nil) != nil
	})
	lines := logLines(t, &buf)
	board := map[string]any{"board": "test-board"}
	for _, want := range []struct {
		msg   string
		attrs map[string]any
		keys  []string
	}{
		{"authentication failed", map[string]any{"level": "WARN"}, []string{"peer", "proof"}},
		{"session", map[string]any{"level": "INFO", "auth": "bearer"}, []string{"peer", "link"}},
		{"push", map[string]any{"level": "INFO", "path": remote, "sha256": sum, "bytes": float64(100 << 10)}, []string{"peer", "duration"}},
		{"pull", map[string]any{"level": "INFO", "path": remote, "sha256": sum}, []string{"peer", "duration", "bytes"}},
		{"session ended", map[string]any{"level": "INFO", "auth": "bearer"}, []string{"peer", "duration"}},
		{"call", map[string]any{"level": "DEBUG", "method": "file.push"}, []string{"peer", "took"}},
	} {
		for k, v := range board {
			want.attrs[k] = v
		}
		l := find(lines, want.msg, want.attrs)
		if l == nil {
			t.Fatalf("no %q line with %v in the log:\n%s", want.msg, want.attrs, buf.String())
		}
		for _, k := range want.keys {
			if _, ok := l[k]; !ok {
				t.Fatalf("%q line without %s: %v", want.msg, k, l)
			}
		}
	}
}
