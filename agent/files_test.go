package agent_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/wslink"
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
	if testenv.Race || !testenv.E2E() {
		t.Logf("16 MiB instead of 256 (256 with BOARDLINK_E2E=1, without the race detector)")
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

// wantPathRule checks that err is invalid_params on "path" naming rule.
func wantPathRule(t *testing.T, op string, err error, rule string) {
	t.Helper()
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Reason() != proto.ReasonInvalidParams || len(pe.Data.Fields) != 1 ||
		pe.Data.Fields[0].Field != "path" || pe.Data.Fields[0].Rule != rule {
		t.Fatalf("%s: %v, want invalid_params on path (%s)", op, err, rule)
	}
}

// TestFilesRefuseNonRegular: a FIFO, a socket or a device is neither
// pulled nor hashed nor replaced by a push: invalid_params on "path", at
// once (a pull of a FIFO used to block forever, holding an OS thread).
func TestFilesRefuseNonRegular(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	ctx := ctxTimeout(t, time.Minute)
	local := filepath.Join(t.TempDir(), "f")
	writeRandom(t, local, 1000)
	fifo := filepath.Join(h.root, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(h.root, "sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	specials := []string{fifo, sock}
	if os.Geteuid() == 0 {
		null := filepath.Join(h.root, "null")
		if err := syscall.Mknod(null, syscall.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err == nil {
			specials = append(specials, null)
		}
	}
	for _, p := range specials {
		t.Run(filepath.Base(p), func(t *testing.T) {
			_, err := c.Pull(ctx, p, filepath.Join(t.TempDir(), "got"), dispatcher.TransferOptions{})
			wantPathRule(t, "pull", err, "file")
			_, err = c.Push(ctx, local, p, dispatcher.TransferOptions{})
			wantPathRule(t, "push", err, "file")
			info, err := c.Stat(ctx, p, true)
			if err != nil || !info.Exists || info.SHA256 != "" {
				t.Fatalf("stat with hash: %+v, %v; want it described, not hashed", info, err)
			}
			if st, err := os.Lstat(p); err != nil || st.Mode().IsRegular() {
				t.Fatalf("%s was replaced: %v %v", p, st, err)
			}
		})
	}
}

// TestFileErrorsAreTheCallers: errors a request's path causes are
// invalid_params on "path", not internal (which a client would retry).
func TestFileErrorsAreTheCallers(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	ctx := ctxTimeout(t, time.Minute)
	local := filepath.Join(t.TempDir(), "f")
	writeRandom(t, local, 1000)
	if err := os.WriteFile(filepath.Join(h.root, "afile"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("loop", filepath.Join(h.root, "loop")); err != nil {
		t.Fatal(err)
	}
	long := filepath.Join(h.root, strings.Repeat("n", 256))
	for _, tc := range []struct {
		name, path, rule string
		parentsRule      string // of a push with parents
	}{
		{"name too long", long, "name_too_long", "name_too_long"},
		{"under a file", filepath.Join(h.root, "afile", "x"), "dir", "exists"},
		{"symlink loop", filepath.Join(h.root, "loop"), "symlink", "symlink"},
		{"under a symlink loop", filepath.Join(h.root, "loop", "x"), "symlink", "symlink"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Push(ctx, local, tc.path, dispatcher.TransferOptions{})
			wantPathRule(t, "push", err, tc.rule)
			_, err = c.Push(ctx, local, tc.path, dispatcher.TransferOptions{Parents: true})
			wantPathRule(t, "push with parents", err, tc.parentsRule)
			_, err = c.Pull(ctx, tc.path, filepath.Join(t.TempDir(), "got"), dispatcher.TransferOptions{})
			wantPathRule(t, "pull", err, tc.rule)
			_, err = c.Stat(ctx, tc.path, false)
			wantPathRule(t, "stat", err, tc.rule)
		})
	}
	// A name as long as the file system takes: the partial file's longer
	// name must not make the push fail.
	longest := filepath.Join(h.root, strings.Repeat("n", 255))
	if _, err := c.Push(ctx, local, longest, dispatcher.TransferOptions{}); err != nil {
		t.Fatalf("push to a 255-byte name: %v", err)
	}
	sameFile(t, local, longest)
}

// startPush calls file.push for content on a new stream and returns the
// stream and the transfer's id.
func startPush(t *testing.T, c *dispatcher.Client, remote string, content []byte) (*transport.Stream, string, error) {
	t.Helper()
	s, err := c.Conn().OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(content)
	var started proto.FilePushResult
	err = c.Conn().Call(ctxTimeout(t, time.Minute), proto.MethodFilePush, proto.FilePushParams{Path: remote,
		Size: int64(len(content)), SHA256: hex.EncodeToString(sum[:]), Stream: s.ID()}, &started)
	return s, started.ID, err
}

// TestPushPartialSwapped: another user of the board who replaces the
// partial file of a push, before it starts or while it runs, neither gets
// a file written through a symlink nor a symlink installed: the push is
// refused (invalid_params on "path") and the link's target untouched.
func TestPushPartialSwapped(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	content := []byte("hello")
	sum := sha256.Sum256(content)
	victim := filepath.Join(h.root, "victim")
	partial := func(name string) string {
		return filepath.Join(h.root, "."+name+"."+hex.EncodeToString(sum[:])[:16]+".boardlink-partial")
	}
	// swap puts a symlink to the victim (or a FIFO) at name, atomically.
	swap := func(t *testing.T, name string, fifo bool) {
		t.Helper()
		tmp := filepath.Join(h.root, "swap.tmp")
		var err error
		if fifo {
			err = syscall.Mkfifo(tmp, 0o644)
		} else {
			err = os.Symlink("victim", tmp)
		}
		if err == nil {
			err = os.Rename(tmp, name)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name   string
		fifo   bool
		during bool // swapped after file.push answered
		rule   string
	}{
		{"symlink before", false, false, "symlink"},
		{"fifo before", true, false, "file"},
		{"symlink during", false, true, "symlink"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
				t.Fatal(err)
			}
			remote := filepath.Join(h.root, strings.ReplaceAll(tc.name, " ", "-"))
			if !tc.during {
				swap(t, partial(filepath.Base(remote)), tc.fifo)
			}
			s, id, err := startPush(t, c, remote, content)
			if !tc.during {
				wantPathRule(t, "file.push", err, tc.rule)
			} else {
				if err != nil {
					t.Fatal(err)
				}
				swap(t, partial(filepath.Base(remote)), tc.fifo)
				s.Write(content)
				s.CloseWrite()
				err = c.Conn().Call(ctxTimeout(t, time.Minute), proto.MethodFileWait, proto.FileWaitParams{ID: id}, nil)
				wantPathRule(t, "file.wait", err, tc.rule)
			}
			if got, err := os.ReadFile(victim); err != nil || string(got) != "keep" {
				t.Fatalf("the symlink's target now holds %q (%v)", got, err)
			}
			if _, err := os.Lstat(remote); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("something was installed at %s: %v", remote, err)
			}
			os.Remove(partial(filepath.Base(remote)))
		})
	}
}

// TestPushNoRoom: a push the disk cannot hold is refused before its bytes
// are sent, as no_space (not the caller's fault, nor worth a retry as it
// is).
func TestPushNoRoom(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	s, err := c.Conn().OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	remote := filepath.Join(h.root, "huge")
	err = c.Conn().Call(ctxTimeout(t, time.Minute), proto.MethodFilePush, proto.FilePushParams{Path: remote,
		Size: 1 << 50, SHA256: strings.Repeat("ab", 32), Stream: s.ID()}, nil)
	if !proto.IsReason(err, proto.ReasonNoSpace) || proto.ReasonNoSpace.Retryable() {
		t.Fatalf("push of a petabyte: %v, want no_space", err)
	}
	if ents, err := os.ReadDir(h.root); err != nil || len(ents) != 0 {
		t.Fatalf("the root holds %v (%v)", ents, err)
	}
}

// file.pull's frame: a host that names none (an older one) gets frames of
// the default size, one that names proto.MaxBulkFrame gets frames that
// large; the hello announces it, and a push's answer names the agent's.
func TestPullFrames(t *testing.T) {
	h := newHarness(t, "")
	ctx := ctxTimeout(t, time.Minute)
	remote := filepath.Join(h.root, "f.bin")
	writeRandom(t, remote, 1<<20)
	l, err := wslink.Dial(ctx, h.wsURL(), h.token, wslink.Config{VerifyKey: func(ed25519.PublicKey) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewConn(l, transport.Config{Client: true})
	c.Start()
	t.Cleanup(func() { c.Close() })
	var hello proto.HelloResult
	if err := c.Call(ctx, proto.MethodHello, proto.HelloParams{Protocol: proto.Version}, &hello); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(hello.Capabilities, proto.CapFrames) {
		t.Fatalf("hello does not announce %s: %v", proto.CapFrames, hello.Capabilities)
	}
	for _, tc := range []struct{ frame, want int }{{0, 64 << 10}, {proto.MaxBulkFrame, proto.MaxBulkFrame}} {
		s, err := c.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		s.Grow(1 << 20) // frames limited by their size, not by the credit
		var started proto.FilePullResult
		if err := c.Call(ctx, proto.MethodFilePull, proto.FilePullParams{Path: remote, Stream: s.ID(), Frame: tc.frame}, &started); err != nil {
			t.Fatal(err)
		}
		// A Read returns one frame's payload at most.
		largest, total, buf := 0, 0, make([]byte, 2*proto.MaxBulkFrame)
		for {
			n, err := s.Read(buf)
			largest, total = max(largest, n), total+n
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if total != 1<<20 || largest != tc.want {
			t.Errorf("frame %d: %d bytes in frames of up to %d, want frames of %d", tc.frame, total, largest, tc.want)
		}
		if err := c.Call(ctx, proto.MethodFileWait, proto.FileWaitParams{ID: started.ID}, nil); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := c.OpenStream()
	err = c.Call(ctx, proto.MethodFilePull, proto.FilePullParams{Path: remote, Stream: s.ID(), Frame: proto.MaxBulkFrame + 1}, nil)
	if !proto.IsReason(err, proto.ReasonInvalidParams) || !mentionsField(err, "frame") {
		t.Fatalf("a frame beyond proto.MaxBulkFrame: %v, want invalid_params naming frame", err)
	}
	s.Close()
	s, _ = c.OpenStream()
	var pushed proto.FilePushResult
	err = c.Call(ctx, proto.MethodFilePush, proto.FilePushParams{Path: filepath.Join(h.root, "g.bin"), Size: 0,
		SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", Stream: s.ID()}, &pushed)
	if err != nil || pushed.Frame != proto.MaxBulkFrame {
		t.Fatalf("file.push answered %+v, %v; want frame %d", pushed, err, proto.MaxBulkFrame)
	}
	s.CloseWrite()
	if err := c.Call(ctx, proto.MethodFileWait, proto.FileWaitParams{ID: pushed.ID}, nil); err != nil {
		t.Fatal(err)
	}
}
