package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// content returns n pseudo-random bytes, the same for the same seed.
func content(seed byte, n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newRoot returns a file root in a fresh directory, and the directory.
func newRoot(t *testing.T) (*os.Root, string) {
	t.Helper()
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return root, dir
}

// newFetcher makes a Fetcher with short backoffs and, if cache, a cache
// directory (returned).
func newFetcher(t *testing.T, cache bool, opts Options) (*Fetcher, string) {
	t.Helper()
	if cache && opts.CacheDir == "" {
		opts.CacheDir = filepath.Join(t.TempDir(), "cache")
	}
	if opts.Backoff == 0 {
		opts.Backoff = 10 * time.Millisecond
	}
	opts.Logger = testLogger(t)
	return New(opts), opts.CacheDir
}

// server serves one blob over loopback HTTP (Range included), counting
// requests and the body bytes it writes. A hook sees every request first
// (n counts from 1) and answers it itself by returning true.
type server struct {
	*httptest.Server
	data     []byte
	hook     func(n int64, w http.ResponseWriter, r *http.Request) bool
	requests atomic.Int64
	written  atomic.Int64
	mu       sync.Mutex
	ranges   []string // the Range header of each request
}

func newServer(t *testing.T, data []byte, hook func(n int64, w http.ResponseWriter, r *http.Request) bool) *server {
	s := &server{data: data, hook: hook}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *server) serve(w http.ResponseWriter, r *http.Request) {
	n := s.requests.Add(1)
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	s.mu.Unlock()
	if s.hook != nil && s.hook(n, w, r) {
		return
	}
	http.ServeContent(&countWriter{ResponseWriter: w, n: &s.written}, r, "blob", time.Time{}, bytes.NewReader(s.data))
}

func (s *server) rangeHeaders() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ranges)
}

func (s *server) url() string { return s.URL + "/pkg/blob.bin?token=secret" }

type countWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// dropAfter answers with the headers of the whole blob and its first n
// bytes, then cuts the connection.
func (s *server) dropAfter(t *testing.T, w http.ResponseWriter, n int) {
	conn, buf, err := w.(http.Hijacker).Hijack()
	if err != nil {
		t.Error(err)
		return
	}
	defer conn.Close()
	fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n\r\n", len(s.data))
	m, _ := buf.Write(s.data[:n])
	_ = buf.Flush()
	s.written.Add(int64(m))
}

// stallAfter sends the headers of the whole blob and its first n bytes,
// then nothing until the client goes away.
func (s *server) stallAfter(w http.ResponseWriter, r *http.Request, n int) {
	w.Header().Set("Content-Length", strconv.Itoa(len(s.data)))
	w.Header().Set("Accept-Ranges", "bytes")
	m, _ := w.Write(s.data[:n])
	s.written.Add(int64(m))
	w.(http.Flusher).Flush()
	select {
	case <-r.Context().Done():
	case <-time.After(20 * time.Second):
	}
}

// dirNames lists dir's entries.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantReason(t *testing.T, err error, r proto.Reason) {
	t.Helper()
	if got := proto.ReasonOf(err); got != r {
		t.Fatalf("error %v: reason %q, want %q", err, got, r)
	}
}

