package fetch

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/proto"
)

// wantField checks that err is invalid_params naming field with rule.
func wantField(t *testing.T, err error, field, rule string) {
	t.Helper()
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Reason() != proto.ReasonInvalidParams || len(pe.Data.Fields) != 1 ||
		pe.Data.Fields[0].Field != field || pe.Data.Fields[0].Rule != rule {
		t.Fatalf("error %v: want invalid_params on %s (%s)", err, field, rule)
	}
}

// endless writes a body without a length that never ends, until the
// client goes away.
func endless(w http.ResponseWriter, r *http.Request) {
	chunk := content(30, 64<<10)
	for r.Context().Err() == nil {
		if _, err := w.Write(chunk); err != nil {
			return
		}
	}
}

// announce sends the headers of a body of n bytes and as much of it as
// fits in a few writes, then nothing until the client goes away.
func announce(n int64) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = w.Write(content(31, 64<<10))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}
}

// unsized writes data without a Content-Length.
func unsized(data []byte) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush() // headers first: chunked, no length
		_, _ = w.Write(data)
	}
}

// always answers every request with h.
func always(h func(w http.ResponseWriter, r *http.Request)) func(int64, http.ResponseWriter, *http.Request) bool {
	return func(_ int64, w http.ResponseWriter, r *http.Request) bool { h(w, r); return true }
}

// TestFetchSizeBounds: a body beyond the caller's max_size, the expected
// size or the agent's limit, found while it flows or announced up front,
// stops the download at once; its partial is removed from the cache.
func TestFetchSizeBounds(t *testing.T) {
	data := content(32, 256<<10)
	n := int64(len(data))
	for _, tc := range []struct {
		name        string
		serve       func(w http.ResponseWriter, r *http.Request) // nil: data, with Range
		req         Request
		field, rule string
		noRequest   bool // refused before any request
		noBody      bool // refused before reading the body
	}{
		{name: "endless body, max_size", serve: endless, req: Request{MaxSize: 1 << 20}, field: "max_size", rule: "max"},
		{name: "endless body, the agent's limit", serve: endless, req: Request{Limits: Limits{MaxSize: 1 << 20}}, field: "url", rule: "max_size"},
		{name: "endless body, size", serve: endless, req: Request{Size: 1 << 20}, field: "size", rule: "size"},
		{name: "max_size below the agent's limit", serve: endless, req: Request{MaxSize: 1 << 20, Limits: Limits{MaxSize: 2 << 20}}, field: "max_size", rule: "max"},
		{name: "the agent's limit below max_size", serve: endless, req: Request{MaxSize: 2 << 20, Limits: Limits{MaxSize: 1 << 20}}, field: "url", rule: "max_size"},
		{name: "announced beyond max_size", serve: announce(1 << 40), req: Request{MaxSize: 1 << 20}, field: "max_size", rule: "max", noBody: true},
		{name: "announced beyond the agent's limit", serve: announce(1 << 40), field: "url", rule: "max_size", noBody: true},
		{name: "announced another size", req: Request{Size: n + 1}, field: "size", rule: "size", noBody: true},
		{name: "unsized body shorter than size", serve: unsized(data), req: Request{Size: n + 1}, field: "size", rule: "size"},
		{name: "unsized body longer than size", serve: unsized(data), req: Request{Size: n - 1}, field: "size", rule: "size"},
		{name: "size above max_size", req: Request{Size: 2 << 20, MaxSize: 1 << 20}, field: "size", rule: "max_size", noRequest: true},
		{name: "size above the agent's limit", req: Request{Size: 2 << 20, Limits: Limits{MaxSize: 1 << 20}}, field: "size", rule: "max_size", noRequest: true},
	} {
		for _, cached := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/cache=%v", tc.name, cached), func(t *testing.T) {
				var hook func(int64, http.ResponseWriter, *http.Request) bool
				if tc.serve != nil {
					hook = always(tc.serve)
				}
				s := newServer(t, data, hook)
				root, dir := newRoot(t)
				f, cache := newFetcher(t, cached, Options{})
				req := tc.req
				req.URL, req.SHA256, req.Root, req.Dest = s.url(), sum(data), root, "out.bin"
				res, err := f.Fetch(t.Context(), req, nil)
				wantField(t, err, tc.field, tc.rule)
				if got := s.requests.Load(); tc.noRequest != (got == 0) {
					t.Errorf("%d requests", got)
				}
				if tc.noBody && res.Bytes != 0 {
					t.Errorf("%d body bytes read: the announced size should have been refused first", res.Bytes)
				}
				if got := dirNames(t, dir); len(got) != 0 {
					t.Errorf("the file root holds %v", got)
				}
				if got := dirNames(t, cache); cached && len(got) != 0 {
					t.Errorf("the cache holds %v: the partial of a refused body must go", got)
				}
			})
		}
	}
}

