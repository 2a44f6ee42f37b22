package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/internal/atomicfile"
)

// The exec log at ExecOptions.LogPath is a journal: JSON lines, the first
// a header with the format version, each other one finished command:
//
//	{"format":2}
//	{"crc":"1c291ca3","rec":{"argv":["true"],"pid":4242,"result":{...}}}
//
// crc is the CRC-32C of rec's bytes as written. A command's record is
// appended (one write and one fdatasync per batch, see execJournal) once
// it has finished; the first save of a process and every one that finds
// the file holding twice the log's size rewrite it with what the log
// holds (compaction: temporary file, fsync, rename, directory fsync).
//
// What a power cut may lose: the commands that finished within the last
// batch (execLogLinger and one fdatasync) before it, whose answers the
// clients had already had; a record it tears is the file's last line,
// which LoadLog leaves out by its CRC. Everything a save returned for
// stays, and a compaction leaves the old file or the new one.
const execLogFormat = 2

// legacyLogFormat is the format-1 file, one JSON document rewritten at
// every save (atomicfile.WriteJSON); LoadLog still reads it.
const legacyLogFormat = 1

// execLogLinger is how long a save waits before it writes, so that the
// commands that end close together (a suite of short ones) share one
// write and one fdatasync.
const execLogLinger = 100 * time.Millisecond

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type logHeader struct {
	Format int `json:"format"`
}

type logLine struct {
	CRC string          `json:"crc"`
	Rec json.RawMessage `json:"rec"`
}

// appendLogLine appends rec's line to b.
func appendLogLine(b []byte, rec logRecord) ([]byte, error) {
	raw, err := json.Marshal(rec)
	if err != nil {
		return b, err
	}
	line, err := json.Marshal(logLine{CRC: fmt.Sprintf("%08x", crc32.Checksum(raw, castagnoli)), Rec: raw})
	if err != nil {
		return b, err
	}
	return append(append(b, line...), '\n'), nil
}

// readLogFile reads the log at path: its records, oldest first, and how
// many lines were torn or corrupt and left out. A file of format 1 is read
// too; one of another format is an error wrapping atomicfile.ErrFormat.
func readLogFile(path string) ([]logRecord, int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	first, rest, _ := bytes.Cut(data, []byte("\n"))
	var h logHeader
	if json.Unmarshal(first, &h) != nil || h.Format == 0 {
		// Not a journal: the format-1 document, or a file of another kind.
		var recs []logRecord
		if err := atomicfile.ReadJSON(path, legacyLogFormat, &recs); err != nil {
			return nil, 0, err
		}
		return recs, 0, nil
	}
	if h.Format != execLogFormat {
		return nil, 0, fmt.Errorf("read %s: %w %d (this build reads format %d)", path, atomicfile.ErrFormat, h.Format, execLogFormat)
	}
	var recs []logRecord
	bad := 0
	for len(rest) > 0 {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\n"))
		var l logLine
		var r logRecord
		if json.Unmarshal(line, &l) != nil || l.CRC != fmt.Sprintf("%08x", crc32.Checksum(l.Rec, castagnoli)) ||
			json.Unmarshal(l.Rec, &r) != nil {
			bad++
			continue
		}
		recs = append(recs, r)
	}
	return recs, bad, nil
}

// writeLogFile replaces the log at path with recs (compaction).
func writeLogFile(path string, recs []logRecord) error {
	b, err := json.Marshal(logHeader{Format: execLogFormat})
	if err != nil {
		return err
	}
	b = append(b, '\n')
	for _, r := range recs {
		if b, err = appendLogLine(b, r); err != nil {
			return fmt.Errorf("write %s: encode: %w", path, err)
		}
	}
	return atomicfile.WriteFile(path, b, 0o644)
}

