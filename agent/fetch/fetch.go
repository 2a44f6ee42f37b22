package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/boardlink/boardlink/internal/rootpath"
	"github.com/boardlink/boardlink/proto"
)

// Options configure a Fetcher. Zero values take the defaults.
type Options struct {
	// CacheDir is the content-addressed package cache: complete blobs
	// named by their lowercase sha256 hex, plus partial downloads named
	// HASH.part, kept across calls so a later Fetch resumes them with
	// Range. "" means no cache: the partial then lives beside the
	// destination as a hidden temp file and is removed on failure.
	CacheDir string
	// CacheMax is how many bytes of complete blobs the cache keeps; the
	// least recently used (by mtime, touched on every hit) are evicted
	// after a new blob lands. A blob larger than CacheMax is not kept.
	// Default 1 GiB.
	CacheMax int64
	// Client makes the requests. Default: connect timeout 10s, TLS
	// handshake 10s, response header timeout 30s, proxies from the
	// environment.
	Client *http.Client
	// Attempts is how many requests in a row may fail transiently before
	// Fetch gives up (default 5). A request that grew the partial file
	// beyond anything held before starts the count again, so a long
	// download over a flaky link is not abandoned while it progresses.
	Attempts int
	// Backoff is the first wait before a retry, doubled for each further
	// retry, with up to 50% jitter added, capped at 10s (default 500ms).
	Backoff time.Duration
	// StallTimeout is the idle-read watchdog: a request that delivers no
	// byte of its response for this long is abandoned as a transient
	// error (default 30s). It applies to any Client.
	StallTimeout time.Duration
	// Logger receives retries, cache evictions and skipped archive
	// entries. Default: discard.
	Logger *slog.Logger
}

// Defaults for Options.
const (
	DefaultCacheMax     = 1 << 30
	DefaultAttempts     = 5
	DefaultBackoff      = 500 * time.Millisecond
	DefaultStallTimeout = 30 * time.Second
	maxBackoff          = 10 * time.Second
	// maxRetryAfter bounds how long a server's Retry-After may hold a retry.
	maxRetryAfter = 30 * time.Second
	// progressEvery throttles progress callbacks within one phase.
	progressEvery = 100 * time.Millisecond
)

// Fetcher downloads into file roots. It is safe for concurrent use: Fetches
// of the same hash run one at a time (the later ones then usually find the
// content in the cache or at their destination).
type Fetcher struct {
	opts    Options
	log     *slog.Logger
	locks   keyedMutex
	evictMu sync.Mutex
}

// New returns a Fetcher. It has no side effects: the cache directory is
// created by the first Fetch that stores something in it.
func New(opts Options) *Fetcher {
	if opts.CacheMax <= 0 {
		opts.CacheMax = DefaultCacheMax
	}
	if opts.Attempts <= 0 {
		opts.Attempts = DefaultAttempts
	}
	if opts.Backoff <= 0 {
		opts.Backoff = DefaultBackoff
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = DefaultStallTimeout
	}
	if opts.Client == nil {
		opts.Client = defaultClient()
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Fetcher{opts: opts, log: log}
}

func defaultClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
		ForceAttemptHTTP2:     true,
	}}
}

