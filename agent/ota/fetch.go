package ota

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"time"

	"github.com/boardlink/boardlink/image"
)

// fetchSource is where a prepare fetches the chunks it lacks: the image
// file at url, whose payload begins at payloadOff; each run of the fetch
// ends within deadline (0: none).
type fetchSource struct {
	url        string
	payloadOff int64
	deadline   time.Duration
}

const (
	// fetchAttempts bounds the tries in a row that bring no chunk; then
	// the update halts with the last error, and ota.start resumes it.
	fetchAttempts = 5
	// stallTimeout ends a try whose server sends no header or no byte for
	// this long.
	stallTimeout = 30 * time.Second
)

// httpClient fetches chunks. A request has no overall timeout (a server
// that ignores Range sends the whole image in one body): stalls end it,
// and the fetch's deadline bounds the whole.
var httpClient = func() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = stallTimeout
	return &http.Client{Transport: t}
}()

// permanent marks a fetch error that no retry can mend: the server has no
// such file, or other bytes than the manifest's.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

var errStalled = fmt.Errorf("no byte for %s", stallTimeout)

// fetchChunks fetches every chunk still missing from src, checking each
// against the manifest, and returns nil once none is missing, or the error
// that stopped it: a permanent one at once, a transient one after
// fetchAttempts tries without progress, the deadline when it passed.
func (u *Updater) fetchChunks(ctx context.Context, id string, target *os.File, src fetchSource) error {
	if src.deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, src.deadline,
			fmt.Errorf("not done within %s (the board's download deadline)", src.deadline))
		defer cancel()
	}
	u.mu.Lock()
	man := u.man
	u.mu.Unlock()
	f := fetcher{u: u, ctx: ctx, id: id, target: target, src: src, man: man, buf: make([]byte, man.ChunkSize)}
	for tries := 0; ; {
		missing := u.missing(id)
		if len(missing) == 0 {
			return nil
		}
		progress, err := f.run(missing)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if p := (permanent{}); errors.As(err, &p) {
			return p.error
		}
		if progress {
			tries = 0
		}
		if tries++; tries >= fetchAttempts {
			return fmt.Errorf("%w (%d tries)", err, tries)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(time.Duration(100<<tries)*time.Millisecond + rand.N(100*time.Millisecond)):
		}
	}
}

// missing lists the chunks update id still lacks.
func (u *Updater) missing(id string) []int {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []int
	if u.upd == nil || u.upd.ID != id {
		return out
	}
	for i := range u.upd.Chunks {
		if !u.upd.has(i) {
			out = append(out, i)
		}
	}
	return out
}

// fetcher is one update's fetch from its URL.
type fetcher struct {
	u      *Updater
	ctx    context.Context
	id     string
	target *os.File
	src    fetchSource
	man    image.Manifest
	buf    []byte // one chunk
}

// run fetches the missing chunks in order, one Range request each. A
// server that answers a Range request with the whole file (200, as simple
// servers do) is read from the start instead, in one pass. It reports
// whether a chunk was written.
func (f *fetcher) run(missing []int) (progress bool, err error) {
	lastOff, lastN := f.man.ChunkRange(missing[len(missing)-1])
	end := f.src.payloadOff + lastOff + lastN // the file's bytes this run needs
	for k, i := range missing {
		off, n := f.man.ChunkRange(i)
		body, whole, done, err := f.get(f.src.payloadOff+off, n, end)
		if err != nil {
			return progress, err
		}
		if whole {
			p, err := f.stream(body, missing[k:])
			done()
			return progress || p, err
		}
		data := f.buf[:n]
		_, err = io.ReadFull(body, data)
		done()
		if err != nil {
			return progress, readErr(body, err, fmt.Sprintf("chunk %d", i))
		}
		if err := f.put(i, data); err != nil {
			return progress, err
		}
		progress = true
	}
	return progress, nil
}