func TestFetchNetwork(t *testing.T) {
	data := content(1, 3<<20)
	for _, tc := range []struct {
		name     string
		cache    bool
		dest     string
		mode     fs.FileMode
		parents  bool
		wantMode fs.FileMode
	}{
		{name: "cache", cache: true, dest: "out.bin", wantMode: 0o644},
		{name: "no cache", dest: "out.bin", wantMode: 0o644},
		{name: "mode and parents", cache: true, dest: "a/b/tool", mode: 0o750, parents: true, wantMode: 0o750},
		{name: "unix setuid bits", dest: "suid", mode: 0o4755, wantMode: 0o755 | fs.ModeSetuid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, data, nil)
			root, dir := newRoot(t)
			f, cache := newFetcher(t, tc.cache, Options{})
			var progress []Progress
			res, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: tc.dest,
				Mode: tc.mode, Parents: tc.parents}, func(p Progress) { progress = append(progress, p) })
			if err != nil {
				t.Fatal(err)
			}
			want := Result{Size: int64(len(data)), SHA256: sum(data), Bytes: int64(len(data)), Source: SourceNetwork, Attempts: 1}
			if res != want {
				t.Errorf("result %+v, want %+v", res, want)
			}
			name := filepath.Join(dir, filepath.FromSlash(tc.dest))
			if !bytes.Equal(readFile(t, name), data) {
				t.Error("content differs")
			}
			st, _ := os.Stat(name)
			if st.Mode() != tc.wantMode {
				t.Errorf("mode %v, want %v", st.Mode(), tc.wantMode)
			}
			phases := map[string]bool{}
			sawTotal := false
			for _, p := range progress {
				phases[p.Phase] = true
				sawTotal = sawTotal || (p.Phase == "download" && p.Total == int64(len(data)) && p.Attempt == 1)
			}
			if !phases["download"] || !phases["verify"] || !sawTotal {
				t.Errorf("progress %+v: want download (with the total) and verify", progress)
			}
			if got := dirNames(t, filepath.Dir(name)); len(got) != 1 {
				t.Errorf("destination directory holds %v: leftovers", got)
			}
			if tc.cache {
				if got := dirNames(t, cache); !slices.Equal(got, []string{sum(data)}) {
					t.Errorf("cache holds %v, want just the blob", got)
				}
			}
		})
	}
}

func TestFetchResumeAfterDrop(t *testing.T) {
	data := content(2, 3<<20)
	half := len(data) / 2
	for _, cache := range []bool{true, false} {
		t.Run(fmt.Sprintf("cache=%v", cache), func(t *testing.T) {
			var s *server
			s = newServer(t, data, func(n int64, w http.ResponseWriter, r *http.Request) bool {
				if n == 1 {
					s.dropAfter(t, w, half)
					return true
				}
				return false
			})
			root, dir := newRoot(t)
			f, _ := newFetcher(t, cache, Options{})
			var retried bool
			res, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "out.bin"},
				func(p Progress) { retried = retried || p.Phase == "retry" })
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(readFile(t, filepath.Join(dir, "out.bin")), data) {
				t.Fatal("content differs")
			}
			if res.Resumes < 1 || res.Attempts != 2 || !retried {
				t.Errorf("result %+v (retry reported: %v): want a resume on the second attempt", res, retried)
			}
			limit := int64(len(data)) * 3 / 2
			if res.Bytes >= limit || s.written.Load() >= limit {
				t.Errorf("received %d, server wrote %d: the whole file was sent again (size %d)", res.Bytes, s.written.Load(), len(data))
			}
			if r := s.rangeHeaders(); len(r) != 2 || r[0] != "" || !strings.HasPrefix(r[1], "bytes=") || r[1] == "bytes=0-" {
				t.Errorf("Range headers %q", r)
			}
		})
	}
}

func TestFetchChecksumMismatch(t *testing.T) {
	good, bad := content(3, 200<<10), content(4, 200<<10)
	for _, cache := range []bool{true, false} {
		t.Run(fmt.Sprintf("cache=%v", cache), func(t *testing.T) {
			s := newServer(t, bad, nil)
			root, dir := newRoot(t)
			dest := filepath.Join(dir, "out.bin")
			if err := os.WriteFile(dest, []byte("old content"), 0o644); err != nil {
				t.Fatal(err)
			}
			f, cacheDir := newFetcher(t, cache, Options{})
			_, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(good), Root: root, Dest: "out.bin"}, nil)
			wantReason(t, err, proto.ReasonChecksumMismatch)
			if !strings.Contains(err.Error(), sum(good)) || !strings.Contains(err.Error(), sum(bad)) {
				t.Errorf("error %q should name both hashes", err)
			}
			if got := readFile(t, dest); string(got) != "old content" {
				t.Errorf("destination now holds %d bytes", len(got))
			}
			if got := dirNames(t, dir); !slices.Equal(got, []string{"out.bin"}) {
				t.Errorf("directory holds %v: leftovers", got)
			}
			if got := dirNames(t, cacheDir); cache && len(got) != 0 {
				t.Errorf("cache holds %v after a mismatch", got)
			}
			if n := s.requests.Load(); n != 1 {
				t.Errorf("%d requests: a mismatch must not be retried", n)
			}
		})
	}
}