// Request is one download.
type Request struct {
	// URL is fetched with GET; http or https.
	URL string
	// SHA256 is the content's hash, 64 lowercase hex digits. Required:
	// nothing reaches Dest unless the bytes match it.
	SHA256 string
	// Root is the file root Dest lives in; every write to the destination
	// goes through it.
	Root *os.Root
	// Dest is a slash path relative to Root, in clean form (fs.ValidPath).
	// "." is refused: the root itself can be neither a file nor replaced
	// by an extracted directory.
	Dest string
	// Extract makes Dest a directory holding the unpacked tarball. The
	// format is sniffed from the bytes: plain tar, gzip (tar.gz) or bzip2
	// (tar.bz2). Dest, if it exists, must be a directory and is replaced
	// as a whole; a marker file (.boardlink-extracted, holding the hash)
	// inside it lets a later Fetch of the same hash skip.
	Extract bool
	// Mode is the permission bits of a file Dest (fs.ModePerm, plus
	// fs.ModeSetuid, fs.ModeSetgid and fs.ModeSticky, which may also be
	// given as the Unix bits 04000, 02000, 01000); 0 means 0644. When the
	// download is skipped because Dest already holds the content, a
	// non-zero Mode is applied to it and 0 leaves it as it is. Ignored
	// with Extract (entries keep the archive's modes).
	Mode fs.FileMode
	// Parents creates missing parent directories of Dest (0755).
	Parents bool

	// Size, when not 0, is the content's size as the caller knows it: a
	// body announced or found to be of another size is refused
	// (invalid_params on "size").
	Size int64
	// MaxSize, when not 0, bounds the content's size as the caller asks
	// (invalid_params on "max_size").
	MaxSize int64
	// Timeout, when not 0, bounds the whole Fetch as the caller asks.
	Timeout time.Duration
	// Limits are the bounds of the Fetcher's owner (the agent's
	// configuration). Where the caller asks for a bound too, the smaller
	// applies.
	Limits Limits
}

// Progress reports a running Fetch.
type Progress struct {
	// Phase is "download", "retry" (a transient error; a backoff
	// follows), "verify" (hashing what Dest or an earlier partial holds),
	// "install" (copying into place) or "extract".
	Phase string
	// Bytes is how far the phase got: the bytes of the content held so
	// far while downloading, read while verifying, installing or
	// extracting.
	Bytes int64
	// Total is the content's size, 0 while it is unknown.
	Total int64
	// Attempt is the number of the HTTP request being made (1 for the
	// first), 0 before any.
	Attempt int
}

// Result is the outcome of a Fetch.
type Result struct {
	Size      int64  // size of the content (the archive, with Extract; 0 when an extracted Dest was skipped)
	SHA256    string // the content's hash (the request's)
	Bytes     int64  // response body bytes received in this call (0 when skipped)
	Skipped   bool   // nothing was downloaded
	Source    string // where the content came from: SourceDestination, SourceCache or SourceNetwork
	Attempts  int    // HTTP requests made
	Resumes   int    // requests that continued a partial body with Range (answered 206)
	Extracted int    // archive entries written by Extract (the marker not counted)
}

// Sources, as in Result.Source.
const (
	SourceDestination = "destination" // Dest already held the content
	SourceCache       = "cache"       // installed from the package cache
	SourceNetwork     = "network"     // downloaded
)

// markerName is the file inside an extracted directory that names the hash
// it came from.
const markerName = ".boardlink-extracted"

// Fetch makes req.Dest hold the content named by req.SHA256, from Dest
// itself, the cache or req.URL, in that order. progress, if not nil, is
// called from Fetch's goroutine on every phase change and at most every
// 100ms within a phase.
//
// Errors carry a proto reason (proto.ReasonOf): invalid_params for a bad
// request, a refused archive (field "url", rule "archive"), an HTTP 4xx
// (rule "http") or content beyond the bounds (field "size", "max_size",
// or "url" for the owner's Limits); not_found for HTTP 404 and 410 or a
// missing parent directory; checksum_mismatch when the full body hashes
// differently; no_space when the disk cannot hold the content (checked
// before writing once its size is known); unavailable once transient
// errors exhaust the attempts; canceled or timeout (wrapping ctx.Err())
// when ctx or the deadline ends, with the partial download kept in the
// cache for a later resume; internal for local I/O failures. A partial
// download whose content is refused (by its hash, its size, or for want of
// space) is removed. On any error Dest is left as it was.
func (f *Fetcher) Fetch(ctx context.Context, req Request, progress func(Progress)) (Result, error) {
	res := Result{SHA256: req.SHA256}
	mode, err := req.check()
	if err != nil {
		return res, err
	}
	ctx, cancel := req.bounds().withDeadline(ctx)
	defer cancel()
	unlock, err := f.locks.lock(ctx, "sha256:"+req.SHA256)
	if err != nil {
		return res, ctxError(ctx, "waiting for another download of the same content")
	}
	defer unlock()
	pr := &reporter{fn: progress}

	if err := checkDestType(req); err != nil {
		return res, err
	}
	if size, ok, err := f.atDest(ctx, req, mode, pr); err != nil {
		return res, err
	} else if ok {
		res.Size, res.Skipped, res.Source = size, true, SourceDestination
		return res, nil
	}
	if err := rootpath.EnsureParent(req.Root, req.Dest, req.Dest, req.Parents); err != nil {
		return res, err
	}
	if f.opts.CacheDir != "" {
		ok, err := f.fromCache(ctx, req, mode, pr, &res)
		if err != nil || ok {
			return res, err
		}
	}
	if err := f.fromNetwork(ctx, req, mode, pr, &res); err != nil {
		return res, err
	}
	res.Source = SourceNetwork
	return res, nil
}

