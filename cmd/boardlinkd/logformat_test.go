package main

import (
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/internal/testenv"
)

// TestLogFormatJSON: --log-format json gives one JSON object a line, each
// with its time, level and message, for a log collector; the start names
// the board, the state dir and the address served.
func TestLogFormatJSON(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		logs   testenv.Buffer
		runErr error
		done   = make(chan struct{})
	)
	go func() {
		defer close(done)
		runErr = run(ctx, []string{"--board", "sim", "--state-dir", filepath.Join(dir, "state"), "--listen", "127.0.0.1:0",
			"--no-auth", "--id", "json-1", "--no-mdns", "--log-format", "json"}, io.Discard, &logs)
	}()
	testenv.Eventually(t, "the start line", func() bool { return strings.Contains(logs.String(), `"msg":"boardlinkd started"`) })
	cancel()
	<-done
	if runErr != nil {
		t.Fatalf("run: %v\n%s", runErr, logs.String())
	}
	seen := map[string]map[string]any{}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("a line that is not JSON: %q: %v", line, err)
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := rec[k]; !ok {
				t.Fatalf("no %q in %q", k, line)
			}
		}
		seen[rec["msg"].(string)] = rec
	}
	if s := seen["boardlinkd started"]; s["id"] != "json-1" || s["state_dir"] != filepath.Join(dir, "state") {
		t.Errorf("start line %v", s)
	}
	if s := seen["serving wss://"]; s["addr"] == nil || !strings.HasPrefix(s["addr"].(string), "127.0.0.1:") {
		t.Errorf("serving line %v", s)
	}
}

// TestLogFormatRefused: an unknown format is a usage error naming the flag.
func TestLogFormatRefused(t *testing.T) {
	err := run(context.Background(), []string{"--board", "sim", "--state-dir", t.TempDir(), "--listen", "127.0.0.1:0",
		"--no-mdns", "--log-format", "xml"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `--log-format "xml": want text or json`) {
		t.Fatalf("run with --log-format xml: %v", err)
	}
}
