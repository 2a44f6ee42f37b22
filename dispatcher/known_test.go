package dispatcher_test

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher"
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
	if err := k.Verify("lab-7", a); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if err := k.Verify("lab-7", a); err != nil {
		t.Fatalf("the same key again: %v", err)
	}
	if len(pinned) != 1 {
		t.Fatalf("pins reported: %v, want one", pinned)
	}
	// Another process reads the same file.
	other := dispatcher.NewKnownBoards(path)
	err := other.Verify("lab-7", b)
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
	if err := strict.Verify("lab-8", a); !errors.Is(err, dispatcher.ErrUnknownKey) || !strings.Contains(err.Error(), "boardlink trust lab-8") {
		t.Fatalf("strict, unknown: %v", err)
	}
	if err := strict.Verify("lab-7", a); err != nil {
		t.Fatalf("strict, known: %v", err)
	}
	if err := k.Pin("lab-7", b, true); err != nil {
		t.Fatal(err)
	}
	if e, ok := other.Lookup("lab-7"); !ok || e.Fingerprint != b || !e.Paired {
		t.Fatalf("after Pin: %+v", e)
	}
	if found, err := k.Forget("lab-7"); !found || err != nil {
		t.Fatalf("forget: %v %v", found, err)
	}
	if found, _ := k.Forget("lab-7"); found {
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
			if err := k.Verify(fmt.Sprintf("board-%02d", i), fingerprint(t)); err != nil {
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