// check validates the request and returns the file mode to apply.
func (req *Request) check() (fs.FileMode, error) {
	u, err := url.Parse(req.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return 0, proto.InvalidField("url", "url", "%q is not an http or https URL", req.URL)
	}
	if !isHash(req.SHA256) {
		return 0, proto.InvalidField("sha256", "sha256", "must be 64 lowercase hex digits")
	}
	if req.Root == nil {
		return 0, proto.InvalidField("path", "root", "no file root")
	}
	if req.Dest == "." || !fs.ValidPath(req.Dest) || strings.ContainsRune(req.Dest, 0) {
		return 0, proto.InvalidField("path", "path", "%q is not a clean path below the file root", req.Dest)
	}
	mode := req.Mode
	// Accept the Unix special bits as a caller holding a chmod-style
	// number would pass them.
	for bit, m := range map[fs.FileMode]fs.FileMode{0o4000: fs.ModeSetuid, 0o2000: fs.ModeSetgid, 0o1000: fs.ModeSticky} {
		if mode&bit != 0 {
			mode = mode&^bit | m
		}
	}
	if mode&^(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
		return 0, proto.InvalidField("mode", "mode", "%v holds more than permission bits", req.Mode)
	}
	if mode == 0 {
		mode = 0o644
	}
	return mode, req.checkBounds()
}

func isHash(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// checkDestType refuses, before any download, a Dest that could not be
// replaced by what the request makes.
func checkDestType(req Request) error {
	st, err := req.Root.Lstat(req.Dest)
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
		return nil
	case err != nil:
		return rootpath.Error(req.Dest, err)
	case req.Extract && !st.IsDir():
		return proto.InvalidField("path", "dir", "%s exists and is not a directory", req.Dest)
	case !req.Extract && st.IsDir():
		return proto.InvalidField("path", "file", "%s is a directory", req.Dest)
	}
	return nil
}

// atDest reports whether Dest already holds the content: a regular file
// with the hash, or a directory extracted from it. It returns the content's
// size when known.
func (f *Fetcher) atDest(ctx context.Context, req Request, mode fs.FileMode, pr *reporter) (int64, bool, error) {
	if req.Extract {
		m, err := req.Root.Open(path.Join(req.Dest, markerName))
		if err != nil {
			return 0, false, nil
		}
		defer m.Close()
		b, _ := io.ReadAll(io.LimitReader(m, 256))
		return 0, strings.TrimSpace(string(b)) == req.SHA256, nil
	}
	st, err := req.Root.Lstat(req.Dest)
	if err != nil || !st.Mode().IsRegular() {
		return 0, false, nil
	}
	file, err := req.Root.Open(req.Dest)
	if err != nil {
		return 0, false, nil
	}
	defer file.Close()
	if st, err = file.Stat(); err != nil || !st.Mode().IsRegular() {
		return 0, false, nil // swapped since the Lstat
	}
	pr.report("verify", 0, st.Size(), true)
	h := sha256.New()
	n, err := io.Copy(h, &ctxReader{ctx: ctx, r: &countReader{r: file, fn: func(n int64) { pr.report("verify", n, st.Size(), false) }}})
	if err != nil {
		if ctx.Err() != nil {
			return 0, false, ctxError(ctx, "hashing "+req.Dest)
		}
		return 0, false, nil // unreadable: replace it
	}
	if hex.EncodeToString(h.Sum(nil)) != req.SHA256 {
		return 0, false, nil
	}
	if req.Mode != 0 {
		if err := file.Chmod(mode); err != nil {
			return 0, false, rootpath.Local("chmod "+req.Dest, err)
		}
	}
	return n, true, nil
}

