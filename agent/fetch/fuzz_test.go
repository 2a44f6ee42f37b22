package fetch

import (
	"archive/tar"
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/boardlink/boardlink/proto"
)

// FuzzExtract unpacks arbitrary bytes: it must not panic, must answer with
// a tree or an invalid_params error, must write nothing outside the
// extraction directory, must leave no symlink there that resolves outside
// it, and must stay within the unpack limits.
//
//	go test -run '^$' -fuzz FuzzExtract -fuzztime 30s ./agent/fetch
//
// Go's fuzzer minimizes each input that reaches new code for up to
// -fuzzminimizetime (60s by default), showing "0/sec" meanwhile; add
// -fuzzminimizetime 100x for more inputs in a short run.
func FuzzExtract(f *testing.F) {
	// Seeds are kept small, as minimizing costs time in proportion to the
	// square of an input's size. A tar stream may end without its two
	// zero blocks.
	f.Add(gzipped(f, makeTar(f, goodEntries())))
	if bz, err := os.ReadFile(filepath.Join("testdata", "good.tar.bz2")); err == nil {
		f.Add(bz)
	}
	f.Add([]byte{})
	for _, es := range [][]entry{
		{{name: "d/", typ: tar.TypeDir, mode: 0o755}, {name: "d/f", typ: tar.TypeReg, body: "x", mode: 0o644},
			{name: "s", typ: tar.TypeSymlink, link: "d/f"}, {name: "h", typ: tar.TypeLink, link: "d/f"}},
		{{name: "../x", typ: tar.TypeReg, body: "evil"}},
		{{name: "/tmp/x", typ: tar.TypeReg, body: "evil"}},
		{{name: "link", typ: tar.TypeSymlink, link: "../../outside"}, {name: "link/evil", typ: tar.TypeReg, body: "evil"}},
		{{name: "a", typ: tar.TypeSymlink, link: "."}, {name: "b", typ: tar.TypeSymlink, link: "a/../.."}},
		{{name: "d/f", typ: tar.TypeReg, body: "x", mode: 0o644}, {name: "h", typ: tar.TypeLink, link: "d/f"}, {name: "d/", typ: tar.TypeDir, mode: 0}},
		{{name: "l", typ: tar.TypeSymlink, link: "sub"}, {name: "l", typ: tar.TypeReg, body: "replaced"}},
	} {
		b := makeTar(f, es)
		f.Add(b[:len(b)-1024])
	}
	// Bombs, beyond the sandbox's limits: zeros by the megabyte, and a
	// sparse terabyte; and a sparse file within them.
	f.Add(gzipped(f, makeTar(f, []entry{{name: "bomb", typ: tar.TypeReg, body: string(make([]byte, 2*fuzzUnpack.bytes)), mode: 0o644}})))
	f.Add(gzipped(f, sparseTar("sparse", 1<<40, []byte("x"))))
	f.Add(gzipped(f, sparseTar("sparse", fuzzUnpack.bytes/2, []byte("x"))))
	box := newSandbox(f)
	f.Fuzz(func(t *testing.T, data []byte) { box.extract(t, data) })
}

// FuzzTarEntries builds archives from a compact description (see
// decodeEntries), so that the fuzzer spends its time on names, links and
// their order rather than on tar checksums.
//
//	go test -run '^$' -fuzz FuzzTarEntries -fuzztime 30s ./agent/fetch
func FuzzTarEntries(f *testing.F) {
	reg, dir, sym, hard := 0, 1, 2, 3
	for _, seed := range [][]byte{
		encodeEntry(sym, "l", ".."), // refused
		append(encodeEntry(sym, "a", "."), encodeEntry(sym, "b", "a / ..")...),
		append(append(encodeEntry(dir, "a", ""), encodeEntry(reg, "a / b", "")...), encodeEntry(hard, "l", "a / b")...),
		append(encodeEntry(sym, "l", "sub"), encodeEntry(reg, "l / b", "")...),
		append(encodeEntry(sym, "sub", "."), encodeEntry(sym, "sub / l", "..")...),
	} {
		f.Add(seed)
	}
	box := newSandbox(f)
	f.Fuzz(func(t *testing.T, spec []byte) {
		es := decodeEntries(spec)
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range es {
			hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body))}
			if tw.WriteHeader(hdr) != nil {
				return // not expressible as tar
			}
			_, _ = tw.Write([]byte(e.body))
		}
		if tw.Close() != nil {
			return
		}
		box.extract(t, buf.Bytes())
	})
}

// nameTokens are what decodeEntries builds names and link targets from.
var nameTokens = []string{"a", "/", "..", ".", "b", "/x", "sub", "l"}

// entryTypes are the tar types decodeEntries picks from.
var entryTypes = []byte{tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo}

