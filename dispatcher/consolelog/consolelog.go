package consolelog

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/boardlink/boardlink/discovery"
)

// Defaults and limits of Options.SegmentBytes.
const (
	DefaultSegmentBytes = 1 << 20
	MinSegmentBytes     = 4 << 10
)

// maxPiece bounds the text of one record: a line longer than this (a
// console that never prints a newline) is stored in several.
const maxPiece = 16 << 10

// stampLayout is the record's time, fixed width and in UTC, so that the
// kind of a record is always at byte stampLen.
const (
	stampLayout = "2006-01-02T15:04:05.000000000Z"
	stampLen    = len(stampLayout)
)

// Record kinds, the byte after the stamp.
const (
	kindEnd  = '|' // the record ends a line
	kindMore = '+' // the line goes on in the next record
)

const (
	currentName  = "current.log"
	previousName = "previous.log"
)

// ErrClosed: the Log was closed.
var ErrClosed = errors.New("consolelog: closed")

// Options tune a Log.
type Options struct {
	// SegmentBytes is the size at which the current segment is rotated
	// (DefaultSegmentBytes when zero, at least MinSegmentBytes): a log
	// holds at most about twice this on disk.
	SegmentBytes int64
	// Now stamps the text as it arrives (time.Now when nil; tests set it).
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.SegmentBytes == 0 {
		o.SegmentBytes = DefaultSegmentBytes
	}
	o.SegmentBytes = max(o.SegmentBytes, MinSegmentBytes)
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Line is one console line and the time its first byte arrived. Text has
// no trailing newline (a serial console's "\r" stays).
type Line struct {
	Time time.Time `json:"time"`
	Text string    `json:"text"`
}

// Text joins lines as the console showed them, one per line.
func Text(lines []Line) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l.Text)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Log is one board's console record. Its methods are safe for concurrent
// use: writers (a console stream) and readers (a lease's span).
type Log struct {
	dir  string
	opts Options

	mu     sync.Mutex
	f      *os.File // the current segment, appended to; nil once closed
	size   int64
	inLine bool // the last record was kindMore: a line is under way
}

// Open opens the log in dir, making dir if needed, and appends to what an
// earlier Log left there. A record a crash cut short is closed, and a line
// left open by it ends there.
func Open(dir string, opts Options) (*Log, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("consolelog: %w", err)
	}
	l := &Log{dir: dir, opts: opts.withDefaults()}
	if err := l.openCurrent(); err != nil {
		return nil, err
	}
	// Close whatever the last process left open: a torn record, or a
	// line without its end.
	torn, open, err := lastRecord(l.f)
	if err == nil && torn {
		_, err = l.append([]byte("\n"))
	}
	if err == nil && open {
		err = l.record(l.opts.Now(), kindEnd, nil)
	}
	if err != nil {
		l.f.Close()
		return nil, fmt.Errorf("consolelog: %s: %w", dir, err)
	}
	return l, nil
}

func (l *Log) openCurrent() error {
	f, err := os.OpenFile(filepath.Join(l.dir, currentName), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("consolelog: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("consolelog: %w", err)
	}
	l.f, l.size = f, st.Size()
	return nil
}

// lastRecord reports whether f ends inside a record (no final newline),
// and whether its last whole record left a line open.
func lastRecord(f *os.File) (torn, open bool, err error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return false, false, err
	}
	torn, err = eachRecord(f, func(rec []byte) {
		open = len(rec) > stampLen && rec[stampLen] == kindMore
	})
	return torn, open, err
}

// eachRecord calls fn with each newline-ended record of r, without its
// newline, passing over any longer than a record can be (not ours), and
// reports whether r ended inside a record.
func eachRecord(r io.Reader, fn func(rec []byte)) (torn bool, err error) {
	br := bufio.NewReaderSize(r, stampLen+2+maxPiece)
	for {
		rec, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			fn(rec[:len(rec)-1])
			continue
		case errors.Is(err, bufio.ErrBufferFull):
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err == nil {
				continue
			}
		}
		if errors.Is(err, io.EOF) {
			return len(rec) > 0, nil
		}
		return false, err
	}
}

// Write records p as console text that arrives now. It always takes all
// of p unless the disk fails.
func (l *Log) Write(p []byte) (int, error) {
	now := l.opts.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, ErrClosed
	}
	for rest := p; len(rest) > 0; {
		piece, kind := rest, byte(kindMore)
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			piece, kind = rest[:i], kindEnd
		}
		if len(piece) > maxPiece {
			piece, kind = piece[:maxPiece], kindMore
		}
		if err := l.record(now, kind, piece); err != nil {
			return len(p) - len(rest), err
		}
		rest = rest[len(piece):]
		if kind == kindEnd {
			rest = rest[1:]
		}
	}
	return len(p), nil
}