func TestFetchSkip(t *testing.T) {
	data := content(5, 300<<10)
	t.Run("cache", func(t *testing.T) {
		s := newServer(t, data, nil)
		root, dir := newRoot(t)
		f, cache := newFetcher(t, true, Options{})
		req := Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "a.bin"}
		if _, err := f.Fetch(t.Context(), req, nil); err != nil {
			t.Fatal(err)
		}
		req.Dest = "b.bin"
		res, err := f.Fetch(t.Context(), req, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := Result{Size: int64(len(data)), SHA256: sum(data), Skipped: true, Source: SourceCache}
		if res != want || s.requests.Load() != 1 {
			t.Errorf("result %+v after %d requests, want %+v after 1", res, s.requests.Load(), want)
		}
		if !bytes.Equal(readFile(t, filepath.Join(dir, "b.bin")), data) {
			t.Error("content differs")
		}
		// The destination itself is checked before the cache.
		req.Dest = "a.bin"
		if res, err := f.Fetch(t.Context(), req, nil); err != nil || res.Source != SourceDestination || !res.Skipped {
			t.Errorf("Fetch into a.bin again: %+v, %v; want skipped from the destination", res, err)
		}

		// A corrupt blob is dropped and the content downloaded again.
		blob := filepath.Join(cache, sum(data))
		if err := os.WriteFile(blob, []byte("garbage"), 0o644); err != nil {
			t.Fatal(err)
		}
		req.Dest = "c.bin"
		res, err = f.Fetch(t.Context(), req, nil)
		if err != nil || res.Source != SourceNetwork || s.requests.Load() != 2 {
			t.Fatalf("Fetch past a corrupt blob: %+v, %v after %d requests", res, err, s.requests.Load())
		}
		if !bytes.Equal(readFile(t, blob), data) || !bytes.Equal(readFile(t, filepath.Join(dir, "c.bin")), data) {
			t.Error("blob or destination does not hold the content")
		}
	})
	t.Run("destination without cache", func(t *testing.T) {
		s := newServer(t, data, nil)
		root, dir := newRoot(t)
		if err := os.WriteFile(filepath.Join(dir, "out.bin"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		f, _ := newFetcher(t, false, Options{})
		res, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "out.bin", Mode: 0o600}, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := Result{Size: int64(len(data)), SHA256: sum(data), Skipped: true, Source: SourceDestination}
		if res != want || s.requests.Load() != 0 {
			t.Errorf("result %+v after %d requests, want %+v after none", res, s.requests.Load(), want)
		}
		if st, _ := os.Stat(filepath.Join(dir, "out.bin")); st.Mode() != 0o600 {
			t.Errorf("mode %v: an explicit mode applies to a skipped file too", st.Mode())
		}
	})
	t.Run("symlink is not the content", func(t *testing.T) {
		s := newServer(t, data, nil)
		root, dir := newRoot(t)
		if err := os.WriteFile(filepath.Join(dir, "real"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("real", filepath.Join(dir, "out.bin")); err != nil {
			t.Fatal(err)
		}
		f, _ := newFetcher(t, false, Options{})
		res, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "out.bin"}, nil)
		if err != nil || res.Source != SourceNetwork {
			t.Fatalf("%+v, %v", res, err)
		}
		if st, err := os.Lstat(filepath.Join(dir, "out.bin")); err != nil || !st.Mode().IsRegular() {
			t.Errorf("out.bin should now be a regular file: %v, %v", st, err)
		}
	})
}

func TestFetchStatus(t *testing.T) {
	data := content(6, 64<<10)
	for _, tc := range []struct {
		name     string
		statuses []int // answers to the first requests; then the blob
		reason   proto.Reason
		requests int64
	}{
		{name: "503 then ok", statuses: []int{503, 503}, requests: 3},
		{name: "429 then ok", statuses: []int{429}, requests: 2},
		{name: "408 then ok", statuses: []int{408}, requests: 2},
		{name: "404", statuses: []int{404, 404, 404, 404}, reason: proto.ReasonNotFound, requests: 1},
		{name: "410", statuses: []int{410, 410, 410, 410}, reason: proto.ReasonNotFound, requests: 1},
		{name: "403", statuses: []int{403, 403, 403, 403}, reason: proto.ReasonInvalidParams, requests: 1},
		{name: "always 503", statuses: []int{503, 503, 503, 503}, reason: proto.ReasonUnavailable, requests: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, data, func(n int64, w http.ResponseWriter, r *http.Request) bool {
				if int(n) <= len(tc.statuses) {
					w.Header().Set("Retry-After", "0")
					http.Error(w, "no", tc.statuses[n-1])
					return true
				}
				return false
			})
			root, dir := newRoot(t)
			f, _ := newFetcher(t, true, Options{Attempts: 3})
			res, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "out.bin"}, nil)
			if n := s.requests.Load(); n != tc.requests || int64(res.Attempts) != n {
				t.Errorf("%d requests (Attempts %d), want %d", n, res.Attempts, tc.requests)
			}
			if tc.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(readFile(t, filepath.Join(dir, "out.bin")), data) {
					t.Error("content differs")
				}
				return
			}
			wantReason(t, err, tc.reason)
			if tc.reason == proto.ReasonInvalidParams {
				var pe *proto.Error
				if !errors.As(err, &pe) || len(pe.Data.Fields) != 1 || pe.Data.Fields[0].Field != "url" {
					t.Errorf("error %v should name the url field", err)
				}
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows the URL's query", err)
			}
			if tc.reason == proto.ReasonUnavailable && !strings.Contains(err.Error(), "503") {
				t.Errorf("error %q should name the last cause", err)
			}
			if got := dirNames(t, dir); len(got) != 0 {
				t.Errorf("directory holds %v", got)
			}
		})
	}
}

func TestFetchConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	root, _ := newRoot(t)
	f, _ := newFetcher(t, false, Options{Attempts: 2})
	res, err := f.Fetch(t.Context(), Request{URL: "http://" + addr + "/x", SHA256: sum([]byte("x")), Root: root, Dest: "x"}, nil)
	wantReason(t, err, proto.ReasonUnavailable)
	if res.Attempts != 2 || !strings.Contains(err.Error(), "refused") {
		t.Errorf("%+v, %v: want 2 attempts and the cause", res, err)
	}
}

// fetchCanceledAtSize runs f.Fetch and cancels it once a file matching
// pattern holds n bytes; it returns Fetch's error.
func fetchCanceledAtSize(t *testing.T, f *Fetcher, req Request, pattern string, n int64) error {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := f.Fetch(ctx, req, nil)
		errc <- err
	}()
	testenv.Eventually(t, fmt.Sprintf("a file %s of %d bytes", filepath.Base(pattern), n), func() bool {
		names, _ := filepath.Glob(pattern)
		for _, name := range names {
			if st, err := os.Stat(name); err == nil && st.Size() >= n {
				return true
			}
		}
		return false
	})
	cancel()
	return <-errc
}

func TestFetchCancelThenResume(t *testing.T) {
	data := content(7, 2<<20)
	half := len(data) / 2
	t.Run("cache", func(t *testing.T) {
		var s *server
		s = newServer(t, data, func(n int64, w http.ResponseWriter, r *http.Request) bool {
			if n == 1 {
				s.stallAfter(w, r, half)
				return true
			}
			return false
		})
		root, dir := newRoot(t)
		f, cache := newFetcher(t, true, Options{})
		req := Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "out.bin"}
		err := fetchCanceledAtSize(t, f, req, filepath.Join(cache, sum(data)+partSuffix), int64(half))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want context.Canceled", err)
		}
		wantReason(t, err, proto.ReasonCanceled)
		if _, err := os.Stat(filepath.Join(dir, "out.bin")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("destination exists after a canceled download: %v", err)
		}
		st, err := os.Stat(filepath.Join(cache, sum(data)+partSuffix))
		if err != nil || st.Size() < int64(half) {
			t.Fatalf("partial download: %v, %v; want at least %d bytes kept", st, err, half)
		}
		kept := st.Size()

		res, err := f.Fetch(t.Context(), req, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Resumes != 1 || res.Bytes != int64(len(data))-kept || res.Source != SourceNetwork {
			t.Errorf("result %+v: want one resume fetching %d bytes", res, int64(len(data))-kept)
		}
		if r := s.rangeHeaders(); len(r) != 2 || r[1] != fmt.Sprintf("bytes=%d-", kept) {
			t.Errorf("Range headers %q, want the second from %d", r, kept)
		}
		if !bytes.Equal(readFile(t, filepath.Join(dir, "out.bin")), data) {
			t.Error("content differs")
		}
	})
	t.Run("no cache", func(t *testing.T) {
		var s *server
		s = newServer(t, data, func(n int64, w http.ResponseWriter, r *http.Request) bool {
			s.stallAfter(w, r, half)
			return true
		})
		root, dir := newRoot(t)
		f, _ := newFetcher(t, false, Options{})
		err := fetchCanceledAtSize(t, f, Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "out.bin"},
			filepath.Join(dir, ".out.bin.boardlink-part-*"), int64(half))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want context.Canceled", err)
		}
		if got := dirNames(t, dir); len(got) != 0 {
			t.Errorf("directory holds %v: without a cache the partial goes", got)
		}
	})
}

