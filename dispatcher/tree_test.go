package dispatcher_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
)

// TestTreeRoundTrip: a directory goes to the board and comes back with
// every file's bytes, mode and mtime, and the directories' too; what is
// neither a file nor a directory is left out and said so; run again,
// nothing moves.
func TestTreeRoundTrip(t *testing.T) {
	b := startBoard(t, agent.Config{})
	c := dial(t, b.ws.URL())
	ctx := context.Background()
	src := t.TempDir()
	old := time.Date(2023, 3, 4, 5, 6, 7, 0, time.UTC)
	files := map[string]os.FileMode{"top.txt": 0o644, "a/b/deep.bin": 0o600, "a/run.sh": 0o755}
	for name, mode := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		data := make([]byte, 64<<10+len(name))
		rand.Read(data)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(src, "a"), filepath.Join(src, "link-to-a")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(src, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	remote := filepath.Join(b.dir, "tree")
	var (
		mu      sync.Mutex
		moved   []string
		same    int
		skipped []string
	)
	opts := dispatcher.TreeOptions{
		Done: func(f dispatcher.TreeFile) {
			mu.Lock()
			defer mu.Unlock()
			if f.Same {
				same++
			} else {
				moved = append(moved, f.To)
			}
		},
		Skip: func(p, why string) { skipped = append(skipped, filepath.Base(p)) },
	}
	if err := c.PushTree(ctx, src, remote, opts); err != nil {
		t.Fatal(err)
	}
	if len(moved) != 3 || len(skipped) != 2 {
		t.Fatalf("pushed %v, skipped %v", moved, skipped)
	}
	sameTree(t, src, remote, files)
	moved, same = nil, 0
	if err := c.PushTree(ctx, src, remote, opts); err != nil || len(moved) != 0 || same != 3 {
		t.Fatalf("pushed again: moved %v, %d the same, %v", moved, same, err)
	}

	back := filepath.Join(t.TempDir(), "back")
	moved, same = nil, 0
	if err := c.PullTree(ctx, remote, back, opts); err != nil || len(moved) != 3 {
		t.Fatalf("pulled %v: %v", moved, err)
	}
	sameTree(t, src, back, files)
	// A pushed directory is made by the board, now; a pulled one keeps
	// the board's mode and mtime.
	onBoard, _ := os.Stat(filepath.Join(remote, "a", "b"))
	if st, err := os.Stat(filepath.Join(back, "a", "b")); err != nil || !st.ModTime().Equal(onBoard.ModTime()) || st.Mode() != onBoard.Mode() {
		t.Fatalf("a/b: %v %v %v, want %v %v", st.Mode(), st.ModTime(), err, onBoard.Mode(), onBoard.ModTime())
	}
	moved, same = nil, 0
	if err := c.PullTree(ctx, remote, back, opts); err != nil || len(moved) != 0 || same != 3 {
		t.Fatalf("pulled again: moved %v, %d the same, %v", moved, same, err)
	}
	if err := c.PullTree(ctx, filepath.Join(remote, "top.txt"), back, opts); err == nil {
		t.Fatal("pulled a file as a tree")
	}
}

// sameTree checks that dir holds the files of src, with their bytes,
// modes and mtimes.
func sameTree(t *testing.T, src, dir string, files map[string]os.FileMode) {
	t.Helper()
	for name, mode := range files {
		want, _ := os.ReadFile(filepath.Join(src, name))
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes (%v), want %d", name, len(got), err, len(want))
		}
		ws, _ := os.Stat(filepath.Join(src, name))
		gs, _ := os.Stat(filepath.Join(dir, name))
		if gs.Mode().Perm() != mode || !gs.ModTime().Equal(ws.ModTime()) {
			t.Fatalf("%s: mode %v mtime %v, want %v %v", name, gs.Mode(), gs.ModTime(), mode, ws.ModTime())
		}
	}
}

// TestTransferCanceled: canceling a push or a pull stops it where it is:
// the file is not installed, the bytes that arrived are kept, and the
// next transfer resumes after them.
func TestTransferCanceled(t *testing.T) {
	b := startBoard(t, agent.Config{})
	c := dial(t, b.ws.URL())
	const size = 64 << 20
	local, data := randomFile(t, t.TempDir(), size)
	// cancelAt is a transfer whose context ends once a MiB has crossed
	// and held says the far end holds some of it: bytes still in the
	// stream's window when the cancel's reset comes are dropped, and a
	// starved board may have read none.
	cancelAt := func(held func() bool) (context.Context, dispatcher.TransferOptions) {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		return ctx, dispatcher.TransferOptions{Progress: func(done, _ int64) {
			if done < 1<<20 {
				return
			}
			// The sender waits here; a file's size has no event to wait on.
			for deadline := time.Now().Add(time.Minute); !held() && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
		}}
	}

	remote := filepath.Join(b.dir, "pushed.bin")
	partial := func() (int64, error) {
		parts, _ := filepath.Glob(filepath.Join(b.dir, ".pushed.bin.*.boardlink-partial"))
		if len(parts) != 1 {
			return 0, fmt.Errorf("%d partial files", len(parts))
		}
		st, err := os.Stat(parts[0])
		if err != nil {
			return 0, err
		}
		return st.Size(), nil
	}
	ctx, opts := cancelAt(func() bool { n, _ := partial(); return n > 0 })
	if _, err := c.Push(ctx, local, remote, opts); !errors.Is(err, context.Canceled) {
		t.Fatalf("a canceled push: %v", err)
	}
	if _, err := os.Stat(remote); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a canceled push installed its file: %v", err)
	}
	var kept int64
	testenv.Eventually(t, "the board to keep the canceled push's bytes", func() bool {
		n, err := partial()
		kept = n
		return err == nil && kept > 0
	})
	if kept >= size {
		t.Fatalf("the board received all %d bytes of a push canceled at 1 MiB", kept)
	}
	res, err := c.Push(context.Background(), local, remote, dispatcher.TransferOptions{})
	if err != nil || res.Offset == 0 {
		t.Fatalf("the push after: %+v %v, want a resume", res, err)
	}

	pulled := filepath.Join(t.TempDir(), "pulled.bin")
	ctx, opts = cancelAt(func() bool {
		st, err := os.Stat(dispatcher.PartialPath(pulled))
		return err == nil && st.Size() > 0
	})
	if _, err := c.Pull(ctx, remote, pulled, opts); !errors.Is(err, context.Canceled) {
		t.Fatalf("a canceled pull: %v", err)
	}
	st, err := os.Stat(dispatcher.PartialPath(pulled))
	if err != nil || st.Size() == 0 || st.Size() >= size {
		t.Fatalf("a pull canceled at 1 MiB kept %v (%v), want some of its %d bytes", st.Size(), err, size)
	}
	if res, err = c.Pull(context.Background(), remote, pulled, dispatcher.TransferOptions{}); err != nil || res.Offset == 0 {
		t.Fatalf("the pull after: %+v %v, want a resume", res, err)
	}
	if got, _ := os.ReadFile(pulled); !bytes.Equal(got, data) {
		t.Fatal("the resumed pull holds other bytes")
	}
}
