package service

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTreeThroughService: push -r and pull -r through the service: a
// local tree goes to the board as the direct transfer takes it (files,
// a symlink to a file as the file, a symlink to a directory left out,
// modes kept), a second push sends nothing the board holds, and the tree
// pulled back is the same. A hostile tar (a name leaving the tree, an
// absolute one, a symlink, a file without its sha256) is refused, and
// nothing of it lands outside the destination.
func TestTreeThroughService(t *testing.T) {
	o := startOTALab(t, 1, false)
	ctx := context.Background()
	alice := o.clients["alice"]
	sb := o.sim.Boards[0]
	src := filepath.Join(t.TempDir(), "suite")
	files := map[string][]byte{"top.bin": make([]byte, 200<<10), "a/b/c.txt": []byte("deep\n"), "a/run.sh": []byte("#!/bin/sh\n")}
	rand.Read(files["top.bin"])
	for name, data := range files {
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(src, "a/run.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(src, "a/b/c.txt"), time.Time{}, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("top.bin", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a", filepath.Join(src, "dirlink")); err != nil {
		t.Fatal(err)
	}
	files["link"] = files["top.bin"]

	var skipped []string
	res, err := alice.PushTree(ctx, sb.ID, "", src, TreePushRequest{Path: sb.Dir(), Name: "suite"},
		func(p, why string) { skipped = append(skipped, filepath.Base(p)+": "+why) })
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Files) != len(files) || len(skipped) != 1 || !strings.HasPrefix(skipped[0], "dirlink: ") {
		t.Fatalf("pushed %+v, skipped %v", res.Files, skipped)
	}
	onBoard := filepath.Join(sb.Dir(), "suite")
	for name, data := range files {
		if got, err := os.ReadFile(filepath.Join(onBoard, filepath.FromSlash(name))); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s on the board: %d bytes, %v", name, len(got), err)
		}
	}
	if st, err := os.Stat(filepath.Join(onBoard, "a/run.sh")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("a/run.sh on the board: %v %v", st.Mode(), err)
	}
	if st, err := os.Stat(filepath.Join(onBoard, "a/b/c.txt")); err != nil || !st.ModTime().Equal(mtime) {
		t.Errorf("a/b/c.txt's mtime on the board: %v %v", st.ModTime(), err)
	}
	// Again: the board holds every file already, nothing moves.
	res, err = alice.PushTree(ctx, sb.ID, "", src, TreePushRequest{Path: sb.Dir(), Name: "suite"}, func(string, string) {})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range res.Files {
		if !f.Same || f.Result.Bytes != 0 {
			t.Errorf("pushed again: %+v", f)
		}
	}

	back := filepath.Join(t.TempDir(), "back")
	var pulled []string
	if err := alice.PullTree(ctx, sb.ID, "", onBoard, back, func(f TreeFile) { pulled = append(pulled, f.Name) }); err != nil {
		t.Fatal(err)
	}
	if len(pulled) != len(files) {
		t.Fatalf("pulled %v", pulled)
	}
	for name, data := range files {
		if got, err := os.ReadFile(filepath.Join(back, filepath.FromSlash(name))); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s pulled: %d bytes, %v", name, len(got), err)
		}
	}
	if st, err := os.Stat(filepath.Join(back, "a/run.sh")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("a/run.sh pulled: %v %v", st.Mode(), err)
	}
	if st, err := os.Stat(filepath.Join(back, "a/b/c.txt")); err != nil || !st.ModTime().Equal(mtime) {
		t.Errorf("a/b/c.txt's mtime pulled: %v %v", st.ModTime(), err)
	}
	var ae *APIError
	if err := alice.PullTree(ctx, sb.ID, "", path.Join(onBoard, "top.bin"), back, func(TreeFile) {}); !errors.As(err, &ae) ||
		ae.Status != http.StatusBadRequest || len(ae.Fields) != 1 || ae.Fields[0].Rule != "dir" {
		t.Fatalf("pull -r of a file: %v", err)
	}

	// Hostile trees.
	sum := strings.Repeat("ab", 32)
	for name, h := range map[string]*tar.Header{
		"a name leaving the tree": {Typeflag: tar.TypeReg, Name: "../escaped", Size: 1, PAXRecords: map[string]string{TreeSHA256: sum}},
		"a name inside then out":  {Typeflag: tar.TypeReg, Name: "a/../../escaped", Size: 1, PAXRecords: map[string]string{TreeSHA256: sum}},
		"an absolute name":        {Typeflag: tar.TypeReg, Name: "/escaped", Size: 1, PAXRecords: map[string]string{TreeSHA256: sum}},
		"a symlink":               {Typeflag: tar.TypeSymlink, Name: "escaped", Linkname: "/etc/passwd"},
		"a file without sha256":   {Typeflag: tar.TypeReg, Name: "escaped", Size: 1},
	} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("x"))
		}
		tw.Close()
		resp, err := alice.uploadFrom(ctx, boardPath(sb.ID, "files/tree"), "", TreePushRequest{Path: path.Join(sb.Dir(), "hostile")}, "t.tar", &buf, int64(buf.Len()))
		if err == nil {
			var r TreePushResult
			json.NewDecoder(resp.Body).Decode(&r)
			resp.Body.Close()
			t.Errorf("%s: taken: %+v", name, r)
			continue
		}
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
			t.Errorf("%s: %v, want a 400", name, err)
		}
	}
	for _, p := range []string{filepath.Join(sb.Dir(), "escaped"), filepath.Join(filepath.Dir(sb.Dir()), "escaped"), filepath.Join(sb.Dir(), "hostile")} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// TestTreeName: the names a tree may hold, at both ends.
func TestTreeName(t *testing.T) {
	for name, ok := range map[string]bool{
		"a": true, "a/b/c.txt": true, "dir/": true, ".hidden": true, "a..b": true,
		"": false, "/": false, "..": false, "../x": false, "a/../../x": false, "a/../b": false, "/etc/passwd": false,
		"./a": false, "a//b": false, "a/./b": false, "a\x00b": false, strings.Repeat("x", 256): false,
		strings.Repeat("a/", 2049): false,
	} {
		if _, err := treeName(name); (err == nil) != ok {
			t.Errorf("treeName(%q): %v, want ok %v", name, err, ok)
		}
	}
}

// FuzzTreeName: a name treeName takes never leaves the tree.
func FuzzTreeName(f *testing.F) {
	for _, s := range []string{"a/b", "../x", "a/../../x", "/abs", "a//b", "dir/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		n, err := treeName(name)
		if err != nil {
			return
		}
		root := "/dest/root"
		if p := path.Join(root, n); !strings.HasPrefix(p, root+"/") {
			t.Fatalf("%q lands at %s", name, p)
		}
	})
}