// appendLogFile appends recs to the log at path and makes them durable.
func appendLogFile(path string, recs []logRecord) error {
	var b []byte
	for _, r := range recs {
		var err error
		if b, err = appendLogLine(b, r); err != nil {
			return fmt.Errorf("append %s: encode: %w", path, err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("append %s: %w", path, err)
	}
	_, werr := f.Write(b)
	if werr == nil {
		werr = unix.Fdatasync(int(f.Fd()))
	}
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("append %s: %w", path, err)
	}
	return nil
}

// execJournal writes the log at one path: every manager of that path in
// this process (a board's successive boots in simlab, a test's) shares
// it, so their writes never interleave. Saves are grouped: the first
// caller of a batch writes it for all whose commands joined it
// meanwhile, and each caller returns once its batch is durable.
type execJournal struct {
	path  string
	pause func() // before a batch is written: execLogLinger

	mu        sync.Mutex
	cond      *sync.Cond
	writing   bool                 // a caller is writing a batch
	next      *logBatch            // the batch queued records go into
	queued    []logRecord          // next's records
	inBatch   map[string]*logBatch // ids queued or being written, and their batch
	written   map[string]bool      // ids in the file
	records   int                  // lines in the file
	compacted bool                 // the file was rewritten by this process since it was read
	syncs     int                  // batches written (appends and compactions), for tests
}

type logBatch struct {
	done bool
	err  error
}

// newExecJournal returns the journal of the log at path.
func newExecJournal(path string) *execJournal {
	j := &execJournal{path: path, pause: func() { time.Sleep(execLogLinger) }, next: &logBatch{},
		inBatch: map[string]*logBatch{}, written: map[string]bool{}}
	j.cond = sync.NewCond(&j.mu)
	return j
}

// loaded records what LoadLog read: the next save rewrites the file,
// leaving out what it tore and what it holds twice.
func (j *execJournal) loaded(recs []logRecord) {
	j.mu.Lock()
	defer j.mu.Unlock()
	clear(j.written)
	for _, r := range recs {
		j.written[r.Result.ID] = true
	}
	j.records, j.compacted = len(recs), false
}

// save queues m's finished commands that the file lacks and returns once
// they are durable, with those another save queued.
func (j *execJournal) save(m *Execs) error {
	recs := m.finishedRecords()
	j.mu.Lock()
	defer j.mu.Unlock()
	var b *logBatch // the newest batch that holds one of recs: batches end in order
	for _, r := range recs {
		id := r.Result.ID
		switch {
		case j.written[id]:
		case j.inBatch[id] != nil:
			if b != j.next { // at most two batches: the one being written, and next
				b = j.inBatch[id]
			}
		default:
			j.inBatch[id] = j.next
			j.queued = append(j.queued, r)
			b = j.next
		}
	}
	for b != nil && !b.done {
		if j.writing {
			j.cond.Wait()
			continue
		}
		j.writing = true
		j.mu.Unlock()
		j.pause()
		j.writeBatch(m)
		j.mu.Lock()
		j.writing = false
		j.cond.Broadcast()
	}
	if b == nil {
		return nil
	}
	return b.err
}

// writeBatch writes the queued batch: appended, or the whole log of m when
// the file is due for compaction.
func (j *execJournal) writeBatch(m *Execs) {
	j.mu.Lock()
	b, batch := j.next, j.queued
	j.next, j.queued = &logBatch{}, nil
	compact := !j.compacted || j.records+len(batch) > 2*m.logSize
	j.mu.Unlock()

	recs := batch
	var err error
	if compact {
		recs = m.finishedRecords()
		err = writeLogFile(j.path, recs)
	} else {
		err = appendLogFile(j.path, recs)
	}

	j.mu.Lock()
	defer j.mu.Unlock()
	for _, r := range batch {
		delete(j.inBatch, r.Result.ID)
	}
	j.syncs++
	switch {
	case err != nil:
		// What the file holds is unknown: the next batch rewrites it.
		j.compacted = false
	case compact:
		clear(j.written)
		j.records, j.compacted = len(recs), true
	default:
		j.records += len(recs)
	}
	if err == nil {
		for _, r := range recs {
			j.written[r.Result.ID] = true
		}
	}
	b.done, b.err = true, err
}