// fromCache installs Dest from a cached blob. ok is false when the cache
// does not hold the content (a blob that no longer hashes right is removed).
func (f *Fetcher) fromCache(ctx context.Context, req Request, mode fs.FileMode, pr *reporter, res *Result) (ok bool, err error) {
	blob := filepath.Join(f.opts.CacheDir, req.SHA256)
	file, err := os.Open(blob)
	if err != nil {
		return false, nil
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return false, nil
	}
	if err := req.bounds().fits(st.Size(), ""); err != nil {
		return false, err
	}
	if err := checkRoom(req, nil, 0, st.Size()); err != nil {
		return false, err
	}
	now := time.Now()
	_ = os.Chtimes(blob, now, now) // last use, for eviction
	n, err := f.install(ctx, req, mode, file, st.Size(), true, pr)
	if errors.Is(err, errCorrupt) {
		f.log.Warn("cache blob does not match its hash; removed", "sha256", req.SHA256, "err", err)
		_ = os.Remove(blob)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	res.Size, res.Skipped, res.Source, res.Extracted = st.Size(), true, SourceCache, n
	return true, nil
}

// fromNetwork downloads the content, verifies it, stores it in the cache
// (when there is one) and installs it.
func (f *Fetcher) fromNetwork(ctx context.Context, req Request, mode fs.FileMode, pr *reporter, res *Result) error {
	if f.opts.CacheDir == "" {
		return f.fromNetworkUncached(ctx, req, mode, pr, res)
	}
	if err := os.MkdirAll(f.opts.CacheDir, 0o755); err != nil {
		return rootpath.Local("cache", err)
	}
	partPath := filepath.Join(f.opts.CacheDir, req.SHA256+partSuffix)
	part, err := os.OpenFile(partPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return rootpath.Local("cache", err)
	}
	defer part.Close()
	size, err := f.download(ctx, req, part, pr, res)
	if dropsPartial(err) {
		_ = os.Remove(partPath)
	}
	if err != nil {
		return err // anything else keeps the partial for a later resume
	}
	res.Size = size
	if err := part.Sync(); err != nil {
		return rootpath.Local("cache", err)
	}
	blob := filepath.Join(f.opts.CacheDir, req.SHA256)
	if err := os.Rename(partPath, blob); err != nil {
		return rootpath.Local("cache", err)
	}
	// The open descriptor keeps the content readable even if an eviction
	// races with the install.
	n, err := f.install(ctx, req, mode, part, size, false, pr)
	if size > f.opts.CacheMax {
		_ = os.Remove(blob)
	}
	f.evict()
	if err != nil {
		return err
	}
	res.Extracted = n
	return nil
}

// fromNetworkUncached downloads into a hidden partial file beside Dest,
// then renames it into place or extracts it. The partial never outlives
// the call.
func (f *Fetcher) fromNetworkUncached(ctx context.Context, req Request, mode fs.FileMode, pr *reporter, res *Result) (err error) {
	partName := tempName(req.Dest, "part")
	part, err := req.Root.OpenFile(partName, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return rootpath.Error(req.Dest, err)
	}
	defer func() {
		part.Close()
		if err != nil || req.Extract {
			_ = req.Root.Remove(partName)
		}
	}()
	size, err := f.download(ctx, req, part, pr, res)
	if err != nil {
		return err
	}
	res.Size = size
	if req.Extract {
		n, err := f.install(ctx, req, mode, part, size, false, pr)
		res.Extracted = n
		return err
	}
	pr.report("install", size, size, true)
	unlock, err := f.locks.lock(ctx, destKey(req))
	if err != nil {
		return ctxError(ctx, "waiting for another install into "+req.Dest)
	}
	defer unlock()
	if err := part.Chmod(mode); err != nil {
		return rootpath.Local("chmod", err)
	}
	if err := part.Sync(); err != nil {
		return rootpath.Local("fsync", err)
	}
	if err := req.Root.Rename(partName, req.Dest); err != nil {
		return rootpath.Error(req.Dest, err)
	}
	return rootpath.SyncDir(req.Root, path.Dir(req.Dest))
}

// destKey names Dest for the lock that keeps two installs into it from
// interleaving their renames.
func destKey(req Request) string {
	return "dest:" + filepath.Join(req.Root.Name(), filepath.FromSlash(req.Dest))
}

// keyedMutex is a set of mutexes by name, each held while a Fetch works on
// one hash (or one destination). Entries live only while in use.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	ch   chan struct{} // holds a token while locked
	refs int
}

