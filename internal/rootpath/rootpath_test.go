package rootpath

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/proto"
)

// TestErrorMapping makes each error for real, through an os.Root as the
// agent does, and checks what the caller is told.
func TestErrorMapping(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"adir"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "afile"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("loop", filepath.Join(dir, "loop")); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	stat := func(name string) func() error {
		return func() error { _, err := root.Stat(name); return err }
	}
	for _, tc := range []struct {
		name   string
		op     func() error
		reason proto.Reason
		rule   string // on field "path", for invalid_params
	}{
		{"missing", stat("nope"), proto.ReasonNotFound, ""},
		{"escape", stat("../x"), proto.ReasonInvalidParams, "root"},
		{"name too long", stat(strings.Repeat("n", 300)), proto.ReasonInvalidParams, "name_too_long"},
		{"through a file", stat("afile/x"), proto.ReasonInvalidParams, "dir"},
		{"symlink loop", stat("loop"), proto.ReasonInvalidParams, "symlink"},
		{"exists", func() error { return root.Mkdir("afile", 0o755) }, proto.ReasonInvalidParams, "exists"},
		{"mkdir through a file", func() error { return root.MkdirAll("afile/x", 0o755) }, proto.ReasonInvalidParams, "dir"},
		{"write a directory", func() error {
			f, err := root.OpenFile("adir", os.O_WRONLY, 0)
			if err == nil {
				f.Close()
			}
			return err
		}, proto.ReasonInvalidParams, "file"},
		{"disk full", func() error {
			f, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
			if err != nil {
				t.Skipf("no /dev/full: %v", err)
			}
			defer f.Close()
			_, err = f.Write([]byte("x"))
			return err
		}, proto.ReasonNoSpace, ""},
		{"other", func() error { return errors.New("boom") }, proto.ReasonInternal, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cause := tc.op()
			if cause == nil {
				t.Fatal("the operation succeeded")
			}
			err := Error("/data/x", cause)
			if got := proto.ReasonOf(err); got != tc.reason {
				t.Fatalf("%v: reason %q, want %q", err, got, tc.reason)
			}
			if !errors.Is(err, cause) {
				t.Errorf("%v does not wrap its cause", err)
			}
			if !strings.Contains(err.Error(), "/data/x") {
				t.Errorf("%q does not name the path", err)
			}
			if tc.rule == "" {
				return
			}
			var pe *proto.Error
			if !errors.As(err, &pe) || len(pe.Data.Fields) != 1 || pe.Data.Fields[0].Field != "path" || pe.Data.Fields[0].Rule != tc.rule {
				t.Errorf("%v: want invalid params on path, rule %s", err, tc.rule)
			}
		})
	}
}

// TestFaultArgumentTooLong: E2BIG arises where an argument list is too
// long for the kernel (execve: one string over 128 KiB, or argv and
// environment over ARG_MAX); it is the caller's fault.
func TestFaultArgumentTooLong(t *testing.T) {
	err := exec.Command("/bin/true", strings.Repeat("x", 200<<10)).Run()
	if err == nil {
		t.Skip("the kernel took a 200 KiB argument")
	}
	if rule, ok := Fault(err); !ok || rule != "too_long" {
		t.Fatalf("Fault(%v) = %q, %v; want too_long", err, rule, ok)
	}
}

// TestCheckRoom: rooms on one file system add up; a need beyond the free
// space is no_space.
func TestCheckRoom(t *testing.T) {
	d, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	free, ok, err := Free(d)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Skip("free space is not known on this system")
	}
	half := free/2 + 1
	if err := CheckRoom(Room{File: d, Bytes: half}); err != nil {
		t.Fatalf("half the free space: %v", err)
	}
	err = CheckRoom(Room{File: d, Bytes: half}, Room{File: d, Bytes: half})
	if !proto.IsReason(err, proto.ReasonNoSpace) || !strings.Contains(err.Error(), d.Name()) {
		t.Fatalf("twice half the free space on one file system: %v, want no_space naming %s", err, d.Name())
	}
	if err := CheckRoom(Room{File: d, Bytes: 1 << 60}); !proto.IsReason(err, proto.ReasonNoSpace) {
		t.Fatalf("an exabyte: %v, want no_space", err)
	}
}

// TestEnsureParent: a missing parent is not_found unless parents are
// asked for, a file as parent and a way out of the root are the caller's
// fault, and every answer names the request's path.
func TestEnsureParent(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "afile"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(t.TempDir(), filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, tc := range []struct {
		rel     string
		parents bool
		reason  proto.Reason
		rule    string
	}{
		{"top", false, "", ""},
		{"a/b/c", false, proto.ReasonNotFound, ""},
		{"a/b/c", true, "", ""},
		{"a/b/d", false, "", ""}, // made by the one before
		{"afile/x", false, proto.ReasonInvalidParams, "dir"},
		{"afile/x/y", true, proto.ReasonInvalidParams, "dir"},
		{"out/x", false, proto.ReasonInvalidParams, "root"},
		{"out/x/y", true, proto.ReasonInvalidParams, "root"},
	} {
		err := EnsureParent(root, "/data/"+tc.rel, tc.rel, tc.parents)
		if got := proto.ReasonOf(err); got != tc.reason {
			t.Errorf("%s (parents %v): %v; want reason %q", tc.rel, tc.parents, err, tc.reason)
			continue
		}
		if err == nil {
			if st, serr := root.Stat(filepath.Dir(tc.rel)); serr != nil || !st.IsDir() {
				t.Errorf("%s (parents %v): no error, and no parent directory: %v", tc.rel, tc.parents, serr)
			}
			continue
		}
		if !strings.Contains(err.Error(), "/data/"+tc.rel) {
			t.Errorf("%q does not name the path", err)
		}
		var pe *proto.Error
		if tc.rule != "" && (!errors.As(err, &pe) || len(pe.Data.Fields) != 1 || pe.Data.Fields[0].Field != "path" || pe.Data.Fields[0].Rule != tc.rule) {
			t.Errorf("%s: %v; want invalid params on path, rule %s", tc.rel, err, tc.rule)
		}
	}
}

// TestSyncDir: a directory syncs; a failure is the agent's own (internal),
// not the caller's.
func TestSyncDir(t *testing.T) {
	root, err := os.OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if err := root.Mkdir("d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := SyncDir(root, "d"); err != nil {
		t.Fatal(err)
	}
	if err := SyncDir(root, "gone"); !proto.IsReason(err, proto.ReasonInternal) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("SyncDir of a missing directory: %v; want internal, wrapping its cause", err)
	}
}
