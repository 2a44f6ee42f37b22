package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/atomicfile"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

func ids(entries []proto.ExecLogEntry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.ID
	}
	return out
}

func TestExecLogOrderAndBound(t *testing.T) {
	m := newExecs(t, ExecOptions{LogSize: 3})
	var started []string
	for i := range 5 {
		c := start(t, m, proto.ExecStartParams{Argv: []string{"sh", "-c", "exit " + strconv.Itoa(i)}}, ExecIO{})
		wait(t, m, c)
		started = append(started, c.ID())
	}
	newestFirst := []string{started[4], started[3], started[2]}
	tests := []struct {
		limit int
		want  []string
	}{
		{limit: 0, want: newestFirst},
		{limit: -1, want: newestFirst},
		{limit: 2, want: newestFirst[:2]},
		{limit: 10, want: newestFirst},
	}
	for _, tt := range tests {
		if got := ids(m.Log(tt.limit)); !slices.Equal(got, tt.want) {
			t.Errorf("Log(%d) = %v, want %v", tt.limit, got, tt.want)
		}
	}
	e := m.Log(1)[0]
	if e.Running || e.ExitCode != 4 || e.Ended == nil || e.Started.IsZero() || !slices.Equal(e.Argv, []string{"sh", "-c", "exit 4"}) {
		t.Errorf("newest entry = %+v", e)
	}
	// Dropped from the log, a command is no longer known.
	if _, err := m.Wait(context.Background(), started[0]); !proto.IsReason(err, proto.ReasonNotFound) {
		t.Errorf("Wait for a command dropped from the log = %v, want not_found", err)
	}
	if res, err := m.Wait(context.Background(), started[2]); err != nil || res.ExitCode != 2 {
		t.Errorf("Wait for a finished command in the log = %+v, %v", res, err)
	}
}

// Running commands are listed and never dropped, even beyond the log size.
func TestExecLogKeepsRunning(t *testing.T) {
	m := newExecs(t, ExecOptions{LogSize: 2})
	done := start(t, m, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
	wait(t, m, done)
	var running []*Command
	for range 3 {
		c := start(t, m, sh(`printf 12345; exec sleep 1000`), ExecIO{})
		killGroupOnCleanup(t, c.PID())
		running = append(running, c)
	}
	entries := m.Log(0)
	if want := []string{running[2].ID(), running[1].ID(), running[0].ID()}; !slices.Equal(ids(entries), want) {
		t.Fatalf("Log = %v, want the running commands %v", ids(entries), want)
	}
	for _, e := range entries {
		if !e.Running || e.Ended != nil || e.ExitCode != 0 {
			t.Errorf("running entry %+v", e)
		}
	}
	testenv.Eventually(t, "the byte count of a running command", func() bool { return m.Log(1)[0].StdoutBytes == 5 })
	for _, c := range running {
		if err := m.Cancel(c.ID(), "KILL"); err != nil {
			t.Fatal(err)
		}
		// Not Wait by id: ended, the oldest is beyond the log size and
		// may be gone from the log before Wait looks (CI, 2026-12-03).
		select {
		case <-c.Done():
		case <-time.After(patience):
			t.Fatalf("%s did not end after KILL", c.ID())
		}
	}
	entries = m.Log(0)
	if want := []string{running[2].ID(), running[1].ID()}; !slices.Equal(ids(entries), want) {
		t.Errorf("Log after the end = %v, want %v", ids(entries), want)
	}
	if e := entries[0]; e.Running || e.Signal != "KILL" || !e.Canceled || e.ExitCode != -1 || e.StdoutBytes != 5 {
		t.Errorf("canceled entry %+v", e)
	}
}

func TestExecLogPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "exec-log.json")
	m1 := NewExecs(ExecOptions{LogPath: path, LogSize: 3})
	if err := m1.LoadLog(); err != nil {
		t.Fatalf("LoadLog without a file: %v", err)
	}
	for _, p := range []proto.ExecStartParams{
		{Argv: []string{"false"}},
		{Argv: []string{"printf abc"}, Shell: true},
		{Argv: []string{"kill -9 $$"}, Shell: true, Detach: true},
		{Argv: []string{"true"}},
	} {
		run(t, m1, p, ExecIO{})
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := m1.Shutdown(ctx); err != nil { // waits until the log is saved
		t.Fatal(err)
	}
	before := m1.Log(0)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("log not saved: %v", err)
	}

	m2 := newExecs(t, ExecOptions{LogPath: path, LogSize: 3})
	if err := m2.LoadLog(); err != nil {
		t.Fatalf("LoadLog: %v", err)
	}
	after := m2.Log(0)
	if len(after) != 3 || len(before) != 3 {
		t.Fatalf("log had %d entries, reloaded %d; want 3", len(before), len(after))
	}
	for i := range before {
		b, a := before[i], after[i]
		if a.ID != b.ID || !slices.Equal(a.Argv, b.Argv) || a.Shell != b.Shell || a.ExitCode != b.ExitCode ||
			a.Signal != b.Signal || a.StdoutBytes != b.StdoutBytes || !a.Started.Equal(b.Started) || !a.Ended.Equal(*b.Ended) {
			t.Errorf("entry %d reloaded as %+v, was %+v", i, a, b)
		}
	}
	killed := before[1]
	res, err := m2.Wait(context.Background(), killed.ID)
	if err != nil || res.SignalNum != 9 || res.ExitCode != -1 || res.ID != killed.ID {
		t.Errorf("Wait for a reloaded command = %+v, %v; want the KILL result", res, err)
	}

	// New commands go after the reloaded ones, with fresh ids, and are saved too.
	c := start(t, m2, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
	wait(t, m2, c)
	if got := ids(m2.Log(0)); got[0] != c.ID() || slices.Contains(got[1:], c.ID()) || len(got) != 3 {
		t.Errorf("log after a new command = %v", got)
	}
	if err := m2.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	m3 := NewExecs(ExecOptions{LogPath: path})
	if err := m3.LoadLog(); err != nil {
		t.Fatal(err)
	}
	if got := ids(m3.Log(0)); !slices.Equal(got, ids(m2.Log(0))) {
		t.Errorf("second reload = %v, want %v", got, ids(m2.Log(0)))
	}
}