// record appends one record, rotating first when it would not fit.
func (l *Log) record(t time.Time, kind byte, text []byte) error {
	rec := make([]byte, 0, stampLen+2+len(text))
	rec = t.UTC().AppendFormat(rec, stampLayout)
	rec = append(rec, kind)
	rec = append(rec, text...)
	rec = append(rec, '\n')
	if l.size > 0 && l.size+int64(len(rec)) > l.opts.SegmentBytes {
		if err := l.rotate(); err != nil {
			return err
		}
	}
	if _, err := l.append(rec); err != nil {
		return err
	}
	l.inLine = kind == kindMore
	return nil
}

func (l *Log) append(b []byte) (int, error) {
	n, err := l.f.Write(b)
	l.size += int64(n)
	return n, err
}

// rotate makes the current segment the previous one, dropping the older.
func (l *Log) rotate() error {
	if err := l.f.Close(); err != nil {
		return err
	}
	l.f = nil
	if err := os.Rename(filepath.Join(l.dir, currentName), filepath.Join(l.dir, previousName)); err != nil {
		return err
	}
	return l.openCurrent()
}

// Since returns the lines that began arriving at or after t.
func (l *Log) Since(t time.Time) ([]Line, error) { return l.Range(t, time.Time{}) }

// Range returns the lines whose first byte arrived in [from, to); a zero
// to has no end. A line still being written is included as far as it
// arrived. What rotated away is gone: the answer starts with the oldest
// line kept.
func (l *Log) Range(from, to time.Time) ([]Line, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil, ErrClosed
	}
	var (
		out  []Line
		cur  *Line
		text []byte
	)
	keep := func() {
		if cur != nil && !cur.Time.Before(from) && (to.IsZero() || cur.Time.Before(to)) {
			cur.Text = string(text)
			out = append(out, *cur)
		}
		cur, text = nil, text[:0]
	}
	for _, name := range []string{previousName, currentName} {
		err := readRecords(filepath.Join(l.dir, name), func(t time.Time, kind byte, piece []byte) {
			if cur == nil {
				cur = &Line{Time: t}
			}
			text = append(text, piece...)
			if kind == kindEnd {
				keep()
			}
		})
		if err != nil {
			return nil, fmt.Errorf("consolelog: %w", err)
		}
	}
	keep()
	return out, nil
}

// readRecords calls fn with each well-formed record of the segment at
// path (none when it does not exist).
func readRecords(path string, fn func(time.Time, byte, []byte)) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = eachRecord(f, func(rec []byte) {
		if len(rec) <= stampLen || rec[stampLen] != kindEnd && rec[stampLen] != kindMore {
			return // torn by a crash
		}
		if t, err := time.Parse(stampLayout, string(rec[:stampLen])); err == nil {
			fn(t, rec[stampLen], rec[stampLen+1:])
		}
	})
	return err
}

// Close closes the log; later calls fail with ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Set is the console logs of many boards, each in a directory of its own
// under one root. Its methods are safe for concurrent use.
type Set struct {
	root string
	opts Options

	mu   sync.Mutex
	logs map[string]*Log
}

// NewSet makes a set of logs under root; nothing is opened until Log.
func NewSet(root string, opts Options) *Set {
	return &Set{root: root, opts: opts, logs: map[string]*Log{}}
}

// Log returns board's log, opening it the first time.
func (s *Set) Log(board string) (*Log, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.logs == nil {
		return nil, ErrClosed
	}
	if l := s.logs[board]; l != nil {
		return l, nil
	}
	l, err := Open(filepath.Join(s.root, DirName(board)), s.opts)
	if err != nil {
		return nil, err
	}
	s.logs[board] = l
	return l, nil
}

// Close closes every log of the set.
func (s *Set) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, l := range s.logs {
		errs = append(errs, l.Close())
	}
	s.logs = nil
	return errors.Join(errs...)
}

// DirName is the directory of board's log under a Set's root: the id
// itself when it is a plain name (discovery.CheckID), else a name made of
// its hash after an "@" (which no plain name holds), so that no id (from
// the network, or a configuration) points elsewhere or takes another
// board's place.
func DirName(board string) string {
	if discovery.CheckID(board) == nil {
		return board
	}
	sum := sha256.Sum256([]byte(board))
	return "@" + hex.EncodeToString(sum[:12])
}
