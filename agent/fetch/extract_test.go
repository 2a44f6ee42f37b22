package fetch

import (
	"archive/tar"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"flag"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/proto"
)

var update = flag.Bool("update", false, "rewrite testdata/good.tar.bz2 (needs bzip2)")

// entry is one tar entry for a test archive.
type entry struct {
	name string
	typ  byte
	body string
	mode int64
	link string
}

func makeTar(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link,
			Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0)}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipped(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// goodEntries is the archive every format test unpacks (and what
// testdata/good.tar.bz2 holds).
func goodEntries() []entry {
	return []entry{
		{name: "./", typ: tar.TypeDir, mode: 0o755},
		{name: "dir/", typ: tar.TypeDir, mode: 0o755},
		{name: "dir/hello.txt", typ: tar.TypeReg, body: "hello\n", mode: 0o644},
		{name: "dir/run.sh", typ: tar.TypeReg, body: "#!/bin/sh\necho hi\n", mode: 0o755},
		{name: "dir/secret", typ: tar.TypeReg, body: "s", mode: 0o600},
		{name: "dir/sub/", typ: tar.TypeDir, mode: 0o750},
		{name: "dir/sub/deep.txt", typ: tar.TypeReg, body: "deep", mode: 0o640},
		{name: "dir/sub/up", typ: tar.TypeSymlink, link: "../hello.txt"},
		{name: "link", typ: tar.TypeSymlink, link: "./dir/hello.txt"},
		{name: "hard", typ: tar.TypeLink, link: "dir/hello.txt"},
		{name: "./implicit/parent/file.txt", typ: tar.TypeReg, body: "made", mode: 0o644},
		{name: "fifo", typ: tar.TypeFifo, mode: 0o644},
		{name: markerName, typ: tar.TypeReg, body: "forged", mode: 0o644},
	}
}

// goodExtracted is how many entries of goodEntries are written: not "./",
// the fifo or the forged marker.
const goodExtracted = 10

// checkGood checks a directory unpacked from goodEntries.
func checkGood(t *testing.T, dir, hash string) {
	t.Helper()
	for name, want := range map[string]struct {
		body string
		mode fs.FileMode
	}{
		"dir/hello.txt":            {"hello\n", 0o644},
		"dir/run.sh":               {"#!/bin/sh\necho hi\n", 0o755},
		"dir/secret":               {"s", 0o600},
		"dir/sub/deep.txt":         {"deep", 0o640},
		"implicit/parent/file.txt": {"made", 0o644},
		"link":                     {"hello\n", 0o644}, // through the symlink
		"dir/sub/up":               {"hello\n", 0o644},
		markerName:                 {hash + "\n", 0o644},
	} {
		p := filepath.Join(dir, name)
		if got := string(readFile(t, p)); got != want.body {
			t.Errorf("%s holds %q, want %q", name, got, want.body)
		}
		if st, _ := os.Stat(p); st.Mode() != want.mode {
			t.Errorf("%s: mode %v, want %v", name, st.Mode(), want.mode)
		}
	}
	for name, want := range map[string]fs.FileMode{"dir": 0o755 | fs.ModeDir, "dir/sub": 0o750 | fs.ModeDir} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Mode() != want {
			t.Errorf("%s: %v, %v; want mode %v", name, st, err, want)
		}
	}
	for name, want := range map[string]string{"link": "dir/hello.txt", "dir/sub/up": "../hello.txt"} {
		if got, err := os.Readlink(filepath.Join(dir, name)); err != nil || got != want {
			t.Errorf("%s: symlink to %q (%v), want %q", name, got, err, want)
		}
	}
	a, _ := os.Stat(filepath.Join(dir, "hard"))
	b, _ := os.Stat(filepath.Join(dir, "dir/hello.txt"))
	if a == nil || b == nil || !os.SameFile(a, b) {
		t.Error("hard is not a hard link to dir/hello.txt")
	}
	if _, err := os.Lstat(filepath.Join(dir, "fifo")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("fifo: %v; want it skipped", err)
	}
}

func TestGoodBzip2Testdata(t *testing.T) {
	name := filepath.Join("testdata", "good.tar.bz2")
	if *update {
		bz, err := exec.LookPath("bzip2")
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bz, "-9", "-c")
		cmd.Stdin = bytes.NewReader(makeTar(t, goodEntries()))
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tr := tar.NewReader(bzip2.NewReader(bytes.NewReader(readFile(t, name))))
	var got []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, hdr.Name)
	}
	var want []string
	for _, e := range goodEntries() {
		want = append(want, e.name)
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s holds %q, want %q (go test -run TestGoodBzip2Testdata -update)", name, got, want)
	}
}

