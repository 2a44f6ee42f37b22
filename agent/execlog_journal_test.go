package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/atomicfile"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// saved waits until m's journal holds ids.
func saved(t *testing.T, m *Execs, ids ...string) {
	t.Helper()
	j := m.journal
	testenv.Eventually(t, "the log saved", func() bool {
		j.mu.Lock()
		defer j.mu.Unlock()
		for _, id := range ids {
			if !j.written[id] {
				return false
			}
		}
		return true
	})
}

// lines is the log file's lines, its header first.
func lines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

func syncs(m *Execs) int {
	j := m.journal
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.syncs
}

// A command's end appends one line and one sync; the file is rewritten
// (compacted) only by the first save and when it holds twice the log.
func TestExecLogAppendsAndCompacts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "exec-log")
	m := newExecs(t, ExecOptions{LogPath: path, LogSize: 3})
	var got []string
	for i := range 6 {
		c := start(t, m, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
		wait(t, m, c)
		saved(t, m, c.ID())
		got = append(got, c.ID())
		if n, want := len(lines(t, path)), 1+i+1; n != want {
			t.Fatalf("after command %d: %d lines, want %d (a header and one per command)", i+1, n, want)
		}
		if n := syncs(m); n != i+1 {
			t.Fatalf("after command %d: %d writes, want %d", i+1, n, i+1)
		}
	}
	// The seventh goes past twice the log's size: the file is rewritten
	// with what the log holds.
	c := start(t, m, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
	wait(t, m, c)
	saved(t, m, c.ID())
	got = append(got, c.ID())
	if n := len(lines(t, path)); n != 1+3 {
		t.Fatalf("after compaction: %d lines, want a header and 3", n)
	}
	recs, bad, err := readLogFile(path)
	if err != nil || bad != 0 {
		t.Fatalf("readLogFile: %d bad, %v", bad, err)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.Result.ID)
	}
	if want := got[len(got)-3:]; !slices.Equal(ids, want) {
		t.Fatalf("compacted log %v, want %v", ids, want)
	}
}

// Commands that end while a batch waits are written together: one write,
// one sync.
func TestExecLogBatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "exec-log")
	m := newExecs(t, ExecOptions{LogPath: path})
	first := run(t, m, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
	saved(t, m, first.ID)
	before := syncs(m)

	j := m.journal
	release := make(chan struct{})
	j.mu.Lock()
	j.pause = func() { <-release }
	j.mu.Unlock()
	t.Cleanup(func() {
		j.mu.Lock()
		j.pause = func() { time.Sleep(execLogLinger) }
		j.mu.Unlock()
	})
	var ids []string
	for range 5 {
		ids = append(ids, run(t, m, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{}).ID)
	}
	// The first save waits in pause, the others behind it; all five are
	// queued in one batch.
	testenv.Eventually(t, "five records queued", func() bool {
		j.mu.Lock()
		defer j.mu.Unlock()
		return len(j.queued) == 5 && j.writing
	})
	close(release)
	saved(t, m, ids...)
	if n := syncs(m) - before; n != 1 {
		t.Fatalf("%d writes for five commands that ended together, want 1", n)
	}
	if n := len(lines(t, path)); n != 1+6 {
		t.Fatalf("%d lines, want a header and 6", n)
	}
}

// A power cut tears the last line; corruption spoils another: both are
// left out by their CRC, the rest loads, and the next save rewrites the
// file without them.
func TestExecLogTornRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "exec-log")
	now := time.Now().Round(0)
	var recs []logRecord
	for i, id := range []string{"c1-0001", "c2-0002", "c3-0003"} {
		recs = append(recs, logRecord{Argv: []string{"x"}, Result: proto.ExecResult{ID: id, ExitCode: i, Started: now, Ended: now}})
	}
	if err := writeLogFile(path, recs); err != nil {
		t.Fatal(err)
	}
	ls := lines(t, path)
	// Spoil c2's line (a byte of its record) and tear a fourth line.
	ls[2] = bytes.Replace(ls[2], []byte(`"exit_code":1`), []byte(`"exit_code":7`), 1)
	if !bytes.Contains(ls[2], []byte(`"exit_code":7`)) {
		t.Fatalf("no exit code in %s", ls[2])
	}
	torn, err := appendLogLine(nil, logRecord{Argv: []string{"y"}, Result: proto.ExecResult{ID: "c4-0004"}})
	if err != nil {
		t.Fatal(err)
	}
	data := append(bytes.Join(ls, []byte("\n")), '\n')
	data = append(data, torn[:len(torn)/2]...)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}

	m := newExecs(t, ExecOptions{LogPath: path})
	if err := m.LoadLog(); err != nil {
		t.Fatal(err)
	}
	if got, want := ids(m.Log(0)), []string{"c3-0003", "c1-0001"}; !slices.Equal(got, want) {
		t.Fatalf("loaded %v, want %v", got, want)
	}
	c := run(t, m, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
	saved(t, m, c.ID)
	recs, bad, err := readLogFile(path)
	if err != nil || bad != 0 || len(recs) != 3 {
		t.Fatalf("after the next save: %d records, %d bad, %v; want 3 and none bad", len(recs), bad, err)
	}
}

// A log of format 1 (one JSON document, before the journal) still loads,
// and the next save rewrites it as a journal.
func TestExecLogReadsFormat1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "exec-log.json")
	now := time.Now().Round(0)
	old := []logRecord{{Argv: []string{"old"}, Result: proto.ExecResult{ID: "c1-aaaa", ExitCode: 3, Started: now, Ended: now}}}
	if err := atomicfile.WriteJSON(path, legacyLogFormat, old); err != nil {
		t.Fatal(err)
	}
	m := newExecs(t, ExecOptions{LogPath: path})
	if err := m.LoadLog(); err != nil {
		t.Fatal(err)
	}
	if got := m.Log(0); len(got) != 1 || got[0].ID != "c1-aaaa" || got[0].ExitCode != 3 {
		t.Fatalf("loaded %+v", got)
	}
	c := run(t, m, proto.ExecStartParams{Argv: []string{"true"}}, ExecIO{})
	saved(t, m, c.ID)
	if h := lines(t, path)[0]; string(h) != `{"format":2}` {
		t.Fatalf("header %s, want format 2", h)
	}
	recs, bad, err := readLogFile(path)
	if err != nil || bad != 0 || len(recs) != 2 || recs[0].Result.ID != "c1-aaaa" || recs[1].Result.ID != c.ID {
		t.Fatalf("rewritten log: %+v, %d bad, %v", recs, bad, err)
	}
}
