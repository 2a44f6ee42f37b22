package agent_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// writeRandom makes a file of n random bytes with a distinctive mode and
// mtime, and returns its sha256.
func writeRandom(t testing.TB, path string, n int64) string {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for left := n; left > 0; {
		chunk := buf[:min(left, int64(len(buf)))]
		rand.Read(chunk)
		h.Write(chunk)
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
		left -= int64(len(chunk))
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC)
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSum(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := f.WriteTo(h); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sameFile checks content, mode and mtime of b against a.
func sameFile(t testing.TB, a, b string) {
	t.Helper()
	sa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	if fileSum(t, a) != fileSum(t, b) {
		t.Fatalf("%s and %s differ", a, b)
	}
	if sa.Mode().Perm() != sb.Mode().Perm() || !sa.ModTime().Equal(sb.ModTime()) {
		t.Fatalf("%s: mode %v mtime %v; %s: mode %v mtime %v", a, sa.Mode(), sa.ModTime(), b, sb.Mode(), sb.ModTime())
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// leftovers lists the hidden partial files in dir.
func leftovers(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, ".*boardlink-partial"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPushPull(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			h := newHarness(t, "")
			c := tr.dial(t, h)
			local := filepath.Join(t.TempDir(), "in.bin")
			sum := writeRandom(t, local, 300<<10+17)
			remote := filepath.Join(h.root, "sub", "dir", "out.bin")
			ctx := ctxTimeout(t, time.Minute)

			if _, err := c.Push(ctx, local, remote, dispatcher.TransferOptions{}); !proto.IsReason(err, proto.ReasonNotFound) {
				t.Fatalf("push without parents into a missing dir: %v, want not_found", err)
			}
			var seen atomic.Int64
			res, err := c.Push(ctx, local, remote, dispatcher.TransferOptions{Parents: true,
				Progress: func(done, total int64) { seen.Store(done) }})
			if err != nil {
				t.Fatal(err)
			}
			if res.SHA256 != sum || res.Offset != 0 || res.Bytes != res.Size || seen.Load() != res.Size {
				t.Fatalf("push result %+v (progress saw %d), want sha %s", res, seen.Load(), sum)
			}
			sameFile(t, local, remote)

			info, err := c.Stat(ctx, remote, true)
			if err != nil || !info.Exists || info.SHA256 != sum || info.Mode != 0o640 {
				t.Fatalf("stat %+v %v", info, err)
			}
			if info, err := c.Stat(ctx, remote+".missing", false); err != nil || info.Exists {
				t.Fatalf("stat of a missing file: %+v %v", info, err)
			}

			back := filepath.Join(t.TempDir(), "back.bin")
			pres, err := c.Pull(ctx, remote, back, dispatcher.TransferOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if pres.SHA256 != sum {
				t.Fatalf("pull result %+v", pres)
			}
			sameFile(t, local, back)
			if l := append(leftovers(t, filepath.Dir(remote)), leftovers(t, filepath.Dir(back))...); len(l) > 0 {
				t.Fatalf("partial files left: %v", l)
			}
		})
	}
}

// largeSize is the big transfer of the tests: 256 MiB, less where the
// race detector slows every byte.
func largeSize(t testing.TB) int64 {
	if testenv.Race || testing.Short() {
		t.Logf("race detector or -short: 16 MiB instead of 256")
		return 16 << 20
	}
	return 256 << 20
}

// TestPushPullLarge moves 256 MiB each way over loopback WebSocket.
func TestPushPullLarge(t *testing.T) {
	size := largeSize(t)
	h := newHarness(t, "")
	c := dialWS(t, h)
	local := filepath.Join(t.TempDir(), "big.bin")
	sum := writeRandom(t, local, size)
	remote := filepath.Join(h.root, "big.bin")
	ctx := ctxTimeout(t, 10*time.Minute)
	res, err := c.Push(ctx, local, remote, dispatcher.TransferOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.SHA256 != sum || fileSum(t, remote) != sum {
		t.Fatalf("push: %+v", res)
	}
	back := filepath.Join(t.TempDir(), "back.bin")
	if res, err = c.Pull(ctx, remote, back, dispatcher.TransferOptions{}); err != nil || res.SHA256 != sum {
		t.Fatalf("pull: %+v %v", res, err)
	}
	sameFile(t, local, back)
}

// TestTransferResume cuts the link halfway through a push and a pull; the
// second attempt moves only what is missing.
func TestTransferResume(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int64
		dial func(testing.TB, *harness) *dispatcher.Client
	}{
		{"ws-large", largeSize(t), dialWS},
		{"serial-pty-1MiB", 1 << 20, dialPTY},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "")
			local := filepath.Join(t.TempDir(), "f.bin")
			sum := writeRandom(t, local, tc.size)
			remote := filepath.Join(h.root, "f.bin")
			ctx := ctxTimeout(t, 5*time.Minute)

			// cutAt closes the client once half the file has crossed.
			cutAt := func(c *dispatcher.Client) dispatcher.TransferOptions {
				var once atomic.Bool
				return dispatcher.TransferOptions{Progress: func(done, total int64) {
					if done >= total/2 && once.CompareAndSwap(false, true) {
						go c.Close()
					}
				}}
			}
			c := tc.dial(t, h)
			if _, err := c.Push(ctx, local, remote, cutAt(c)); err == nil {
				t.Fatal("push over a cut link succeeded")
			}
			if _, err := os.Stat(remote); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a cut push left something under the real name: %v", err)
			}
			c = tc.dial(t, h)
			res, err := c.Push(ctx, local, remote, dispatcher.TransferOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("push resumed at %d of %d, moved %d", res.Offset, res.Size, res.Bytes)
			if res.Offset == 0 || res.Bytes >= tc.size || res.Bytes+res.Offset != tc.size || fileSum(t, remote) != sum {
				t.Fatalf("resumed push %+v", res)
			}

			back := filepath.Join(t.TempDir(), "back.bin")
			c = tc.dial(t, h)
			if _, err := c.Pull(ctx, remote, back, cutAt(c)); err == nil {
				t.Fatal("pull over a cut link succeeded")
			}
			if _, err := os.Stat(back); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a cut pull left something under the real name: %v", err)
			}
			c = tc.dial(t, h)
			pres, err := c.Pull(ctx, remote, back, dispatcher.TransferOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("pull resumed at %d of %d, moved %d", pres.Offset, pres.Size, pres.Bytes)
			if pres.Offset == 0 || pres.Bytes >= tc.size || pres.SHA256 != sum {
				t.Fatalf("resumed pull %+v", pres)
			}
			sameFile(t, local, back)
		})
	}
}