func TestFetchExtract(t *testing.T) {
	plain := makeTar(t, goodEntries())
	bz, err := os.ReadFile(filepath.Join("testdata", "good.tar.bz2"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		data  []byte
		cache bool
	}{
		{"tar", plain, true},
		{"tar.gz", gzipped(t, plain), true},
		{"tar.bz2", bz, true},
		{"tar.gz without cache", gzipped(t, plain), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, tc.data, nil)
			root, dir := newRoot(t)
			// Dest exists with other content: it is replaced as a whole.
			if err := os.MkdirAll(filepath.Join(dir, "pkg/stale"), 0o755); err != nil {
				t.Fatal(err)
			}
			f, cache := newFetcher(t, tc.cache, Options{})
			var phases []string
			req := Request{URL: s.url(), SHA256: sum(tc.data), Root: root, Dest: "pkg", Extract: true}
			res, err := f.Fetch(t.Context(), req, func(p Progress) { phases = append(phases, p.Phase) })
			if err != nil {
				t.Fatal(err)
			}
			if res.Extracted != goodExtracted || res.Source != SourceNetwork || res.Size != int64(len(tc.data)) {
				t.Errorf("result %+v, want %d entries from the network", res, goodExtracted)
			}
			if !slices.Contains(phases, "extract") {
				t.Errorf("phases %q: no extract", phases)
			}
			checkGood(t, filepath.Join(dir, "pkg"), sum(tc.data))
			if _, err := os.Stat(filepath.Join(dir, "pkg/stale")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("pkg/stale: %v; want the old directory gone", err)
			}
			if got := dirNames(t, dir); !slices.Equal(got, []string{"pkg"}) {
				t.Errorf("root holds %v: leftovers", got)
			}

			// Again: the marker says pkg holds it.
			res, err = f.Fetch(t.Context(), req, nil)
			if err != nil || !res.Skipped || res.Source != SourceDestination || s.requests.Load() != 1 {
				t.Errorf("again: %+v, %v after %d requests; want skipped at the destination", res, err, s.requests.Load())
			}
			if !tc.cache {
				return
			}
			req.Dest = "pkg2"
			res, err = f.Fetch(t.Context(), req, nil)
			if err != nil || res.Source != SourceCache || res.Extracted != goodExtracted || s.requests.Load() != 1 {
				t.Fatalf("into pkg2: %+v, %v after %d requests; want it from the cache", res, err, s.requests.Load())
			}
			checkGood(t, filepath.Join(dir, "pkg2"), sum(tc.data))

			// A corrupt blob is not an archive error: the network has the content.
			if err := os.WriteFile(filepath.Join(cache, sum(tc.data)), []byte("garbage, not a tarball"), 0o644); err != nil {
				t.Fatal(err)
			}
			req.Dest = "pkg3"
			res, err = f.Fetch(t.Context(), req, nil)
			if err != nil || res.Source != SourceNetwork || s.requests.Load() != 2 {
				t.Fatalf("into pkg3 past a corrupt blob: %+v, %v after %d requests", res, err, s.requests.Load())
			}
			checkGood(t, filepath.Join(dir, "pkg3"), sum(tc.data))
		})
	}
}

// TestFetchExtractSymlinkChains checks that targets are stored clean, so
// that a chain of symlinks cannot climb out.
func TestFetchExtractSymlinkChains(t *testing.T) {
	data := makeTar(t, []entry{
		{name: "a", typ: tar.TypeSymlink, link: "."},
		{name: "b", typ: tar.TypeSymlink, link: "a/.."}, // through a, ".." of the top
		{name: "c", typ: tar.TypeSymlink, link: "x/../a/./"},
	})
	s := newServer(t, data, nil)
	root, dir := newRoot(t)
	f, _ := newFetcher(t, false, Options{})
	if _, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "pkg", Extract: true}, nil); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"a": ".", "b": ".", "c": "a"} {
		if got, _ := os.Readlink(filepath.Join(dir, "pkg", name)); got != want {
			t.Errorf("%s -> %q, want %q", name, got, want)
		}
	}
}

