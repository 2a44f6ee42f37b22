package dispatcher

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/internal/atomicfile"
)

// TestIDCache: an id, and the prefix it was given as, resolve from the
// cache while fresh; an old entry is not used and is dropped at the next
// write; a file of another format, or not JSON at all, is no cache.
func TestIDCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cache", "boards.json")
	r := &Resolver{CacheFile: path}
	r.remember("lab", discovery.Record{ID: "lab-7", Address: "wss://10.0.0.7:7207"})
	for _, id := range []string{"lab", "lab-7"} {
		if e, ok := r.cached(id); !ok || e.ID != "lab-7" || e.Address != "wss://10.0.0.7:7207" {
			t.Fatalf("cached %s: %+v %v", id, e, ok)
		}
	}
	m := r.loadCache()
	m["old"] = idCacheEntry{ID: "old", Address: "wss://10.0.0.9:7207", Seen: time.Now().Add(-idCacheFresh - time.Minute)}
	if err := atomicfile.WriteJSON(path, idCacheFormat, m); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.cached("old"); ok {
		t.Fatal("an old entry was used")
	}
	r.remember("lab-8", discovery.Record{ID: "lab-8", Address: "wss://10.0.0.8:7207"})
	if m := r.loadCache(); len(m) != 3 || m["old"].ID != "" {
		t.Fatalf("after a write: %+v", m)
	}
	if err := atomicfile.WriteJSON(path, idCacheFormat+1, m); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.cached("lab-8"); ok {
		t.Fatal("a cache of another format was read")
	}
	os.WriteFile(path, []byte(`{"format": 2, "data": {"lab-8": 7}}`), 0o644)
	if _, ok := r.cached("lab-8"); ok || len(r.loadCache()) != 0 {
		t.Fatal("a cache that does not decode was read")
	}
	none := &Resolver{}
	none.remember("lab-8", discovery.Record{ID: "lab-8", Address: "wss://10.0.0.8:7207"})
	if _, ok := none.cached("lab-8"); ok {
		t.Fatal("a resolver without a cache file remembered")
	}
	// A cache that cannot be written only costs the next lookup.
	blocked := &Resolver{CacheFile: filepath.Join(path, "under-a-file", "boards.json")}
	blocked.remember("lab-8", discovery.Record{ID: "lab-8", Address: "wss://10.0.0.8:7207"})
	if _, ok := blocked.cached("lab-8"); ok {
		t.Fatal("remembered in a file that cannot exist")
	}
}

// TestPick: an exact id wins over the ids it is a prefix of; a prefix
// names the one board it starts; several or none is the caller's error,
// and says what was seen.
func TestPick(t *testing.T) {
	f := Found{Boards: []discovery.Record{{ID: "lab-7", Address: "wss://a"}, {ID: "lab-70", Address: "wss://b"},
		{ID: "lab-8", Address: "serial:///dev/ttyUSB0?baud=115200"}}, Serial: true, Timeout: time.Second}
	for id, want := range map[string]string{"lab-7": "lab-7", "lab-70": "lab-70", "lab-8": "lab-8", "lab-70x": "", "lab": "", "lab-": ""} {
		r, err := f.pick(id)
		if r.ID != want || (want == "") != (err != nil) {
			t.Errorf("pick %q = %q %v, want %q", id, r.ID, err, want)
		}
	}
	if _, err := f.pick("lab"); err.Error() != `unknown board: "lab" is ambiguous: lab-7 (wss://a), lab-70 (wss://b), lab-8 (serial:///dev/ttyUSB0?baud=115200)` {
		t.Errorf("ambiguous: %v", err)
	}
	if _, err := f.pick("rack"); err.Error() != `unknown board "rack": boards seen: lab-7, lab-70, lab-8` {
		t.Errorf("unknown: %v", err)
	}
	if _, err := (Found{Timeout: time.Second}).pick("rack"); !strings.Contains(err.Error(), "no board answered within 1s (nowhere;") {
		t.Errorf("none seen: %v", err)
	}
	if w := (Found{MDNS: &discovery.IfaceReport{Used: []string{"eth0"}}}).Warning(); w != "" {
		t.Errorf("a warning with an interface: %q", w)
	}
}

// TestPickConflict: an id several boards announce is picked by none of
// them, exactly or as a prefix: a ConflictError with every address, and
// Doubts says so.
func TestPickConflict(t *testing.T) {
	addrs := []string{"ws://10.0.0.1:7207", "ws://10.0.0.2:7207"}
	f := Found{Boards: []discovery.Record{{ID: "twin", Address: addrs[0], Conflict: addrs}}, Timeout: time.Second}
	for _, id := range []string{"twin", "tw"} {
		_, err := f.pick(id)
		var ce *ConflictError
		if !errors.As(err, &ce) || !errors.Is(err, ErrBoardConflict) || ce.ID != "twin" || !slices.Equal(ce.Addresses, addrs) {
			t.Errorf("pick %q: %v, want a ConflictError for twin", id, err)
		}
	}
	want := "2 boards announce the id twin: ws://10.0.0.1:7207, ws://10.0.0.2:7207; nothing is sent to it by id until one goes (use an address)"
	if d := f.Doubts(); len(d) != 1 || d[0] != want {
		t.Errorf("doubts %q", d)
	}
}

// A serial port the scan left alone is among the doubts, with the reason.
func TestDoubtsSkippedPorts(t *testing.T) {
	f := Found{SkippedPorts: []discovery.SkippedPort{{Port: "/dev/ttyUSB0", Reason: "open in pid 42 (picocom)"}}}
	if d := f.Doubts(); len(d) != 1 || d[0] != "did not listen on serial port /dev/ttyUSB0: open in pid 42 (picocom)" {
		t.Errorf("doubts %q", d)
	}
}
