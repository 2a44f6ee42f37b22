package dispatcher_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
)

func fingerprint(t *testing.T) auth.Fingerprint {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return auth.FingerprintOf(pub)
}

func TestKnownBoards(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cfg", "known_boards.json")
	k := dispatcher.NewKnownBoards(path)
	var pinned []string
	k.OnPin = func(b dispatcher.KnownBoard) { pinned = append(pinned, b.ID) }
	a, b := fingerprint(t), fingerprint(t)
	if err := k.Verify(t.Context(), "lab-7", a); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if err := k.Verify(t.Context(), "lab-7", a); err != nil {
		t.Fatalf("the same key again: %v", err)
	}
	if len(pinned) != 1 {
		t.Fatalf("pins reported: %v, want one", pinned)
	}
	// Another process reads the same file.
	other := dispatcher.NewKnownBoards(path)
	err := other.Verify(t.Context(), "lab-7", b)
	var ke *dispatcher.KeyChangedError
	if !errors.As(err, &ke) || ke.Pinned != a || ke.Got != b || !errors.Is(err, dispatcher.ErrUntrusted) {
		t.Fatalf("changed key: %v", err)
	}
	for _, want := range []string{"lab-7", a.String(), b.String(), path, "boardlink forget lab-7"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not name %q", err, want)
		}
	}
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("config dir mode %v %v", fi.Mode(), err)
	}
	// Strict: a board not known is refused, a known one is fine.
	strict := dispatcher.NewKnownBoards(path)
	strict.Strict = true
	if err := strict.Verify(t.Context(), "lab-8", a); !errors.Is(err, dispatcher.ErrUnknownKey) || !strings.Contains(err.Error(), "boardlink trust lab-8") {
		t.Fatalf("strict, unknown: %v", err)
	}
	if err := strict.Verify(t.Context(), "lab-7", a); err != nil {
		t.Fatalf("strict, known: %v", err)
	}
	if err := k.Pin(context.Background(), "lab-7", b, true); err != nil {
		t.Fatal(err)
	}
	if e, ok := other.Lookup("lab-7"); !ok || e.Fingerprint != b || !e.Paired {
		t.Fatalf("after Pin: %+v", e)
	}
	if found, err := k.Forget(context.Background(), "lab-7"); !found || err != nil {
		t.Fatalf("forget: %v %v", found, err)
	}
	if found, _ := k.Forget(context.Background(), "lab-7"); found {
		t.Fatal("forgot twice")
	}
}