func TestFetchStallWatchdog(t *testing.T) {
	data := content(8, 1<<20)
	var s *server
	s = newServer(t, data, func(n int64, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			s.stallAfter(w, r, len(data)/3)
			return true
		}
		return false
	})
	root, _ := newRoot(t)
	f, _ := newFetcher(t, true, Options{StallTimeout: 200 * time.Millisecond})
	res, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "out.bin"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumes != 1 || res.Attempts != 2 {
		t.Errorf("result %+v: want the stalled body resumed", res)
	}
}

func TestFetchServerIgnoresRange(t *testing.T) {
	data := content(9, 1<<20)
	half := len(data) / 2
	for _, tc := range []struct {
		name     string
		answer   func(w http.ResponseWriter, data []byte) // to the second request
		requests int64
	}{
		{name: "200 to a Range request", requests: 2, answer: func(w http.ResponseWriter, data []byte) {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			_, _ = w.Write(data)
		}},
		{name: "206 from the wrong offset", requests: 3, answer: func(w http.ResponseWriter, data []byte) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(data)-1, len(data)))
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(data)
		}},
		{name: "416 for a partial", requests: 3, answer: func(w http.ResponseWriter, data []byte) {
			w.Header().Set("Content-Range", "bytes */1")
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s *server
			s = newServer(t, data, func(n int64, w http.ResponseWriter, r *http.Request) bool {
				switch n {
				case 1:
					s.dropAfter(t, w, half)
					return true
				case 2:
					tc.answer(w, data)
					return true
				}
				return false
			})
			root, dir := newRoot(t)
			f, _ := newFetcher(t, true, Options{})
			res, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "out.bin"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Resumes != 0 || s.requests.Load() != tc.requests {
				t.Errorf("result %+v after %d requests", res, s.requests.Load())
			}
			if r := s.rangeHeaders(); r[len(r)-1] != "" && tc.requests == 3 {
				t.Errorf("Range headers %q: after a bad range answer, ask for everything", r)
			}
			if !bytes.Equal(readFile(t, filepath.Join(dir, "out.bin")), data) {
				t.Error("content differs")
			}
		})
	}
}