func TestExecLogLoadRejects(t *testing.T) {
	dir := t.TempDir()
	newer := filepath.Join(dir, "newer.json")
	if err := atomicfile.WriteJSON(newer, execLogFormat+1, []logRecord{}); err != nil {
		t.Fatal(err)
	}
	corrupt := filepath.Join(dir, "corrupt.json")
	if err := os.WriteFile(corrupt, []byte(`{"format": 1, "data": {`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, path string
		isFormat   bool
	}{
		{"newer format", newer, true},
		{"corrupt", corrupt, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := NewExecs(ExecOptions{LogPath: tt.path})
			err := m.LoadLog()
			if err == nil || errors.Is(err, atomicfile.ErrFormat) != tt.isFormat {
				t.Fatalf("LoadLog = %v", err)
			}
			if n := len(m.Log(0)); n != 0 {
				t.Errorf("a rejected file put %d entries in the log", n)
			}
		})
	}
}

// Loading after commands started keeps them newest and never duplicates an id.
func TestExecLogLoadAfterStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.json")
	now := time.Now()
	recs := []logRecord{
		{Argv: []string{"old"}, Result: proto.ExecResult{ID: "c1-aaaa", ExitCode: 1, Started: now, Ended: now}},
		{Argv: []string{"no id"}},
	}
	m := newExecs(t, ExecOptions{LogPath: path})
	c := start(t, m, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
	wait(t, m, c)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := m.Shutdown(ctx); err != nil { // the log is saved: it will not overwrite the file below
		t.Fatal(err)
	}
	recs = append(recs, logRecord{Argv: []string{"clash"}, Result: proto.ExecResult{ID: c.ID()}})
	if err := writeLogFile(path, recs); err != nil {
		t.Fatal(err)
	}
	if err := m.LoadLog(); err != nil {
		t.Fatal(err)
	}
	got := m.Log(0)
	if want := []string{c.ID(), "c1-aaaa"}; !slices.Equal(ids(got), want) {
		t.Fatalf("Log = %v, want %v", ids(got), want)
	}
	if got[0].Argv[0] != "true" {
		t.Errorf("the live command was replaced by a loaded one: %+v", got[0])
	}
}