// Processes that pin boards at once keep each other's pins: the file is
// read and written under a lock.
func TestKnownBoardsConcurrentPins(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known_boards.json")
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			k := dispatcher.NewKnownBoards(path) // each its own, as separate processes
			if err := k.Verify(t.Context(), fmt.Sprintf("board-%02d", i), fingerprint(t)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	all, err := dispatcher.NewKnownBoards(path).List()
	if err != nil || len(all) != 20 {
		t.Fatalf("%d pins after 20 concurrent ones: %v", len(all), err)
	}
}

// A dial's context bounds the wait for a first-use pin to be written: a
// lab service found dials to boards waiting for the known-boards file
// for minutes past their bound, while another process (here, the test)
// held the file's lock. The pin is still written once the lock is free.
func TestDialBoundCoversPinWrite(t *testing.T) {
	tb := startBoard(t, agent.Config{})
	path := filepath.Join(t.TempDir(), "known_boards.json")
	known := dispatcher.NewKnownBoards(path)
	unlock := lockKnown(t, path)
	ctx, cancel := context.WithCancel(t.Context())
	dialed := make(chan error, 1)
	go func() {
		c, err := dispatcher.Dial(ctx, tb.ws.URL(), dispatcher.DialOptions{Token: labToken, Trust: known})
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	testenv.Eventually(t, "the dial to wait for its pin to be written", func() bool {
		return testenv.Parked("dispatcher.(*KnownBoards).Verify")
	})
	cancel()
	var dialErr error
	testenv.Eventually(t, "the canceled dial to return while the file is locked", func() bool {
		select {
		case dialErr = <-dialed:
			return true
		default:
			return false
		}
	})
	if !errors.Is(dialErr, context.Canceled) {
		t.Fatalf("dial canceled while its pin waits: %v, want context.Canceled", dialErr)
	}
	if _, ok := dispatcher.NewKnownBoards(path).Lookup("test-board"); ok {
		t.Fatal("pinned while the file was locked")
	}
	unlock()
	testenv.Eventually(t, "the pin to be written once the lock is free", func() bool {
		_, ok := dispatcher.NewKnownBoards(path).Lookup("test-board")
		return ok
	})
	c, err := dispatcher.Dial(t.Context(), tb.ws.URL(), dispatcher.DialOptions{Token: labToken, Trust: known})
	if err != nil {
		t.Fatalf("dial once pinned: %v", err)
	}
	c.Close()
}

// Pin and Forget wait for the file's write only as long as their ctx: a
// `boardlink trust` interrupted while another process holds the lock
// returns at once, and its pin is still written once the lock is free.
func TestPinForgetBoundedByContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known_boards.json")
	known := dispatcher.NewKnownBoards(path)
	fp := fingerprint(t)
	unlock := lockKnown(t, path)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := known.Pin(ctx, "lab-9", fp, true); !errors.Is(err, context.Canceled) {
		t.Fatalf("Pin with the file locked and ctx over: %v, want context.Canceled", err)
	}
	if _, err := known.Forget(ctx, "lab-8"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Forget with the file locked and ctx over: %v, want context.Canceled", err)
	}
	unlock()
	testenv.Eventually(t, "the pin to be written once the lock is free", func() bool {
		e, ok := dispatcher.NewKnownBoards(path).Lookup("lab-9")
		return ok && e.Paired && e.Fingerprint.Equal(fp)
	})
}

// Pins asked for while the file is written are written together, and
// none is reported before the write that holds it: each Verify, once it
// returns, finds its pin in the file as another process reads it.
func TestKnownBoardsBatchedPins(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "known_boards.json")
	k := dispatcher.NewKnownBoards(path)
	var (
		mu     sync.Mutex
		pinned int
	)
	k.OnPin = func(dispatcher.KnownBoard) { mu.Lock(); pinned++; mu.Unlock() }
	// The file's replacements, as inotify sees them: one per write.
	in, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Skipf("inotify: %v", err)
	}
	defer unix.Close(in)
	if _, err := unix.InotifyAddWatch(in, dir, unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	// Hold the file's lock, as another process writing it, until every
	// pin waits: the first writes alone (it took the lock's turn), the
	// others together.
	unlock := lockKnown(t, path)
	const n = 50
	var (
		wg      sync.WaitGroup
		started atomic.Int32
	)
	for i := range n {
		wg.Go(func() {
			started.Add(1)
			pinAndRead(t, k, path, fmt.Sprintf("board-%02d", i))
		})
	}
	testenv.Eventually(t, "every pin to wait for its write", func() bool {
		return started.Load() == n && testenv.Parked("dispatcher_test.pinAndRead")
	})
	unlock()
	wg.Wait()
	all, err := dispatcher.NewKnownBoards(path).List()
	if err != nil || len(all) != n || pinned != n {
		t.Fatalf("%d pins in the file, %d reported, after %d: %v", len(all), pinned, n, err)
	}
	writes := 0
	buf := make([]byte, 64<<10)
	for {
		m, err := unix.Read(in, buf)
		if m <= 0 || err != nil {
			break
		}
		for off := 0; off < m; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			if name == filepath.Base(path) {
				writes++
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
	if writes < 1 || writes > 2 {
		t.Errorf("%d pins asked for at once took %d writes of the file, want 1 or 2", n, writes)
	}
}

// pinAndRead pins a new key for id and checks, once Verify returned, that
// the file holds it.
func pinAndRead(t *testing.T, k *dispatcher.KnownBoards, path, id string) {
	if err := k.Verify(t.Context(), id, fingerprint(t)); err != nil {
		t.Error(err)
		return
	}
	if _, ok := dispatcher.NewKnownBoards(path).Lookup(id); !ok {
		t.Errorf("%s: Verify returned before its pin was written", id)
	}
}

// lockKnown takes the known-boards file's lock at path as another process
// would (a lock of its own); the function returned lets it go.
func lockKnown(t *testing.T, path string) func() {
	t.Helper()
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Close() })
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_UN); err != nil {
			t.Error(err)
		}
	}
}