// TestFetchCachedBounds: content the cache holds is bound like a body.
func TestFetchCachedBounds(t *testing.T) {
	data := content(33, 256<<10)
	s := newServer(t, data, nil)
	root, _ := newRoot(t)
	f, _ := newFetcher(t, true, Options{})
	req := Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "a.bin"}
	if _, err := f.Fetch(t.Context(), req, nil); err != nil {
		t.Fatal(err)
	}
	req.Dest, req.MaxSize = "b.bin", int64(len(data)-1)
	_, err := f.Fetch(t.Context(), req, nil)
	wantField(t, err, "max_size", "max")
	req.MaxSize, req.Size = 0, int64(len(data)+1)
	_, err = f.Fetch(t.Context(), req, nil)
	wantField(t, err, "size", "size")
	if s.requests.Load() != 1 {
		t.Errorf("%d requests, want the first only", s.requests.Load())
	}
}

// TestFetchFreeSpace: a download whose size is known is refused, before
// any byte is written, when the disk cannot hold it.
func TestFetchFreeSpace(t *testing.T) {
	const huge = 1 << 50 // no test machine has a petabyte free
	for _, tc := range []struct {
		name      string
		req       Request
		noRequest bool
	}{
		{name: "size given", req: Request{Size: huge}, noRequest: true},
		{name: "size announced"},
	} {
		for _, cached := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/cache=%v", tc.name, cached), func(t *testing.T) {
				s := newServer(t, nil, always(announce(huge)))
				root, dir := newRoot(t)
				f, cache := newFetcher(t, cached, Options{})
				req := tc.req
				req.URL, req.SHA256, req.Root, req.Dest = s.url(), sum([]byte("huge")), root, "out.bin"
				req.Limits.MaxSize = 1 << 60
				res, err := f.Fetch(t.Context(), req, nil)
				wantReason(t, err, proto.ReasonNoSpace)
				if !strings.Contains(err.Error(), "free") {
					t.Errorf("error %q should say how much is free", err)
				}
				if got := s.requests.Load(); tc.noRequest != (got == 0) || res.Bytes != 0 {
					t.Errorf("%d requests, %d body bytes", got, res.Bytes)
				}
				if got := append(dirNames(t, dir), dirNames(t, cache)...); len(got) != 0 {
					t.Errorf("left %v", got)
				}
			})
		}
	}
}

// TestFetchDeadline: a server that trickles, or keeps failing, is given up
// on when the download's deadline ends, as reason timeout; the partial
// stays in the cache for a resume.
func TestFetchDeadline(t *testing.T) {
	data := content(34, 1<<20)
	trickle := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < len(data); i++ {
			if _, err := w.Write(data[i : i+1]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-tick.C:
			case <-r.Context().Done():
				return
			}
		}
	}
	unavailable := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	for _, tc := range []struct {
		name  string
		serve func(w http.ResponseWriter, r *http.Request)
		req   Request
		by    string // in the message
	}{
		{"trickle, timeout", trickle, Request{Timeout: 300 * time.Millisecond}, "timeout_ms"},
		{"trickle, the agent's deadline", trickle, Request{Limits: Limits{Deadline: 300 * time.Millisecond}}, "the agent's download deadline"},
		{"retries, timeout", unavailable, Request{Timeout: 300 * time.Millisecond}, "timeout_ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, data, always(tc.serve))
			root, dir := newRoot(t)
			f, cache := newFetcher(t, true, Options{Attempts: 1 << 20})
			req := tc.req
			req.URL, req.SHA256, req.Root, req.Dest = s.url(), sum(data), root, "out.bin"
			_, err := f.Fetch(t.Context(), req, nil)
			wantReason(t, err, proto.ReasonTimeout)
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), tc.by) {
				t.Errorf("error %q: want it to wrap context.DeadlineExceeded and name %q", err, tc.by)
			}
			if got := dirNames(t, dir); len(got) != 0 {
				t.Errorf("the file root holds %v", got)
			}
			if got := dirNames(t, cache); !slices.Equal(got, []string{sum(data) + partSuffix}) {
				t.Errorf("cache holds %v, want the partial kept", got)
			}
		})
	}
}

