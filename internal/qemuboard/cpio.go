package qemuboard

import (
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
)

// cpioWriter writes the "newc" cpio format the kernel unpacks into its
// initramfs. Every entry belongs to root, whoever builds the archive, so
// that no privileges are needed to make device nodes or root's files.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error
}

// Kinds of entries, as the mode's file type bits.
const (
	cpioDir     = 0o040000
	cpioFile    = 0o100000
	cpioSymlink = 0o120000
	cpioChar    = 0o020000
)

func (c *cpioWriter) entry(name string, mode uint32, data []byte, rmajor, rminor uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	name = strings.TrimPrefix(name, "/")
	nlink := 1
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad(len(hdr) + len(name) + 1)
	c.write(data)
	c.pad(len(data))
}

func (c *cpioWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *cpioWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// Close writes the trailer and returns the first error.
func (c *cpioWriter) Close() error {
	c.entry("TRAILER!!!", 0, nil, 0, 0)
	return c.err
}

// tree collects an initramfs's entries before they are written, so that
// every parent directory is made once and before its children.
type tree struct {
	dirs  map[string]bool
	files map[string]treeFile
}

type treeFile struct {
	perm   fs.FileMode
	data   []byte
	link   string
	device bool
	major  uint32
	minor  uint32
}

func newTree() *tree { return &tree{dirs: map[string]bool{}, files: map[string]treeFile{}} }

func (t *tree) mkdirAll(dir string) {
	for dir != "/" && dir != "." && dir != "" {
		t.dirs[dir] = true
		dir = dir[:max(strings.LastIndex(dir, "/"), 0)]
	}
}

func (t *tree) add(name string, f treeFile) {
	t.mkdirAll(name[:strings.LastIndex(name, "/")])
	t.files[name] = f
}

func (t *tree) File(name string, perm fs.FileMode, data []byte) {
	t.add(name, treeFile{perm: perm, data: data})
}
func (t *tree) Symlink(name, target string) { t.add(name, treeFile{link: target}) }
func (t *tree) Char(name string, major, minor uint32) {
	t.add(name, treeFile{device: true, major: major, minor: minor})
}

// writeCPIO writes the tree as a cpio archive, sorted by name (so the same
// content gives the same bytes).
func (t *tree) writeCPIO(w io.Writer) error {
	c := &cpioWriter{w: w}
	dirs := make([]string, 0, len(t.dirs))
	for d := range t.dirs {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs) // a parent sorts before its children
	for _, d := range dirs {
		c.entry(d, cpioDir|0o755, nil, 0, 0)
	}
	names := make([]string, 0, len(t.files))
	for n := range t.files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f := t.files[n]
		switch {
		case f.device:
			c.entry(n, cpioChar|0o600, nil, f.major, f.minor)
		case f.link != "":
			c.entry(n, cpioSymlink|0o777, []byte(f.link), 0, 0)
		default:
			c.entry(n, cpioFile|uint32(f.perm.Perm()), f.data, 0, 0)
		}
	}
	return c.Close()
}
