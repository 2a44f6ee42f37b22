package sim

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/internal/atomicfile"
)

var (
	generatedID = regexp.MustCompile(`^sim-[0-9a-f]{6}$`)
	uuidV4      = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
)

// Each case is a sequence of boots of one state dir; "" in a wanted ID
// means "the generated id of the first boot".
func TestIdentityAcrossBoots(t *testing.T) {
	type boot struct {
		opts Options
		want board.Identity
	}
	tests := []struct {
		name  string
		boots []boot
	}{
		{name: "generated and kept", boots: []boot{
			{Options{}, board.Identity{Model: "sim"}},
			{Options{}, board.Identity{Model: "sim"}},
		}},
		{name: "seeded by options", boots: []boot{
			{Options{ID: "b1", Model: "imx8", Labels: map[string]string{"rack": "3"}},
				board.Identity{ID: "b1", Model: "imx8", Labels: map[string]string{"rack": "3"}}},
			{Options{}, board.Identity{ID: "b1", Model: "imx8", Labels: map[string]string{"rack": "3"}}},
		}},
		{name: "a flag updates only its field", boots: []boot{
			{Options{ID: "b1", Labels: map[string]string{"a": "1"}}, board.Identity{ID: "b1", Model: "sim", Labels: map[string]string{"a": "1"}}},
			{Options{Model: "rpi4"}, board.Identity{ID: "b1", Model: "rpi4", Labels: map[string]string{"a": "1"}}},
			{Options{ID: "b2"}, board.Identity{ID: "b2", Model: "rpi4", Labels: map[string]string{"a": "1"}}},
			{Options{}, board.Identity{ID: "b2", Model: "rpi4", Labels: map[string]string{"a": "1"}}},
		}},
		{name: "labels are replaced as a set", boots: []boot{
			{Options{Labels: map[string]string{"a": "1", "b": "2"}}, board.Identity{Model: "sim", Labels: map[string]string{"a": "1", "b": "2"}}},
			{Options{Labels: map[string]string{"c": "3"}}, board.Identity{Model: "sim", Labels: map[string]string{"c": "3"}}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			var firstID string
			for i, bt := range tt.boots {
				b, err := Open(dir, bt.opts)
				if err != nil {
					t.Fatalf("boot %d: Open: %v", i, err)
				}
				got := b.Identity()
				if i == 0 {
					firstID = got.ID
				}
				want := bt.want
				if want.ID == "" {
					want.ID = firstID
					if !generatedID.MatchString(got.ID) {
						t.Errorf("boot %d: generated id %q does not match %v", i, got.ID, generatedID)
					}
				}
				if got.ID != want.ID || got.Model != want.Model || !maps.Equal(got.Labels, want.Labels) {
					t.Errorf("boot %d: identity = %+v, want %+v", i, got, want)
				}
				var stored board.Identity
				if err := atomicfile.ReadJSON(filepath.Join(dir, identityFile), identityFormat, &stored); err != nil {
					t.Fatalf("boot %d: read identity.json: %v", i, err)
				}
				if stored.ID != got.ID || stored.Model != got.Model || !maps.Equal(stored.Labels, got.Labels) {
					t.Errorf("boot %d: stored identity %+v, board says %+v", i, stored, got)
				}
			}
		})
	}
}

func TestOpenRejects(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) (stateDir string)
		opts  Options
		want  string
	}{
		{name: "invalid id", opts: Options{ID: "a/b"}, want: "board id"},
		{name: "invalid label", opts: Options{Labels: map[string]string{"a=b": "c"}}, want: "label key"},
		{name: "identity from a newer build", setup: func(t *testing.T, dir string) string {
			if err := atomicfile.WriteJSON(filepath.Join(dir, identityFile), identityFormat+1, board.Identity{ID: "x", Model: "m"}); err != nil {
				t.Fatal(err)
			}
			return dir
		}, want: "unsupported format version 2"},
		{name: "corrupt identity", setup: func(t *testing.T, dir string) string {
			if err := os.WriteFile(filepath.Join(dir, identityFile), []byte("{"), 0o644); err != nil {
				t.Fatal(err)
			}
			return dir
		}, want: "not a versioned JSON file"},
		{name: "state dir is a file", setup: func(t *testing.T, dir string) string {
			f := filepath.Join(dir, "f")
			if err := os.WriteFile(f, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			return f
		}, want: "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			stateDir := dir
			if tt.setup != nil {
				stateDir = tt.setup(t, dir)
			}
			before, _ := os.ReadFile(filepath.Join(dir, identityFile))
			_, err := Open(stateDir, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open = %v, want an error saying %q", err, tt.want)
			}
			after, _ := os.ReadFile(filepath.Join(dir, identityFile))
			if string(before) != string(after) {
				t.Errorf("a failed Open changed identity.json from %q to %q", before, after)
			}
		})
	}
	if _, err := Open("", Options{}); err == nil {
		t.Error("Open with no directory succeeded")
	}
}

func TestBoots(t *testing.T) {
	dir := t.TempDir()
	seen := map[string]bool{}
	var last *Board
	for i := range MaxBoots + 3 {
		b, err := Open(dir, Options{})
		if err != nil {
			t.Fatalf("boot %d: %v", i, err)
		}
		if !uuidV4.MatchString(b.BootID()) {
			t.Errorf("boot id %q is not a v4 UUID", b.BootID())
		}
		if seen[b.BootID()] {
			t.Errorf("boot id %q repeated", b.BootID())
		}
		seen[b.BootID()] = true
		if last != nil && b.BootedAt().Before(last.BootedAt()) {
			t.Errorf("boot %d began before the previous one", i)
		}
		last = b
	}
	boots := last.Boots()
	if len(boots) != MaxBoots {
		t.Fatalf("history holds %d boots, want %d", len(boots), MaxBoots)
	}
	if cur := boots[len(boots)-1]; cur.ID != last.BootID() || !cur.At.Equal(last.BootedAt()) {
		t.Errorf("last history entry %+v is not the current boot %s", cur, last.BootID())
	}
	var stored []Boot
	if err := atomicfile.ReadJSON(filepath.Join(dir, bootsFile), bootsFormat, &stored); err != nil {
		t.Fatal(err)
	}
	if len(stored) != MaxBoots || stored[len(stored)-1].ID != last.BootID() {
		t.Errorf("boots.json holds %d boots ending with %+v", len(stored), stored[len(stored)-1])
	}
	if last.Dir() != dir {
		t.Errorf("Dir() = %q, want %q", last.Dir(), dir)
	}
}

func TestIdentityIsACopy(t *testing.T) {
	b, err := Open(t.TempDir(), Options{Labels: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	id := b.Identity()
	id.Labels["k"] = "changed"
	if b.Identity().Labels["k"] != "v" {
		t.Fatal("modifying the returned identity changed the board")
	}
}

func TestBootHistoryFromNewerBuild(t *testing.T) {
	dir := t.TempDir()
	if err := atomicfile.WriteJSON(filepath.Join(dir, bootsFile), bootsFormat+1, []Boot{}); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir, Options{})
	if !errors.Is(err, atomicfile.ErrFormat) {
		t.Fatalf("Open = %v, want ErrFormat", err)
	}
}