// bzip2ed compresses b with the bzip2 program (Go has no bzip2 writer).
func bzip2ed(t *testing.T, b []byte) []byte {
	t.Helper()
	if _, err := exec.LookPath("bzip2"); err != nil {
		t.Skip("no bzip2 program")
	}
	cmd := exec.Command("bzip2", "-c")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// formats are the compressions Extract takes.
var formats = []struct {
	name     string
	compress func(t *testing.T, b []byte) []byte
}{
	{"tar", func(t *testing.T, b []byte) []byte { return b }},
	{"gzip", func(t *testing.T, b []byte) []byte { return gzipped(t, b) }},
	{"bzip2", bzip2ed},
}

// paxRecord formats one PAX extended header record: "LEN key=value\n",
// LEN counting itself.
func paxRecord(k, v string) string {
	rec := " " + k + "=" + v + "\n"
	for n := len(rec) + 1; ; n++ {
		if s := strconv.Itoa(n) + rec; len(s) == n {
			return s
		}
	}
}

// ustarHeader is one tar header block.
func ustarHeader(name string, typ byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:], "0000644\x00")
	copy(b[108:], "0000000\x00")
	copy(b[116:], "0000000\x00")
	copy(b[124:], fmt.Sprintf("%011o\x00", size))
	copy(b[136:], "00000000000\x00")
	b[156] = typ
	copy(b[257:], "ustar\x0000")
	copy(b[148:156], "        ")
	chk := 0
	for _, c := range b {
		chk += int(c)
	}
	copy(b[148:], fmt.Sprintf("%06o\x00 ", chk))
	return b
}

func padBlock(b []byte) []byte { return append(b, make([]byte, (512-len(b)%512)%512)...) }

// sparseTar is an archive (PAX format 1.0, as GNU tar --sparse makes it)
// holding name: a hole of size-len(tail) bytes, then tail. Go's tar
// writer cannot make sparse entries, so the blocks are written here.
func sparseTar(name string, size int64, tail []byte) []byte {
	recs := paxRecord("GNU.sparse.major", "1") + paxRecord("GNU.sparse.minor", "0") +
		paxRecord("GNU.sparse.name", name) + paxRecord("GNU.sparse.realsize", strconv.FormatInt(size, 10))
	body := append(padBlock(fmt.Appendf(nil, "1\n%d\n%d\n", size-int64(len(tail)), len(tail))), tail...)
	var b []byte
	b = append(b, ustarHeader("PaxHeaders/"+name, 'x', int64(len(recs)))...)
	b = append(b, padBlock([]byte(recs))...)
	b = append(b, ustarHeader("GNUSparseFile.0/"+name, '0', int64(len(body)))...)
	b = append(b, padBlock(body)...)
	return append(b, make([]byte, 1024)...)
}

// TestFetchExtractLimits: an archive that unpacks to more bytes or entries
// than the limits is refused as a whole, in every format; a gzip bomb
// first among them.
func TestFetchExtractLimits(t *testing.T) {
	zeros := makeTar(t, []entry{{name: "bomb", typ: tar.TypeReg, body: string(make([]byte, 16<<20)), mode: 0o644}})
	var many []entry
	for i := range 50 {
		many = append(many, entry{name: fmt.Sprintf("f%d", i), typ: tar.TypeReg, body: "x", mode: 0o644})
	}
	for _, tc := range []struct {
		name   string
		tar    []byte
		limits Limits
		why    string
	}{
		{"bytes", zeros, Limits{MaxUnpack: 1 << 20}, "more than 1048576 bytes"},
		{"entries", makeTar(t, many), Limits{MaxUnpackEntries: 10}, "more than 10 entries"},
		{"sparse", sparseTar("disk.img", 2<<30, []byte("end")), Limits{MaxUnpack: 1 << 30}, "more than 1073741824 bytes"},
	} {
		for _, format := range formats {
			t.Run(tc.name+"/"+format.name, func(t *testing.T) {
				data := format.compress(t, tc.tar)
				t.Logf("%d bytes unpack to %d", len(data), len(tc.tar))
				s := newServer(t, data, nil)
				root, dir := newRoot(t)
				if err := os.Mkdir(filepath.Join(dir, "pkg"), 0o755); err != nil {
					t.Fatal(err)
				}
				f, _ := newFetcher(t, true, Options{})
				_, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "pkg",
					Extract: true, Limits: tc.limits}, nil)
				wantField(t, err, "url", "archive")
				if !strings.Contains(err.Error(), tc.why) {
					t.Errorf("error %q should say %q", err, tc.why)
				}
				if got := dirNames(t, dir); !slices.Equal(got, []string{"pkg"}) {
					t.Errorf("root holds %v: leftovers", got)
				}
				if got := dirNames(t, filepath.Join(dir, "pkg")); len(got) != 0 {
					t.Errorf("pkg holds %v: the destination was touched", got)
				}
			})
		}
	}
}

