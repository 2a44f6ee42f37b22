package consolelog_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher/consolelog"
)

// clock is a time a test moves by hand: every write is stamped with it.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) now() time.Time       { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) step(d time.Duration) { c.ns.Add(int64(d)) }
func (c *clock) opts(seg int64) consolelog.Options {
	return consolelog.Options{SegmentBytes: seg, Now: c.now}
}

func open(t *testing.T, dir string, o consolelog.Options) *consolelog.Log {
	t.Helper()
	l, err := consolelog.Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func write(t *testing.T, l *consolelog.Log, s string) {
	t.Helper()
	if n, err := l.Write([]byte(s)); err != nil || n != len(s) {
		t.Fatalf("write %q: %d %v", s, n, err)
	}
}

func texts(lines []consolelog.Line) []string {
	var out []string
	for _, l := range lines {
		out = append(out, l.Text)
	}
	return out
}

func diskBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

// TestLines: a line that arrives in pieces is one line, stamped with its
// first piece's time; a line still being written is read as far as it came.
func TestLines(t *testing.T) {
	c := newClock()
	l := open(t, t.TempDir(), c.opts(0))
	start := c.now()
	write(t, l, "U-Boot 2024.01\r\nDRAM: ")
	c.step(time.Second)
	write(t, l, "512 MiB\r\n")
	c.step(time.Second)
	write(t, l, "Starting kernel")
	lines, err := l.Since(time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	want := []consolelog.Line{{start, "U-Boot 2024.01\r"}, {start, "DRAM: 512 MiB\r"}, {start.Add(2 * time.Second), "Starting kernel"}}
	if fmt.Sprint(lines) != fmt.Sprint(want) {
		t.Fatalf("lines %q, want %q", lines, want)
	}
	if got := string(consolelog.Text(lines)); got != "U-Boot 2024.01\r\nDRAM: 512 MiB\r\nStarting kernel\n" {
		t.Fatalf("text %q", got)
	}
}

// TestRotationKeepsTheBound: however much arrives, the log holds about two
// segments, the newest text, and a read across the rotation joins a line
// that straddles it.
func TestRotationKeepsTheBound(t *testing.T) {
	const seg = 8 << 10
	c := newClock()
	dir := t.TempDir()
	l := open(t, dir, c.opts(seg))
	i := 0
	short := func() {
		write(t, l, fmt.Sprintf("line %04d of the boot log\n", i))
		i++
		c.step(time.Millisecond)
		if n := diskBytes(t, dir); n > 2*seg {
			t.Fatalf("after line %d the log holds %d bytes, bound %d", i, n, 2*seg)
		}
	}
	for range 2000 {
		short()
	}
	// Fill the current segment up to near its end, then a line in six
	// pieces that the next rotation cuts in two.
	for {
		fi, err := os.Stat(filepath.Join(dir, "current.log"))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > seg-2000 {
			break
		}
		short()
	}
	piece := strings.Repeat("x", 1000)
	for range 6 {
		write(t, l, piece)
	}
	write(t, l, "\n")
	if n := diskBytes(t, dir); n > 2*seg {
		t.Fatalf("the log holds %d bytes, bound %d", n, 2*seg)
	}
	lines, err := l.Since(time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if last := lines[len(lines)-1]; last.Text != strings.Repeat(piece, 6) {
		t.Fatalf("the line across the rotation came back as %d bytes", len(last.Text))
	}
	// The short lines kept are the newest, in order, with no gap.
	var first int
	if _, err := fmt.Sscanf(lines[0].Text, "line %d of", &first); err != nil || first == 0 {
		t.Fatalf("the oldest line kept: %q", lines[0].Text)
	}
	for k, line := range lines[:len(lines)-1] {
		if want := fmt.Sprintf("line %04d of the boot log", first+k); line.Text != want {
			t.Fatalf("line %d: %q, want %q", k, line.Text, want)
		}
	}
	if first+len(lines)-1 != i {
		t.Fatalf("kept lines %d to %d, the last written is %d", first, first+len(lines)-2, i-1)
	}
}

// TestRange: a span read returns what arrived in it, and only that.
func TestRange(t *testing.T) {
	c := newClock()
	l := open(t, t.TempDir(), c.opts(4<<10))
	var marks []time.Time
	for i := range 300 {
		marks = append(marks, c.now())
		write(t, l, fmt.Sprintf("boot %d\n", i))
		c.step(time.Second)
	}
	lines, err := l.Range(marks[250], marks[260])
	if err != nil {
		t.Fatal(err)
	}
	got := texts(lines)
	if len(got) != 10 || got[0] != "boot 250" || got[9] != "boot 259" {
		t.Fatalf("range: %q", got)
	}
	if !lines[0].Time.Equal(marks[250]) {
		t.Fatalf("stamped %v, arrived %v", lines[0].Time, marks[250])
	}
	since, err := l.Since(marks[298])
	if err != nil || fmt.Sprint(texts(since)) != "[boot 298 boot 299]" {
		t.Fatalf("since: %q %v", texts(since), err)
	}
	if old, err := l.Range(marks[0], marks[1]); err != nil || len(old) != 0 {
		t.Fatalf("a span that rotated away: %q %v", texts(old), err)
	}
}

// TestReopen: a log reopened after a restart appends, a line the last
// process left open ends, and a record a crash tore is closed off.
func TestReopen(t *testing.T) {
	c := newClock()
	dir := t.TempDir()
	l, err := consolelog.Open(dir, c.opts(0))
	if err != nil {
		t.Fatal(err)
	}
	write(t, l, "before the restart\nhalf a li")
	l.Close()
	if _, err := l.Write([]byte("x")); err == nil {
		t.Fatal("a write after Close: no error")
	}
	// A crash in the middle of a record.
	f, err := os.OpenFile(filepath.Join(dir, "current.log"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("2026-12-02T06:00:00.0000")
	f.Close()
	c.step(time.Minute)
	after := c.now()
	l = open(t, dir, c.opts(0))
	write(t, l, "after the restart\n")
	lines, err := l.Since(time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(texts(lines)); got != "[before the restart half a li after the restart]" {
		t.Fatalf("after a reopen: %q", got)
	}
	if since, _ := l.Since(after); len(since) != 1 || since[0].Text != "after the restart" {
		t.Fatalf("since the restart: %q", texts(since))
	}
}

// TestConcurrent: writers and readers at once (run with -race); every
// line written is read back whole.
func TestConcurrent(t *testing.T) {
	l := open(t, t.TempDir(), consolelog.Options{SegmentBytes: 1 << 20})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				if _, err := fmt.Fprintf(l, "writer %d line %d\n", w, i); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for range 50 {
				if _, err := l.Since(time.Time{}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	lines, err := l.Since(time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, line := range lines {
		seen[line.Text] = true
	}
	for w := range 4 {
		for i := range 200 {
			if s := fmt.Sprintf("writer %d line %d", w, i); !seen[s] {
				t.Fatalf("%q is not in the log (%d lines)", s, len(lines))
			}
		}
	}
}

// TestSetNamesDirsSafely: a board id that is a plain name is its
// directory; any other id stays inside the root, under a name of its own.
func TestSetNamesDirsSafely(t *testing.T) {
	root := t.TempDir()
	s := consolelog.NewSet(root, consolelog.Options{})
	defer s.Close()
	for _, id := range []string{"imx8-007", "../../etc", "a/b"} {
		l, err := s.Log(id)
		if err != nil {
			t.Fatal(err)
		}
		if again, _ := s.Log(id); again != l {
			t.Fatalf("%q: a second Log is another log", id)
		}
		write(t, l, id+"\n")
	}
	ents, _ := os.ReadDir(root)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 3 || consolelog.DirName("imx8-007") != "imx8-007" || !strings.HasPrefix(consolelog.DirName("a/b"), "@") {
		t.Fatalf("directories %q", names)
	}
	if _, err := os.Stat(filepath.Join(root, "..", "etc")); err == nil {
		t.Fatal("an id wrote outside the root")
	}
}