func TestFetchConcurrentSameHash(t *testing.T) {
	data := content(10, 512<<10)
	s := newServer(t, data, nil)
	root, dir := newRoot(t)
	f, _ := newFetcher(t, true, Options{})
	const n = 8
	var wg sync.WaitGroup
	results := make([]Result, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			results[i], errs[i] = f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root,
				Dest: fmt.Sprintf("d%d/out.bin", i), Parents: true}, nil)
		})
	}
	wg.Wait()
	sources := map[string]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		sources[results[i].Source]++
		if !bytes.Equal(readFile(t, filepath.Join(dir, fmt.Sprintf("d%d/out.bin", i))), data) {
			t.Errorf("d%d: content differs", i)
		}
	}
	if s.requests.Load() != 1 || sources[SourceNetwork] != 1 || sources[SourceCache] != n-1 {
		t.Errorf("%d requests, sources %v: want one download, the rest from the cache", s.requests.Load(), sources)
	}
}

func TestFetchInvalidRequest(t *testing.T) {
	data := []byte("x")
	s := newServer(t, data, nil)
	root, dir := newRoot(t)
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "afile"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	good := Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "out"}
	for _, tc := range []struct {
		name   string
		edit   func(*Request)
		field  string
		reason proto.Reason
	}{
		{"ftp url", func(r *Request) { r.URL = "ftp://127.0.0.1/x" }, "url", proto.ReasonInvalidParams},
		{"no host", func(r *Request) { r.URL = "http:///x" }, "url", proto.ReasonInvalidParams},
		{"garbage url", func(r *Request) { r.URL = "::" }, "url", proto.ReasonInvalidParams},
		{"short hash", func(r *Request) { r.SHA256 = "abc" }, "sha256", proto.ReasonInvalidParams},
		{"uppercase hash", func(r *Request) { r.SHA256 = strings.ToUpper(sum(data)) }, "sha256", proto.ReasonInvalidParams},
		{"no root", func(r *Request) { r.Root = nil }, "path", proto.ReasonInvalidParams},
		{"dot", func(r *Request) { r.Dest = "." }, "path", proto.ReasonInvalidParams},
		{"dot extract", func(r *Request) { r.Dest, r.Extract = ".", true }, "path", proto.ReasonInvalidParams},
		{"dotdot", func(r *Request) { r.Dest = "../out" }, "path", proto.ReasonInvalidParams},
		{"absolute", func(r *Request) { r.Dest = "/tmp/out" }, "path", proto.ReasonInvalidParams},
		{"unclean", func(r *Request) { r.Dest = "a//out" }, "path", proto.ReasonInvalidParams},
		{"mode type bits", func(r *Request) { r.Mode = fs.ModeDir | 0o755 }, "mode", proto.ReasonInvalidParams},
		{"file onto a directory", func(r *Request) { r.Dest = "adir" }, "path", proto.ReasonInvalidParams},
		{"extract onto a file", func(r *Request) { r.Dest, r.Extract = "afile", true }, "path", proto.ReasonInvalidParams},
		{"missing parent", func(r *Request) { r.Dest = "no/such/out" }, "", proto.ReasonNotFound},
		{"parent is a file", func(r *Request) { r.Dest = "afile/out" }, "path", proto.ReasonInvalidParams},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := newFetcher(t, true, Options{})
			req := good
			tc.edit(&req)
			_, err := f.Fetch(t.Context(), req, nil)
			wantReason(t, err, tc.reason)
			var pe *proto.Error
			if tc.field != "" && (!errors.As(err, &pe) || pe.Data.Fields[0].Field != tc.field) {
				t.Errorf("error %v should name %q", err, tc.field)
			}
			if s.requests.Load() != 0 {
				t.Errorf("a request was made")
			}
		})
	}
	t.Run("parents", func(t *testing.T) {
		f, _ := newFetcher(t, true, Options{})
		req := good
		req.Dest, req.Parents = "no/such/out", true
		if _, err := f.Fetch(t.Context(), req, nil); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(dir, "no/such/out")); !bytes.Equal(got, data) {
			t.Error("content differs")
		}
	})
}

