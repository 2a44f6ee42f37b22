package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"github.com/boardlink/boardlink/proto"
)

// logRecord is a finished command as persisted: the full result, so that
// Wait answers for it after a restart as it did before.
type logRecord struct {
	Argv     []string         `json:"argv"`
	Shell    bool             `json:"shell,omitempty"`
	Detached bool             `json:"detached,omitempty"`
	PID      int              `json:"pid"`
	Result   proto.ExecResult `json:"result"`
}

func (m *Execs) findLocked(id string) *Command {
	for _, c := range m.window {
		if c.id == id {
			return c
		}
	}
	return nil
}

// Holder holds the results of the commands one connection starts, so that
// each stays in the log until a Wait collects it, however many others end
// meanwhile. Release (the connection ended) gives what is left
// ResultGrace more, counted from the command's end if that is later, for a
// caller that reconnects; after that it leaves like any other. Results
// held count against MaxCommands, which bounds them.
type Holder struct {
	m *Execs
	// Guarded by m.mu.
	released   bool
	releasedAt time.Time
}

// NewHolder returns a holder for one connection's commands.
func (m *Execs) NewHolder() *Holder { return &Holder{m: m} }

// Start is Execs.Start, with the result held until collected.
func (h *Holder) Start(p proto.ExecStartParams, eio ExecIO) (*Command, error) {
	return h.m.start(p, eio, h)
}

// Release starts the grace period of the results not collected yet. It is
// idempotent; a Start after it holds its result for the grace period only.
func (h *Holder) Release() {
	m := h.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if !h.released {
		h.released, h.releasedAt = true, m.now()
	}
}

// pinnedLocked counts the commands trimLocked must keep: see pinned.
func (m *Execs) pinnedLocked() int {
	now := m.now()
	n := 0
	for _, c := range m.window {
		if m.pinned(c, now) {
			n++
		}
	}
	return n
}

// pinned reports whether c must stay in the log however full it is: it is
// running, or holds a result not collected yet whose grace has not run
// out. m.mu is held.
func (m *Execs) pinned(c *Command, now time.Time) bool {
	switch h := c.holder; {
	case !c.finished:
		return true
	case h == nil:
		return false
	case !h.released:
		return true
	default:
		return now.Before(later(h.releasedAt, c.finishedAt).Add(m.resultGrace))
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// trimLocked drops the oldest commands beyond the log size that are not
// pinned. Running commands stay, so that Wait, Cancel and Shutdown always
// find them, and so do held results: the log exceeds its size by at most
// MaxCommands. A grace period that runs out takes effect at the next trim
// (a command starting or ending, a result collected), which needs no timer.
func (m *Execs) trimLocked() {
	excess := len(m.window) - m.logSize
	if excess <= 0 {
		return
	}
	now := m.now()
	kept := m.window[:0]
	for _, c := range m.window {
		if excess > 0 && !m.pinned(c, now) {
			excess--
			continue
		}
		kept = append(kept, c)
	}
	clear(m.window[len(kept):])
	m.window = kept
}

// Log returns up to limit commands (all when limit <= 0), newest first,
// running ones included.
func (m *Execs) Log(limit int) []proto.ExecLogEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(m.window)
	if limit > 0 && limit < n {
		n = limit
	}
	entries := make([]proto.ExecLogEntry, 0, n)
	for i := len(m.window) - 1; len(entries) < n; i-- {
		entries = append(entries, m.window[i].entryLocked())
	}
	return entries
}

func (c *Command) entryLocked() proto.ExecLogEntry {
	e := proto.ExecLogEntry{ID: c.id, Argv: slices.Clone(c.argv), Shell: c.shell, Started: c.started}
	if !c.finished {
		e.Running = true
		e.StdoutBytes, e.StderrBytes = c.stdout.n.Load(), c.stderr.n.Load()
		return e
	}
	r := c.result
	e.Ended = &r.Ended
	e.ExitCode, e.Signal, e.TimedOut, e.Canceled = r.ExitCode, r.Signal, r.TimedOut, r.Canceled
	e.StdoutBytes, e.StderrBytes = r.StdoutBytes, r.StderrBytes
	return e
}

// LoadLog reads the log an earlier run of the agent saved at LogPath and
// puts its commands before any started since. A missing file is an empty
// log; a file of another format version is an error. Records a power cut
// tore (a short or corrupt line, found by its CRC) are left out, and
// logged: see execJournal.
func (m *Execs) LoadLog() error {
	if m.logPath == "" {
		return nil
	}
	recs, bad, err := readLogFile(m.logPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("exec log: %w", err)
	}
	if bad > 0 {
		m.log.Warn("exec log: torn or corrupt records left out", "path", m.logPath, "records", bad)
	}
	m.journal.loaded(recs)
	m.mu.Lock()
	defer m.mu.Unlock()
	loaded := make([]*Command, 0, len(recs)+len(m.window))
	seen := map[string]bool{}
	for _, r := range recs {
		if r.Result.ID == "" || seen[r.Result.ID] || m.findLocked(r.Result.ID) != nil {
			continue
		}
		seen[r.Result.ID] = true
		c := &Command{
			id: r.Result.ID, argv: r.Argv, shell: r.Shell, detached: r.Detached, pid: r.PID,
			started: r.Result.Started, done: make(chan struct{}),
			exited: true, finished: true, result: r.Result,
		}
		close(c.done)
		loaded = append(loaded, c)
	}
	m.window = append(loaded, m.window...)
	m.trimLocked()
	return nil
}

// saveLog makes the commands that finished since the last save durable
// at LogPath, and returns once they are. A failure is logged, not
// returned: the commands themselves did run.
func (m *Execs) saveLog() {
	if m.logPath == "" {
		return
	}
	if err := m.journal.save(m); err != nil {
		m.log.Warn("exec log not saved", "path", m.logPath, "err", err)
	}
}

// finishedRecords is the finished part of the log, oldest first.
func (m *Execs) finishedRecords() []logRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	recs := make([]logRecord, 0, len(m.window))
	for _, c := range m.window {
		if c.finished {
			recs = append(recs, logRecord{Argv: c.argv, Shell: c.shell, Detached: c.detached, PID: c.pid, Result: c.result})
		}
	}
	return recs
}