// get asks for n bytes at off. It returns the body of a 206 answer, or of
// a 200 one (whole: the file from its start, which must hold end bytes),
// and a func that releases it.
func (f *fetcher) get(off, n, end int64) (body io.Reader, whole bool, done func(), err error) {
	ctx, cancel := context.WithCancelCause(f.ctx)
	stall := time.AfterFunc(stallTimeout, func() { cancel(errStalled) })
	done = func() { stall.Stop(); cancel(nil) }
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.src.url, nil)
	if err != nil {
		done()
		return nil, false, nil, permanent{err}
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	resp, err := httpClient.Do(req)
	if err != nil {
		done()
		if c := context.Cause(ctx); c == errStalled {
			err = c
		}
		return nil, false, nil, err
	}
	release := done
	done = func() { resp.Body.Close(); release() }
	switch code := resp.StatusCode; {
	case code == http.StatusPartialContent:
		if resp.ContentLength >= 0 && resp.ContentLength < n {
			done()
			return nil, false, nil, permanent{fmt.Errorf("bytes %d-%d: the server sent %d (Content-Range %q): the file is shorter than the image",
				off, off+n-1, resp.ContentLength, resp.Header.Get("Content-Range"))}
		}
	case code == http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength < end {
			done()
			return nil, false, nil, permanent{fmt.Errorf("the file is %d bytes (the server ignores Range and sent it whole): the image needs %d",
				resp.ContentLength, end)}
		}
		whole = true
	case code == http.StatusRequestedRangeNotSatisfiable:
		done()
		return nil, false, nil, permanent{fmt.Errorf("bytes %d-%d: %s (Content-Range %q): the file is shorter than the image",
			off, off+n-1, resp.Status, resp.Header.Get("Content-Range"))}
	case code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooManyRequests:
		done()
		return nil, false, nil, fmt.Errorf("GET: %s", resp.Status)
	default:
		done()
		return nil, false, nil, permanent{fmt.Errorf("GET: %s", resp.Status)}
	}
	return &stallReader{r: resp.Body, t: stall, ctx: ctx}, whole, done, nil
}

// stream reads a whole image file from its start and writes the missing
// chunks as they pass by; it stops after the last one.
func (f *fetcher) stream(body io.Reader, missing []int) (progress bool, err error) {
	pos := int64(0)
	for _, i := range missing {
		off, n := f.man.ChunkRange(i)
		at := f.src.payloadOff + off
		if _, err := io.CopyN(io.Discard, body, at-pos); err != nil {
			return progress, readErr(body, err, fmt.Sprintf("the whole file, before chunk %d", i))
		}
		data := f.buf[:n]
		if _, err := io.ReadFull(body, data); err != nil {
			return progress, readErr(body, err, fmt.Sprintf("the whole file, in chunk %d", i))
		}
		pos = at + n
		if err := f.put(i, data); err != nil {
			return progress, err
		}
		progress = true
	}
	return progress, nil
}

// readErr names what a read of body was for. A body that ended cleanly
// before the bytes the image needs is a short file; one cut (a dropped
// connection) is tried again.
func readErr(body io.Reader, err error, what string) error {
	if s, ok := body.(*stallReader); ok && s.eof {
		return permanent{fmt.Errorf("%s: the file ends after %d bytes: it is shorter than the image", what, s.pos)}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// put checks chunk i against the manifest and writes it into the slot.
func (f *fetcher) put(i int, data []byte) error {
	if err := image.VerifyChunk(f.man, i, data); err != nil {
		return permanent{fmt.Errorf("%w: the file is not this image", err)}
	}
	off, _ := f.man.ChunkRange(i)
	if _, err := f.target.WriteAt(data, off); err != nil {
		return permanent{fmt.Errorf("writing slot: %w", err)}
	}
	if err := f.u.markDone(f.id, i, 0, int64(len(data)), false); err != nil {
		return permanent{err} // aborted meanwhile
	}
	return nil
}

// stallReader is a response body that pushes its stall timer back each
// time bytes arrive, names the stall when the timer cut it, and tells a
// body that ended (eof, after pos bytes) from one cut short.
type stallReader struct {
	r   io.Reader
	t   *time.Timer
	ctx context.Context // the request's: the timer cancels it
	pos int64
	eof bool
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.pos += int64(n)
	if n > 0 {
		s.t.Reset(stallTimeout)
	}
	switch {
	case err == io.EOF:
		s.eof = true
	case err != nil && context.Cause(s.ctx) == errStalled:
		err = errStalled
	}
	return n, err
}