// encodeEntry is the spec of one entry for decodeEntries, of type
// entryTypes[typ], with name and link given as space-separated tokens.
func encodeEntry(typ int, name, link string) []byte {
	tok := func(s string) []byte {
		var b []byte
		for _, t := range strings.Fields(s) {
			// Plus len: never the separator, 0.
			b = append(b, byte(slices.Index(nameTokens, t)+len(nameTokens)))
		}
		return b
	}
	b := append([]byte{byte(typ + len(entryTypes))}, 0)
	b = append(append(b, tok(name)...), 0)
	return append(append(b, tok(link)...), 0)
}

// decodeEntries reads spec as fields separated by 0 bytes, three to an
// entry: [type, mode], name, link target. Type is one of regular file,
// directory, symlink, hard link or fifo; name and target bytes each pick a
// token of nameTokens.
func decodeEntries(spec []byte) []entry {
	fields := bytes.Split(spec, []byte{0})
	detok := func(b []byte) string {
		var s strings.Builder
		for _, c := range b {
			s.WriteString(nameTokens[int(c)%len(nameTokens)])
		}
		return s.String()
	}
	var es []entry
	for i := 0; i+1 < len(fields) && len(es) < 64; i += 3 {
		e := entry{typ: tar.TypeReg, mode: 0o644, name: detok(fields[i+1])}
		if h := fields[i]; len(h) > 0 {
			e.typ = entryTypes[int(h[0])%len(entryTypes)]
			if len(h) > 1 {
				e.mode = int64(h[1]) << 1 // 0..0o776
			}
		}
		if i+2 < len(fields) {
			e.link = detok(fields[i+2])
		}
		if e.typ == tar.TypeReg {
			e.body = "x"
		}
		es = append(es, e)
	}
	return es
}

// fuzzUnpack are the sandbox's unpack limits: small, so that bombs hit them.
var fuzzUnpack = unpackLimits{bytes: 1 << 20, entries: 256}

// sandbox is a file root with an empty sibling of the extraction directory
// inside it and an empty directory outside it, reused across a fuzz
// worker's inputs (each leaves it as it found it) so that an input costs
// little more than its own extraction.
type sandbox struct {
	root                  *os.Root
	rootDir, sib, outside string
	log                   *slog.Logger
}

func newSandbox(f *testing.F) *sandbox {
	base := f.TempDir()
	b := &sandbox{rootDir: filepath.Join(base, "root"), outside: filepath.Join(base, "outside"),
		log: slog.New(slog.DiscardHandler)}
	b.sib = filepath.Join(b.rootDir, "sib")
	for _, d := range []string{b.sib, b.outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			f.Fatal(err)
		}
	}
	root, err := os.OpenRoot(b.rootDir)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		makeWritable(root, ".", 0)
		root.Close()
	})
	b.root = root
	return b
}

// extract unpacks data into "pkg" and checks that nothing escaped.
func (b *sandbox) extract(t *testing.T, data []byte) {
	defer func() { _ = removeTree(b.root, "pkg") }()
	tmp, _, err := stageExtract(t.Context(), b.root, "pkg", bytes.NewReader(data), sum(data), fuzzUnpack, b.log)
	if err == nil {
		err = commitDir(b.root, tmp, "pkg", b.log)
	}
	if err != nil && proto.ReasonOf(err) != proto.ReasonInvalidParams {
		t.Fatalf("error %v: reason %q, want invalid_params", err, proto.ReasonOf(err))
	}
	for _, d := range []string{b.outside, b.sib} {
		if ents, _ := os.ReadDir(d); len(ents) != 0 {
			t.Fatalf("wrote into %s", d)
		}
	}
	want := "sib"
	if err == nil {
		want = "pkg sib"
	}
	if got := strings.Join(dirNames(t, b.rootDir), " "); got != want {
		t.Fatalf("root holds %q, want %q", got, want)
	}
	if err != nil {
		return
	}
	pkg := filepath.Join(b.rootDir, "pkg")
	makeWritable(b.root, "pkg", 0) // to walk directories an archive closed
	// Generous (file systems round up and keep metadata), yet far below
	// what a bomb would take.
	if used := diskUsage(t, pkg); used > 2*(fuzzUnpack.bytes+int64(fuzzUnpack.entries+2)*holeBlock) {
		t.Fatalf("the tree takes %d bytes on disk, beyond the unpack limits", used)
	}
	_ = filepath.WalkDir(pkg, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		target, err := os.Readlink(p)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.IsAbs(target) || !inside(pkg, filepath.Join(filepath.Dir(p), target)) {
			t.Fatalf("%s -> %s leads out", p, target)
		}
		real, err := filepath.EvalSymlinks(p)
		if err == nil && !inside(pkg, real) {
			t.Fatalf("%s resolves to %s, outside", p, real)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) && !strings.Contains(err.Error(), "too many links") &&
			!strings.Contains(err.Error(), "not a directory") {
			t.Fatalf("%s: %v", p, err)
		}
		return nil
	})
}

// diskUsage is the disk space the tree at dir takes, its holes not counted.
func diskUsage(t *testing.T, dir string) int64 {
	var used int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		used += info.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return used
}

func inside(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