func TestFetchExtractRefused(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	for _, tc := range []struct {
		name    string
		entries []entry
		data    []byte // instead of entries
		why     string // in the message
	}{
		{name: "dotdot", why: `".."`, entries: []entry{
			{name: "ok.txt", typ: tar.TypeReg, body: "fine", mode: 0o644},
			{name: "../x", typ: tar.TypeReg, body: "evil", mode: 0o644}}},
		{name: "dotdot inside", why: `".."`, entries: []entry{
			{name: "a/../../x", typ: tar.TypeReg, body: "evil", mode: 0o644}}},
		{name: "absolute", why: "absolute", entries: []entry{
			{name: filepath.Join(outside, "x"), typ: tar.TypeReg, body: "evil", mode: 0o644}}},
		{name: "symlink out, then through it", why: "leading out", entries: []entry{
			{name: "link", typ: tar.TypeSymlink, link: "../../outside"},
			{name: "link/evil", typ: tar.TypeReg, body: "evil", mode: 0o644}}},
		{name: "symlink out from a subdirectory", why: "leading out", entries: []entry{
			{name: "a/b/link", typ: tar.TypeSymlink, link: "../../.."}}},
		{name: "absolute symlink", why: "absolute", entries: []entry{
			{name: "link", typ: tar.TypeSymlink, link: outside},
			{name: "link/evil", typ: tar.TypeReg, body: "evil", mode: 0o644}}},
		{name: "through an inside symlink", why: "passes through", entries: []entry{
			{name: "up", typ: tar.TypeSymlink, link: "."},
			{name: "up/l", typ: tar.TypeSymlink, link: ".."},
			{name: "l/evil", typ: tar.TypeReg, body: "evil", mode: 0o644}}},
		{name: "hard link out", why: `".."`, entries: []entry{
			{name: "h", typ: tar.TypeLink, link: "../outside/x"}}},
		{name: "hard link to a directory", why: "not a regular file", entries: []entry{
			{name: "d/", typ: tar.TypeDir, mode: 0o755},
			{name: "h", typ: tar.TypeLink, link: "d"}}},
		{name: "hard link to a symlink", why: "not a regular file", entries: []entry{
			{name: "s", typ: tar.TypeSymlink, link: "."},
			{name: "h", typ: tar.TypeLink, link: "s"}}},
		{name: "file replaces a directory", why: "replace a directory", entries: []entry{
			{name: "d/f", typ: tar.TypeReg, body: "x", mode: 0o644},
			{name: "d", typ: tar.TypeSymlink, link: "."}}},
		{name: "not an archive", why: "not a valid tar", data: content(20, 4096)},
		{name: "bad gzip", why: "not a valid tar", data: append([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3}, content(21, 100)...)},
		{name: "truncated", why: "", data: makeTar(t, []entry{{name: "big", typ: tar.TypeReg, body: strings.Repeat("x", 5000), mode: 0o644}})[:3000]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.MkdirAll(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			rootDir := filepath.Join(base, "root", tc.name)
			for _, d := range []string{"sib", "pkg"} {
				if err := os.MkdirAll(filepath.Join(rootDir, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(rootDir, "pkg/keep.txt"), []byte("keep"), 0o644); err != nil {
				t.Fatal(err)
			}
			root, err := os.OpenRoot(rootDir)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			data := tc.data
			if data == nil {
				data = makeTar(t, tc.entries)
			}
			s := newServer(t, data, nil)
			f, _ := newFetcher(t, true, Options{})
			res, err := f.Fetch(t.Context(), Request{URL: s.url(), SHA256: sum(data), Root: root, Dest: "pkg", Extract: true}, nil)
			wantReason(t, err, proto.ReasonInvalidParams)
			var pe *proto.Error
			if !errors.As(err, &pe) || pe.Data.Fields[0].Field != "url" || pe.Data.Fields[0].Rule != "archive" {
				t.Errorf("error %v: want field url, rule archive", err)
			}
			if !strings.Contains(err.Error(), tc.why) {
				t.Errorf("error %q should say %q", err, tc.why)
			}
			if res.Extracted != 0 || s.requests.Load() != 1 {
				t.Errorf("result %+v after %d requests", res, s.requests.Load())
			}
			if got := dirNames(t, outside); len(got) != 0 {
				t.Errorf("wrote %v outside the root", got)
			}
			if got := dirNames(t, filepath.Join(rootDir, "sib")); len(got) != 0 {
				t.Errorf("wrote %v into a sibling directory", got)
			}
			if got := dirNames(t, rootDir); !slices.Equal(got, []string{"pkg", "sib"}) {
				t.Errorf("root holds %v: leftovers", got)
			}
			if got := dirNames(t, filepath.Join(rootDir, "pkg")); !slices.Equal(got, []string{"keep.txt"}) {
				t.Errorf("pkg holds %v: the destination was touched", got)
			}
		})
	}
}

// TestExtractReadOnlyDirs checks that directories an archive makes
// read-only still take their entries, and that replacing such a tree works.
func TestExtractReadOnlyDirs(t *testing.T) {
	data := makeTar(t, []entry{
		{name: "ro/", typ: tar.TypeDir, mode: 0o555},
		{name: "ro/inner/", typ: tar.TypeDir, mode: 0o500},
		{name: "ro/inner/f", typ: tar.TypeReg, body: "x", mode: 0o444},
	})
	root, dir := newRoot(t)
	for range 2 {
		tmp, n, err := stageExtract(t.Context(), root, "pkg", bytes.NewReader(data), sum(data), (&Request{}).bounds().unpack, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if n != 3 {
			t.Errorf("%d entries, want 3", n)
		}
		if err := commitDir(root, tmp, "pkg", testLogger(t)); err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(filepath.Join(dir, "pkg/ro/inner")); err != nil || st.Mode().Perm() != 0o500 {
			t.Errorf("ro/inner: %v, %v", st, err)
		}
	}
	if got := dirNames(t, dir); !slices.Equal(got, []string{"pkg"}) {
		t.Errorf("root holds %v: the replaced tree was left behind", got)
	}
	t.Cleanup(func() { makeWritable(root, "pkg", 0) })
}
