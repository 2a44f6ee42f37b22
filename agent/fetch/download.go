package fetch

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/boardlink/boardlink/internal/rootpath"
	"github.com/boardlink/boardlink/proto"
)

// copyBuffer is the size of one read of a response body.
const copyBuffer = 128 << 10

// errStalled is the cause of an attempt the idle-read watchdog ended.
var errStalled = errors.New("stalled: no data")

// transientError is a failed attempt worth retrying.
type transientError struct {
	err        error
	retryAfter time.Duration // the server's Retry-After, if any
}

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// downloader is one download into a partial file.
type downloader struct {
	f       *Fetcher
	url     string // for messages: no credentials, no query
	req     Request
	b       bounds
	part    *os.File
	pr      *reporter
	res     *Result
	h       hash.Hash // of part's first off bytes
	off     int64     // bytes part holds
	total   int64     // the content's size, 0 while unknown
	noRange bool      // the server ignores or refuses Range: start over instead
	buf     []byte
}

// download makes part hold the content of req.URL, continuing what part
// already holds, and verifies it. It returns the content's size. After an
// error for which dropsPartial holds part's content is useless (the caller
// removes it); after any other it is a valid prefix to resume from.
func (f *Fetcher) download(ctx context.Context, req Request, part *os.File, pr *reporter, res *Result) (int64, error) {
	d := &downloader{f: f, url: displayURL(req.URL), req: req, b: req.bounds(), part: part, pr: pr, res: res,
		h: sha256.New(), buf: make([]byte, copyBuffer)}
	// What an earlier call left is hashed first; the body then continues it.
	if _, err := part.Seek(0, io.SeekStart); err != nil {
		return 0, rootpath.Local("partial download", err)
	}
	if st, err := part.Stat(); err == nil && st.Size() > 0 {
		pr.report("verify", 0, 0, true)
	}
	n, err := io.CopyBuffer(d.h, &ctxReader{ctx: ctx, r: &countReader{r: part, fn: func(n int64) {
		pr.report("verify", n, 0, false)
	}}}, d.buf)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctxError(ctx, "download "+d.url)
		}
		return 0, rootpath.Local("partial download", err)
	}
	d.off = n
	if err := d.b.over(d.off, "at least"); err != nil {
		return 0, err
	}
	if d.b.size > 0 {
		if err := d.room(d.b.size); err != nil {
			return 0, err
		}
	}

	high, fails, delay := d.off, 0, f.opts.Backoff
	for {
		err := d.attempt(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return 0, ctxError(ctx, fmt.Sprintf("download %s stopped at %d bytes", d.url, d.off))
		}
		var te *transientError
		if !errors.As(err, &te) {
			return 0, err
		}
		if d.off > high {
			high, fails, delay = d.off, 0, f.opts.Backoff
		}
		if fails++; fails >= f.opts.Attempts {
			return 0, proto.WithCause(proto.Errorf(proto.ReasonUnavailable, "GET %s: gave up after %d attempts: %v",
				d.url, res.Attempts, te.err), te.err)
		}
		wait := min(delay+rand.N(delay/2+1), maxBackoff)
		wait = max(wait, te.retryAfter)
		f.log.Info("download failed, retrying", "url", d.url, "attempt", res.Attempts, "bytes", d.off,
			"err", te.err, "wait", wait)
		pr.report("retry", d.off, d.total, true)
		if err := sleep(ctx, wait); err != nil {
			return 0, ctxError(ctx, fmt.Sprintf("download %s stopped at %d bytes", d.url, d.off))
		}
		delay = min(2*delay, maxBackoff)
	}
	if err := d.b.fits(d.off, "in all"); err != nil {
		return 0, err
	}
	pr.report("verify", d.off, d.off, true)
	if got := hex.EncodeToString(d.h.Sum(nil)); got != req.SHA256 {
		return 0, mismatch(req.SHA256, got)
	}
	return d.off, nil
}