func (k *keyedMutex) entry(key string) *keyedEntry {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{ch: make(chan struct{}, 1)}
		k.m[key] = e
	}
	e.refs++
	return e
}

func (k *keyedMutex) release(key string, e *keyedEntry) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if e.refs--; e.refs == 0 {
		delete(k.m, key)
	}
}

// lock waits for key, or for ctx to end.
func (k *keyedMutex) lock(ctx context.Context, key string) (unlock func(), err error) {
	e := k.entry(key)
	select {
	case e.ch <- struct{}{}:
		return func() { <-e.ch; k.release(key, e) }, nil
	case <-ctx.Done():
		k.release(key, e)
		return nil, ctx.Err()
	}
}

// tryLock takes key if it is free.
func (k *keyedMutex) tryLock(key string) (unlock func(), ok bool) {
	e := k.entry(key)
	select {
	case e.ch <- struct{}{}:
		return func() { <-e.ch; k.release(key, e) }, true
	default:
		k.release(key, e)
		return nil, false
	}
}

// reporter throttles progress callbacks.
type reporter struct {
	fn      func(Progress)
	phase   string
	last    time.Time
	attempt int // the HTTP request being made
}

// report calls the callback on a phase change, when forced, or when the
// last call is progressEvery old.
func (r *reporter) report(phase string, bytes, total int64, force bool) {
	if r == nil || r.fn == nil {
		return
	}
	now := time.Now()
	if !force && phase == r.phase && now.Sub(r.last) < progressEvery {
		return
	}
	r.phase, r.last = phase, now
	r.fn(Progress{Phase: phase, Bytes: bytes, Total: total, Attempt: r.attempt})
}

// countReader calls fn with the running total after every read.
type countReader struct {
	r  io.Reader
	n  int64
	fn func(int64)
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if n > 0 && c.fn != nil {
		c.fn(c.n)
	}
	return n, err
}

// ctxReader fails reads once ctx ends, so long local copies stop promptly.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// ctxError is the error for an ended ctx: canceled or timeout, wrapping
// ctx.Err() and saying its cause (the deadline's, say).
func ctxError(ctx context.Context, what string) error {
	err := ctx.Err()
	if err == nil {
		err = context.Canceled
	}
	r := proto.ReasonCanceled
	if errors.Is(err, context.DeadlineExceeded) {
		r = proto.ReasonTimeout
	}
	cause := context.Cause(ctx)
	if cause == nil || cause == err {
		return proto.WithCause(proto.Errorf(r, "%s: %v", what, err), err)
	}
	return proto.WithCause(proto.Errorf(r, "%s: %v", what, cause), errors.Join(err, cause))
}

// errCorrupt marks content that does not hash to what it should.
var errCorrupt = errors.New("content does not match its sha256")

func mismatch(want, got string) error {
	return proto.WithCause(proto.Errorf(proto.ReasonChecksumMismatch, "sha256 mismatch: want %s, got %s", want, got), errCorrupt)
}
