package dispatcher_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

func randomFile(t *testing.T, dir string, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	path := filepath.Join(dir, "local.bin")
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
	return path, data
}

func sum(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

// cutPush leaves on the board what a push of data into remote cut after
// prefix would: the push announces all of data but its stream carries
// only prefix, so the board keeps those bytes for a resume.
func cutPush(t *testing.T, c *dispatcher.Client, remote string, data, prefix []byte) {
	t.Helper()
	ctx := context.Background()
	conn := c.Conn()
	s, err := conn.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var started proto.FilePushResult
	err = conn.Call(ctx, proto.MethodFilePush, proto.FilePushParams{Path: remote, Size: int64(len(data)), SHA256: sum(data),
		Stream: s.ID()}, &started)
	if err != nil || started.Offset != 0 {
		t.Fatalf("push: %+v %v", started, err)
	}
	if _, err := s.Write(prefix); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	err = conn.Call(ctx, proto.MethodFileWait, proto.FileWaitParams{ID: started.ID}, nil)
	if !proto.IsReason(err, proto.ReasonInvalidParams) {
		t.Fatalf("a push cut short: %v", err)
	}
}

// TestPushResume: a push resumes after what the board kept of a cut one,
// sending only the rest; when what the board kept is not a prefix of the
// file, the push starts over; either way the file arrives whole, with
// its mode and mtime.
func TestPushResume(t *testing.T) {
	b := startBoard(t, agent.Config{})
	c := dial(t, b.ws.URL())
	ctx := context.Background()
	local, data := randomFile(t, t.TempDir(), 1<<20)
	mtime := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	if err := os.Chtimes(local, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	remote := filepath.Join(b.dir, "sub", "pushed.bin")
	check := func(t *testing.T, res proto.FileResult, wantOffset int64) {
		t.Helper()
		got, err := os.ReadFile(remote)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("the board holds %d bytes (%v), want the file's %d", len(got), err, len(data))
		}
		if res.Offset != wantOffset || res.Bytes != int64(len(data))-wantOffset || res.SHA256 != sum(data) {
			t.Fatalf("result %+v, want offset %d", res, wantOffset)
		}
		st, _ := os.Stat(remote)
		if st.Mode().Perm() != 0o640 || !st.ModTime().Equal(mtime) {
			t.Fatalf("mode %v mtime %v", st.Mode(), st.ModTime())
		}
	}

	if _, err := c.Push(ctx, local, remote, dispatcher.TransferOptions{}); err == nil {
		t.Fatal("pushed into a missing directory without Parents")
	}
	if err := os.MkdirAll(filepath.Dir(remote), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Run("resume", func(t *testing.T) {
		cutPush(t, c, remote, data, data[:300<<10])
		var first int64 = -1
		res, err := c.Push(ctx, local, remote, dispatcher.TransferOptions{Progress: func(done, total int64) {
			if first < 0 {
				first = done
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		check(t, res, 300<<10)
		if first != 300<<10 { // where it starts: the bytes kept, not 0
			t.Fatalf("progress began at %d, not at the %d bytes kept", first, 300<<10)
		}
	})
	t.Run("restart", func(t *testing.T) {
		os.Remove(remote)
		garbage := make([]byte, 300<<10)
		cutPush(t, c, remote, data, garbage)
		res, err := c.Push(ctx, local, remote, dispatcher.TransferOptions{})
		if err != nil {
			t.Fatal(err)
		}
		check(t, res, 0)
	})
	t.Run("parents", func(t *testing.T) {
		remote = filepath.Join(b.dir, "new", "dir", "pushed.bin")
		res, err := c.Push(ctx, local, remote, dispatcher.TransferOptions{Parents: true})
		if err != nil {
			t.Fatal(err)
		}
		check(t, res, 0)
		st, err := c.Stat(ctx, remote, true)
		if err != nil || !st.Exists || st.Size != int64(len(data)) || st.SHA256 != sum(data) {
			t.Fatalf("stat %+v %v", st, err)
		}
	})
	if _, err := c.Push(ctx, t.TempDir(), remote, dispatcher.TransferOptions{}); err == nil {
		t.Fatal("pushed a directory")
	}
	if _, err := c.Push(ctx, filepath.Join(t.TempDir(), "missing"), remote, dispatcher.TransferOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a missing local file: %v", err)
	}
}

// TestPushFromResume: a push from a stream (read once, as an upload
// arrives) resumes after what the board kept of a cut push, reading the
// kept bytes from the stream and sending only the rest; when those bytes
// differ from the board's, the board's part is discarded and the push
// fails with ErrPartialDiffers, after which it goes through whole; a
// stream longer than its size never lands.
func TestPushFromResume(t *testing.T) {
	b := startBoard(t, agent.Config{})
	c := dial(t, b.ws.URL())
	ctx := context.Background()
	data := make([]byte, 1<<20)
	rand.Read(data)
	remote := filepath.Join(b.dir, "streamed.bin")
	p := proto.FilePushParams{Path: remote, Size: int64(len(data)), SHA256: sum(data), Mode: 0o600}
	landed := func(t *testing.T, res proto.FileResult, err error, offset int64) {
		t.Helper()
		got, rerr := os.ReadFile(remote)
		if err != nil || rerr != nil || !bytes.Equal(got, data) || res.Offset != offset || res.Bytes != int64(len(data))-offset {
			t.Fatalf("%+v %v: the board holds %d bytes (%v), want offset %d", res, err, len(got), rerr, offset)
		}
	}

	cutPush(t, c, remote, data, data[:300<<10])
	res, err := c.PushFrom(ctx, bytes.NewReader(data), p, dispatcher.TransferOptions{})
	landed(t, res, err, 300<<10)

	os.Remove(remote)
	cutPush(t, c, remote, data, make([]byte, 300<<10))
	if _, err := c.PushFrom(ctx, bytes.NewReader(data), p, dispatcher.TransferOptions{}); !errors.Is(err, dispatcher.ErrPartialDiffers) {
		t.Fatalf("a stream that differs from the board's part: %v", err)
	}
	res, err = c.PushFrom(ctx, bytes.NewReader(data), p, dispatcher.TransferOptions{})
	landed(t, res, err, 0)

	p.Path = remote + ".long"
	if _, err := c.PushFrom(ctx, io.MultiReader(bytes.NewReader(data), bytes.NewReader([]byte("x"))), p, dispatcher.TransferOptions{}); err == nil {
		t.Fatal("a stream longer than its size: pushed")
	}
	if _, err := os.Stat(p.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the longer stream landed: %v", err)
	}
}

// TestPullResume: a pull resumes after the bytes a cut pull kept beside
// the local file when the board's file still begins with them, and
// starts over when it does not; the file appears only whole.
func TestPullResume(t *testing.T) {
	b := startBoard(t, agent.Config{})
	c := dial(t, b.ws.URL())
	ctx := context.Background()
	remote, data := randomFile(t, b.dir, 1<<20)
	dir := t.TempDir()
	local := filepath.Join(dir, "pulled.bin")
	for _, tc := range []struct {
		name       string
		kept       []byte
		wantOffset int64
	}{
		{"fresh", nil, 0},
		{"resume", data[:256<<10], 256 << 10},
		{"another file's bytes", make([]byte, 256<<10), 0},
		{"all of it", data, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(local)
			if tc.kept != nil {
				if err := os.WriteFile(dispatcher.PartialPath(local), tc.kept, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var last int64
			res, err := c.Pull(ctx, remote, local, dispatcher.TransferOptions{Progress: func(done, total int64) { last = done }})
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(local)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("pulled %d bytes (%v)", len(got), err)
			}
			if res.Offset != tc.wantOffset || res.SHA256 != sum(data) || tc.wantOffset < int64(len(data)) && last != int64(len(data)) {
				t.Fatalf("result %+v, progress ended at %d", res, last)
			}
			if _, err := os.Stat(dispatcher.PartialPath(local)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the partial file is left: %v", err)
			}
			if st, _ := os.Stat(local); st.Mode().Perm() != 0o640 {
				t.Fatalf("mode %v", st.Mode())
			}
		})
	}
	if _, err := c.Pull(ctx, filepath.Join(b.dir, "missing"), local, dispatcher.TransferOptions{}); !proto.IsReason(err, proto.ReasonNotFound) {
		t.Fatalf("a missing remote file: %v", err)
	}
	if _, err := os.Stat(dispatcher.PartialPath(local)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused pull leaves a partial file: %v", err)
	}
}

// TestDownload: the board fetches a URL itself, reports its progress,
// and skips content it already holds.
func TestDownload(t *testing.T) {
	b := startBoard(t, agent.Config{CacheDir: t.TempDir()})
	c := dial(t, b.ws.URL())
	data := make([]byte, 200<<10)
	rand.Read(data)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "pkg.bin", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	dest := filepath.Join(b.dir, "pkg.bin")
	var notes []proto.Progress
	req := dispatcher.DownloadRequest{URL: srv.URL + "/pkg.bin", Path: dest, SHA256: sum(data), Mode: 0o600,
		Size: int64(len(data)), Timeout: time.Minute, Progress: func(p proto.Progress) { notes = append(notes, p) }}
	res, err := c.Download(context.Background(), req)
	if err != nil || res.Skipped || res.Size != int64(len(data)) {
		t.Fatalf("download %+v %v", res, err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, data) {
		t.Fatal("the board holds other bytes")
	}
	if len(notes) == 0 {
		t.Fatal("no progress")
	}
	req.Progress = nil
	if res, err := c.Download(context.Background(), req); err != nil || !res.Skipped {
		t.Fatalf("again: %+v %v", res, err)
	}
	req.SHA256, req.Path = sum([]byte("other")), filepath.Join(b.dir, "other.bin")
	if _, err := c.Download(context.Background(), req); !proto.IsReason(err, proto.ReasonChecksumMismatch) {
		t.Fatalf("a wrong checksum: %v", err)
	}
}

// TestTransferPhases: a push hashes, sends and then waits while the board
// verifies; a pull sends and then verifies here: each phase is told once,
// in order, so a bar never sits at 100% without saying why.
func TestTransferPhases(t *testing.T) {
	b := startBoard(t, agent.Config{})
	c := dial(t, b.ws.URL())
	ctx := context.Background()
	local, _ := randomFile(t, t.TempDir(), 256<<10)
	var phases []dispatcher.TransferPhase
	opts := dispatcher.TransferOptions{Phase: func(p dispatcher.TransferPhase) { phases = append(phases, p) }}
	remote := filepath.Join(b.dir, "phases.bin")
	if _, err := c.Push(ctx, local, remote, opts); err != nil {
		t.Fatal(err)
	}
	want := []dispatcher.TransferPhase{dispatcher.PhaseHash, dispatcher.PhaseSend, dispatcher.PhaseVerify}
	if !slices.Equal(phases, want) {
		t.Fatalf("push phases %v, want %v", phases, want)
	}
	phases = nil
	if _, err := c.Pull(ctx, remote, filepath.Join(t.TempDir(), "back.bin"), opts); err != nil {
		t.Fatal(err)
	}
	if want := want[1:]; !slices.Equal(phases, want) {
		t.Fatalf("pull phases %v, want %v", phases, want)
	}
}