// attempt makes one request and appends its body to the partial file.
func (d *downloader) attempt(ctx context.Context) error {
	d.res.Attempts++
	d.pr.attempt = d.res.Attempts
	stall := d.f.opts.StallTimeout
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watchdog := time.AfterFunc(stall, func() { cancel(errStalled) })
	defer watchdog.Stop()

	hreq, err := http.NewRequestWithContext(actx, http.MethodGet, d.req.URL, nil)
	if err != nil {
		return proto.InvalidField("url", "url", "%v", err)
	}
	// The bytes as stored: a transparent gunzip would change the hash and
	// make Range offsets meaningless.
	hreq.Header.Set("Accept-Encoding", "identity")
	ranged := d.off > 0 && !d.noRange
	if ranged {
		hreq.Header.Set("Range", fmt.Sprintf("bytes=%d-", d.off))
	}
	resp, err := d.f.opts.Client.Do(hreq)
	if err != nil {
		return d.netError(ctx, actx, err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Accept-Ranges") == "none" {
		d.noRange = true
	}

	switch {
	case resp.StatusCode == http.StatusPartialContent:
		start, total := parseContentRange(resp.Header.Get("Content-Range"))
		if start != d.off {
			// Not what was asked: ask for everything from now on.
			terr := &transientError{err: fmt.Errorf("asked for bytes from %d, got Content-Range %q",
				d.off, resp.Header.Get("Content-Range"))}
			d.noRange = true
			if err := d.restart(); err != nil {
				return err
			}
			return terr
		}
		if d.off > 0 {
			d.res.Resumes++
		}
		d.total = max(total, 0)
	case resp.StatusCode == http.StatusOK:
		if d.off > 0 {
			// The whole content again: start over.
			if err := d.restart(); err != nil {
				return err
			}
			d.noRange = d.noRange || ranged
		}
		d.total = max(resp.ContentLength, 0)
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && ranged:
		if _, total := parseContentRange(resp.Header.Get("Content-Range")); total == d.off {
			d.total = total
			return nil // the partial is complete; the hash decides
		}
		if err := d.restart(); err != nil {
			return err
		}
		return &transientError{err: fmt.Errorf("HTTP %s for a partial of %d bytes", resp.Status, d.off)}
	default:
		return d.statusError(resp)
	}
	if d.total > 0 {
		if err := d.b.fits(d.total, "announced as"); err != nil {
			return err
		}
		if err := d.room(d.total); err != nil {
			return err
		}
	}

	d.pr.report("download", d.off, d.total, true)
	for {
		n, rerr := resp.Body.Read(d.buf)
		if n > 0 {
			if err := d.b.over(d.off+int64(n), "at least"); err != nil {
				return err
			}
			watchdog.Reset(stall)
			if _, err := d.part.Write(d.buf[:n]); err != nil {
				return rootpath.Local("partial download", err)
			}
			d.h.Write(d.buf[:n])
			d.off += int64(n)
			d.res.Bytes += int64(n)
			d.pr.report("download", d.off, d.total, false)
		}
		if rerr == io.EOF {
			d.pr.report("download", d.off, d.total, true)
			break
		}
		if rerr != nil {
			return d.netError(ctx, actx, rerr)
		}
	}
	if d.total > 0 && d.off < d.total {
		return &transientError{err: fmt.Errorf("body ended at %d of %d bytes: %w", d.off, d.total, io.ErrUnexpectedEOF)}
	}
	return nil
}

// room checks that the disk holds the rest of content of total bytes, and
// its install: a copy from the cache, or the unpacked tree (estimated as
// large as the archive).
func (d *downloader) room(total int64) error {
	var install int64
	if d.f.opts.CacheDir != "" || d.req.Extract {
		install = total
	}
	return checkRoom(d.req, d.part, total-d.off, install)
}

// restart empties the partial file.
func (d *downloader) restart() error {
	if err := d.part.Truncate(0); err != nil {
		return rootpath.Local("partial download", err)
	}
	if _, err := d.part.Seek(0, io.SeekStart); err != nil {
		return rootpath.Local("partial download", err)
	}
	d.h.Reset()
	d.off, d.total = 0, 0
	return nil
}

// netError classifies a failed request or body read. Everything is
// transient except an ended ctx (returned as is) and a certificate the
// client does not trust, which no retry changes.
func (d *downloader) netError(ctx, actx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(context.Cause(actx), errStalled) {
		return &transientError{err: fmt.Errorf("%w for %v", errStalled, d.f.opts.StallTimeout)}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // its message repeats the URL, query and all
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return proto.WithCause(proto.Errorf(proto.ReasonUnavailable, "GET %s: %v", d.url, err), err)
	}
	return &transientError{err: err}
}

// statusError classifies an HTTP status that carries no content.
func (d *downloader) statusError(resp *http.Response) error {
	code := resp.StatusCode
	switch {
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return &transientError{err: fmt.Errorf("HTTP %s", resp.Status), retryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	case code == http.StatusNotFound || code == http.StatusGone:
		return proto.Errorf(proto.ReasonNotFound, "GET %s: HTTP %s", d.url, resp.Status)
	case code >= 400:
		return proto.InvalidField("url", "http", "GET %s: HTTP %s", d.url, resp.Status)
	}
	return proto.InvalidField("url", "http", "GET %s: unexpected HTTP %s", d.url, resp.Status)
}

// parseContentRange reads "bytes START-END/TOTAL" (or "bytes */TOTAL"); a
// part it cannot read is -1.
func parseContentRange(s string) (start, total int64) {
	start, total = -1, -1
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), "bytes ")
	if !ok {
		return
	}
	span, size, ok := strings.Cut(rest, "/")
	if !ok {
		return
	}
	if n, err := strconv.ParseInt(size, 10, 64); err == nil && n >= 0 {
		total = n
	}
	if first, _, ok := strings.Cut(span, "-"); ok {
		if n, err := strconv.ParseInt(first, 10, 64); err == nil && n >= 0 {
			start = n
		}
	}
	return
}

// retryAfter reads a Retry-After header (seconds or an HTTP date), bounded
// by maxRetryAfter.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if s, err := strconv.Atoi(v); err == nil {
		d = time.Duration(min(max(s, 0), int(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = time.Until(t)
	}
	return min(max(d, 0), maxRetryAfter)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// displayURL is raw without credentials or query (which may hold a
// token), for messages and logs.
func displayURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(bad URL)"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "..."
	}
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}