// TestFetchExtractSparse: a sparse entry is written sparse: its holes take
// no disk space.
func TestFetchExtractSparse(t *testing.T) {
	const size = 256 << 20
	data := gzipped(t, sparseTar("disk.img", size, []byte("end")))
	s := newServer(t, data, nil)
	root, dir := newRoot(t)
	f, _ := newFetcher(t, true, Options{})
	res, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "pkg", Extract: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Extracted != 1 {
		t.Errorf("%d entries extracted", res.Extracted)
	}
	p := filepath.Join(dir, "pkg", "disk.img")
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	used := st.Sys().(*syscall.Stat_t).Blocks * 512
	t.Logf("%s: %d bytes, %d on disk", p, st.Size(), used)
	if st.Size() != size || used > 1<<20 {
		t.Errorf("%d bytes taking %d on disk: want %d taking at most 1 MiB", st.Size(), used, size)
	}
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	tail := make([]byte, 4)
	if _, err := fh.ReadAt(tail, size-4); err != nil || string(tail) != "\x00end" {
		t.Errorf("the file ends in %q (%v)", tail, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pkg", "GNUSparseFile.0")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the sparse entry was taken for a plain one: %v", err)
	}
}

// smallFSEnv names, in a test process re-run by onSmallFS, the directory
// where a 1 MiB tmpfs is mounted.
const smallFSEnv = "BOARDLINK_TEST_SMALL_FS"

// onSmallFS re-runs the test in a private mount namespace (a user
// namespace too, so no root is needed) with a 1 MiB tmpfs mounted on a
// directory, and returns that directory in the process that goes on with
// the test; "" in the parent, after the test ran there.
func onSmallFS(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv(smallFSEnv); dir != "" {
		return dir
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare (util-linux) to mount a small file system")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	flag := "-rm"
	if os.Geteuid() == 0 {
		flag = "-m"
	}
	cmd := exec.Command("unshare", flag, "sh", "-c",
		`mount -t tmpfs -o size=1m tmpfs "$0" && exec "$1" -test.run="^$2\$" -test.v -test.count=1 -test.timeout=5m`,
		dir, exe, t.Name())
	cmd.Env = append(os.Environ(), smallFSEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	t.Logf("on a 1 MiB tmpfs:\n%s", out)
	if err != nil {
		if strings.Contains(string(out), "--- FAIL") {
			t.Fatalf("failed on its file system: %v", err)
		}
		t.Skipf("cannot mount a small file system: %v", err)
	}
	return ""
}

// TestFetchDiskFull: a disk that fills while an archive unpacks (its
// size is not known up front, only the archive's) is no_space, not the
// caller's fault, and leaves nothing behind.
func TestFetchDiskFull(t *testing.T) {
	dir := onSmallFS(t)
	if dir == "" {
		return
	}
	// 4 MiB that compress well but are not zeros, which take no space.
	body := bytes.Repeat([]byte("boardlink"), 4<<20/9)
	data := gzipped(t, makeTar(t, []entry{{name: "big", typ: tar.TypeReg, body: string(body), mode: 0o644}}))
	s := newServer(t, data, nil)
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	f, _ := newFetcher(t, true, Options{}) // the cache is on the real disk
	_, err = f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "pkg", Extract: true}, nil)
	wantReason(t, err, proto.ReasonNoSpace)
	if got := dirNames(t, dir); len(got) != 0 {
		t.Errorf("the full file system holds %v", got)
	}
}