func TestFetchRootEscape(t *testing.T) {
	data := []byte("payload")
	s := newServer(t, data, nil)
	base := t.TempDir()
	rootDir, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	for _, d := range []string{rootDir, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(rootDir, "out")); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	f, _ := newFetcher(t, true, Options{})
	for _, tc := range []struct {
		dest    string
		extract bool
	}{{"out/x", false}, {"out/pkg", true}} {
		_, err = f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: tc.dest, Extract: tc.extract}, nil)
		wantReason(t, err, proto.ReasonInvalidParams)
		if got := dirNames(t, outside); len(got) != 0 {
			t.Errorf("%s: wrote %v outside the root", tc.dest, got)
		}
	}
}

func TestCacheEviction(t *testing.T) {
	const size = 100 << 10
	a, b, c := content(11, size), content(12, size), content(13, size)
	srv := map[string]*server{}
	for _, d := range [][]byte{a, b, c} {
		srv[sum(d)] = newServer(t, d, nil)
	}
	root, _ := newRoot(t)
	f, cache := newFetcher(t, true, Options{CacheMax: 250 << 10})
	fetch := func(d []byte, dest string) Result {
		t.Helper()
		res, err := f.Fetch(t.Context(), Request{URL: srv[sum(d)].url(), SHA256: sum(d), Root: root, Dest: dest}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	fetch(a, "a")
	fetch(b, "b")
	// Ages chosen, so that the order does not hang on clock resolution.
	for i, d := range [][]byte{a, b} {
		old := time.Now().Add(-time.Duration(2-i) * time.Hour)
		if err := os.Chtimes(filepath.Join(cache, sum(d)), old, old); err != nil {
			t.Fatal(err)
		}
	}
	if res := fetch(a, "a2"); res.Source != SourceCache {
		t.Fatalf("a again: %+v, want it from the cache", res)
	}
	fetch(c, "c") // 300 KiB: the least recently used (b, as a was just used) goes
	got := dirNames(t, cache)
	slices.Sort(got)
	want := []string{sum(a), sum(c)}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("cache holds %v, want a and c", got)
	}

	t.Run("too large to keep", func(t *testing.T) {
		f, cache := newFetcher(t, true, Options{CacheMax: size / 2})
		d := content(14, size)
		s := newServer(t, d, nil)
		if _, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(d), Root: root, Dest: "big"}, nil); err != nil {
			t.Fatal(err)
		}
		if got := dirNames(t, cache); len(got) != 0 {
			t.Errorf("cache holds %v, want nothing", got)
		}
	})
}

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in           string
		start, total int64
	}{
		{"bytes 100-199/200", 100, 200},
		{"bytes 0-0/*", 0, -1},
		{"bytes */300", -1, 300},
		{"", -1, -1},
		{"items 1-2/3", -1, -1},
		{"bytes x-y/z", -1, -1},
		{"bytes -5-9/10", -1, 10},
	} {
		if s, n := parseContentRange(tc.in); s != tc.start || n != tc.total {
			t.Errorf("%q: %d, %d; want %d, %d", tc.in, s, n, tc.start, tc.total)
		}
	}
}

func TestProgressThrottle(t *testing.T) {
	var calls []Progress
	r := &reporter{fn: func(p Progress) { calls = append(calls, p) }}
	start := time.Now()
	for i := range 100000 {
		r.report("download", int64(i), 0, false)
	}
	r.report("verify", 1, 1, false) // a phase change always reports
	elapsed := time.Since(start)
	if limit := 2 + int(elapsed/progressEvery); len(calls) > limit || len(calls) < 2 {
		t.Errorf("%d calls in %v, want 2..%d", len(calls), elapsed, limit)
	}
	if last := calls[len(calls)-1]; last.Phase != "verify" {
		t.Errorf("last call %+v, want the phase change", last)
	}
	(*reporter)(nil).report("download", 1, 1, true) // no callback: no panic
}