// TestPushResumeOfOtherContent: a partial file left by a push of other
// bytes is never taken as a prefix.
func TestPushResumeChecksPrefix(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	local := filepath.Join(t.TempDir(), "f.bin")
	sum := writeRandom(t, local, 1<<20)
	remote := filepath.Join(h.root, "f.bin")
	// A partial of the right name but wrong bytes, as a disk fault would leave.
	junk := filepath.Join(h.root, ".f.bin."+sum[:16]+".boardlink-partial")
	if err := os.WriteFile(junk, []byte(strings.Repeat("x", 4096)), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := c.Push(ctxTimeout(t, time.Minute), local, remote, dispatcher.TransferOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Offset != 0 || fileSum(t, remote) != sum {
		t.Fatalf("push over a wrong partial: %+v", res)
	}
}

func TestPushChecksumMismatch(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	ctx := ctxTimeout(t, time.Minute)
	conn := c.Conn()
	s, err := conn.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	remote := filepath.Join(h.root, "bad.bin")
	var started proto.FilePushResult
	err = conn.Call(ctx, proto.MethodFilePush, proto.FilePushParams{Path: remote, Size: 5,
		SHA256: strings.Repeat("ab", 32), Stream: s.ID()}, &started)
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("hello"))
	s.CloseWrite()
	err = conn.Call(ctx, proto.MethodFileWait, proto.FileWaitParams{ID: started.ID}, nil)
	if !proto.IsReason(err, proto.ReasonChecksumMismatch) {
		t.Fatalf("wait: %v, want checksum_mismatch", err)
	}
	if _, err := os.Stat(remote); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file that hashed wrong was installed: %v", err)
	}
	if l := leftovers(t, h.root); len(l) > 0 {
		t.Fatalf("partial files left: %v", l)
	}
}

// TestFileRoots: paths outside the roots, and ways out of them, are refused
// and nothing is written outside.
func TestFileRoots(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	ctx := ctxTimeout(t, time.Minute)
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(h.root, "out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "victim"), filepath.Join(h.root, "victim-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(t.TempDir(), "f")
	writeRandom(t, local, 1000)

	for _, tc := range []struct{ name, path, rule string }{
		{"outside", filepath.Join(outside, "x"), "root"},
		{"etc", "/etc/passwd", "root"},
		{"dotdot", h.root + "/../" + filepath.Base(outside) + "/x", "boardpath"},
		{"relative", "x", "boardpath"},
		{"through symlinked dir", filepath.Join(h.root, "out", "x"), "root"},
		{"onto a symlink out", filepath.Join(h.root, "victim-link"), "root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkRefused := func(op string, err error) {
				t.Helper()
				var pe *proto.Error
				if !errors.As(err, &pe) || pe.Reason() != proto.ReasonInvalidParams ||
					len(pe.Data.Fields) != 1 || pe.Data.Fields[0].Field != "path" || pe.Data.Fields[0].Rule != tc.rule {
					t.Fatalf("%s %s: %v, want invalid params on path (%s)", op, tc.path, err, tc.rule)
				}
			}
			_, err := c.Push(ctx, local, tc.path, dispatcher.TransferOptions{Parents: true})
			checkRefused("push", err)
			_, err = c.Stat(ctx, tc.path, true)
			checkRefused("stat", err)
			_, err = c.Pull(ctx, tc.path, filepath.Join(t.TempDir(), "got"), dispatcher.TransferOptions{})
			checkRefused("pull", err)
		})
	}
	_, err := c.Pull(ctx, filepath.Join(h.root, "out", "secret"), filepath.Join(t.TempDir(), "got"), dispatcher.TransferOptions{})
	if !proto.IsReason(err, proto.ReasonInvalidParams) {
		t.Fatalf("pull through a symlink out of the root: %v", err)
	}
	entries, err := os.ReadDir(outside)
	if err != nil || len(entries) != 1 {
		t.Fatalf("outside the root now holds %v (%v)", entries, err)
	}
}

func TestFileMethodsNeedRoots(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	if !hasCap(c.Hello().Capabilities, proto.CapFile) {
		t.Fatalf("capabilities %v lack %q", c.Hello().Capabilities, proto.CapFile)
	}
	if hasCap(c.Hello().Capabilities, proto.CapReboot) {
		t.Fatalf("capabilities %v announce reboot without a Reboot func", c.Hello().Capabilities)
	}
	_, err := c.Reboot(ctxTimeout(t, time.Minute))
	if !proto.IsReason(err, proto.ReasonMethodNotFound) {
		t.Fatalf("reboot without a Reboot func: %v", err)
	}
}

func hasCap(caps []string, want string) bool {
	for _, c := range caps {
		if c == want {
			return true
		}
	}
	return false
}
