package dispatcher_test

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

const labToken = "dispatcher-resolve-test-token"

// startLab runs n boards PREFIX-NNN on 127.0.0.1, advertised on ifaces.
func startLab(t *testing.T, prefix string, n int, ifaces ...string) *simlab.Lab {
	t.Helper()
	lab, err := simlab.Start(context.Background(), simlab.Options{Boards: n, Dir: t.TempDir(), IDPrefix: prefix,
		Ifaces: ifaces, Token: labToken})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return lab
}

func labOptions(r *dispatcher.Resolver) dispatcher.DialOptions {
	return dispatcher.DialOptions{Token: labToken, Trust: dispatcher.NewKnownBoards(""), Resolver: r}
}

func port(t *testing.T, addr string) int {
	t.Helper()
	u, err := url.Parse(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDialByID: with a Resolver, Dial takes a board id, or a unique
// prefix of one, found over mDNS; the address it resolved to is cached
// and tried first; an ambiguous or unknown id is a typed error; a cached
// address that now holds another board costs a look with discovery, and
// the key a board announced must be the key it proves.
func TestDialByID(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	alpha := startLab(t, "alpha", 2, "lo")
	startLab(t, "beta", 1, "lo")
	cache := filepath.Join(t.TempDir(), "cache", "boards.json")
	r := &dispatcher.Resolver{Ifaces: []string{"lo"}, NoSerial: true, CacheFile: cache}
	// offline shares the cache but cannot discover: its interface does
	// not exist, and there is no serial port.
	offline := &dispatcher.Resolver{Ifaces: []string{"no-such-if0"}, NoSerial: true, CacheFile: cache}
	ctx := context.Background()

	dialID := func(t *testing.T, r *dispatcher.Resolver, id, want string) {
		t.Helper()
		c, err := dispatcher.Dial(ctx, id, labOptions(r))
		if err != nil {
			t.Fatalf("dial %s: %v", id, err)
		}
		defer c.Close()
		if got := c.Hello().BoardID; got != want {
			t.Fatalf("dial %s reached %s, want %s", id, got, want)
		}
	}
	t.Run("exact", func(t *testing.T) { dialID(t, r, "alpha-001", "alpha-001") })
	t.Run("prefix", func(t *testing.T) { dialID(t, r, "bet", "beta-000") })
	t.Run("cached", func(t *testing.T) {
		dialID(t, offline, "alpha-001", "alpha-001")
		dialID(t, offline, "bet", "beta-000") // the prefix is remembered too
	})
	t.Run("ambiguous", func(t *testing.T) {
		_, err := dispatcher.Dial(ctx, "alpha", labOptions(r))
		var ae *dispatcher.AmbiguousBoardError
		if !errors.As(err, &ae) || !errors.Is(err, dispatcher.ErrUnknownBoard) || len(ae.Matches) != 2 ||
			!strings.Contains(err.Error(), "alpha-000 (wss://127.0.0.1:") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		_, err := dispatcher.Dial(ctx, "gamma", labOptions(r))
		var ue *dispatcher.UnknownBoardError
		if !errors.As(err, &ue) || !errors.Is(err, dispatcher.ErrUnknownBoard) ||
			!strings.Contains(err.Error(), `unknown board "gamma": boards seen: alpha-000, alpha-001, beta-000`) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("not cached", func(t *testing.T) {
		// Never resolved, so not cached: offline cannot find it.
		_, err := dispatcher.Dial(ctx, "alpha-000", labOptions(offline))
		if err == nil || !strings.Contains(err.Error(), `looking for board "alpha-000"`) || !strings.Contains(err.Error(), "no-such-if0") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("cached address holds another board", func(t *testing.T) {
		// beta-000 was at alpha-000's address, says the cache: alpha-000
		// answers there, so discovery is asked, and the cache corrected.
		r.Remember("beta-000", discovery.Record{ID: "beta-000", Address: alpha.Boards[0].Addr()})
		dialID(t, r, "beta-000", "beta-000")
		dialID(t, offline, "beta-000", "beta-000")
	})
	t.Run("cached board with another key", func(t *testing.T) {
		// The board the cache names, with a key other than the one the
		// caller wants: refused at once, never looked for elsewhere.
		opts := labOptions(offline)
		opts.Fingerprint = fingerprint(t)
		_, err := dispatcher.Dial(ctx, "alpha-001", opts)
		var fe *dispatcher.FingerprintError
		if !errors.As(err, &fe) || fe.Board != "alpha-001" {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("announced key differs", func(t *testing.T) {
		// A board announced with a key it cannot prove is refused.
		hidden := startLab(t, "delta", 1) // no mDNS of its own
		a := discovery.NewAdvertiser(discovery.AdvertiseConfig{Ifaces: []string{"lo"}})
		rec := discovery.Record{ID: "delta-000", Model: "sim", Protocol: proto.Version, BootID: "b",
			Port: port(t, hidden.Boards[0].Addr()), TLS: true, FP: fingerprint(t).Short()}
		if err := a.Start(ctx, rec); err != nil {
			t.Fatal(err)
		}
		defer a.Stop(ctx)
		_, err := dispatcher.Dial(ctx, "delta-000", labOptions(r))
		var fe *dispatcher.FingerprintError
		if !errors.As(err, &fe) || !errors.Is(err, dispatcher.ErrUntrusted) {
			t.Fatalf("got %v", err)
		}
	})
}

// TestResolveWithoutInterface: with no interface selected, mDNS leaves lo
// out (it is loopback) and has nothing to run on: the error for an id
// says where it looked and why, instead of an empty answer, and an id
// taken as a prefix of a board heard elsewhere (a serial port) is warned
// about, as another board on the network may share the prefix.
func TestResolveWithoutInterface(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	ctx := context.Background()
	_, err := (&dispatcher.Resolver{NoSerial: true}).Resolve(ctx, "lab-7")
	var ue *dispatcher.UnknownBoardError
	if !errors.As(err, &ue) || !errors.Is(err, dispatcher.ErrUnknownBoard) ||
		!strings.Contains(err.Error(), `unknown board "lab-7": no board answered within 2s (mDNS on no usable interface; check --iface`) {
		t.Fatalf("got %v", err)
	}
	if ue.Found.MDNS == nil || len(ue.Found.MDNS.Used) != 0 || !strings.Contains(ue.Found.Warning(), "lo: loopback, used only when named") {
		t.Fatalf("found %+v, warning %q", ue.Found, ue.Found.Warning())
	}
	var warnings []string
	// mDNS listens the whole bound for a prefix; the serial port's beacon
	// must come within it, also on a loaded machine.
	r := &dispatcher.Resolver{SerialPorts: []string{servePTY(t, "uart-board")}, Timeout: 20 * time.Second,
		Warn: func(m string) { warnings = append(warnings, m) }}
	if rec, err := r.Resolve(ctx, "uart"); err != nil || rec.ID != "uart-board" {
		t.Fatalf("resolve: %+v %v", rec, err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], `"uart" taken as uart-board: mDNS had no usable network interface`) {
		t.Fatalf("warnings %q", warnings)
	}
}

// TestResolveOnSerial: a board heard on a serial port is found by its id,
// or a prefix, and dialled there, with no network at all.
func TestResolveOnSerial(t *testing.T) {
	ctx := context.Background()
	port := servePTY(t, "uart-board")
	// The search ends when the port's beacon is heard: the bound only
	// fails a board that never beacons, also on a loaded machine.
	r := &dispatcher.Resolver{NoMDNS: true, SerialPorts: []string{port}, Timeout: time.Minute,
		Warn: func(m string) { t.Errorf("warning %q", m) }}
	rec, err := r.Resolve(ctx, "uart")
	if err != nil || rec.ID != "uart-board" || rec.Source != "serial" || rec.Address != "serial://"+port+"?baud=115200" {
		t.Fatalf("resolve: %+v %v", rec, err)
	}
	c, err := dispatcher.Dial(ctx, "uart-board", labOptions(r))
	if err != nil {
		t.Fatal(err)
	}
	if c.Hello().BoardID != "uart-board" {
		t.Fatalf("hello %+v", c.Hello())
	}
	c.Close() // the agent beacons again only without a session
	if addr, err := r.Address(ctx, "ws://127.0.0.1:1"); err != nil || addr != "ws://127.0.0.1:1" {
		t.Fatalf("an address resolves to %q %v", addr, err)
	}
	_, err = r.Address(ctx, "uart-board-2")
	var ue *dispatcher.UnknownBoardError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "boards seen: uart-board") || ue.Found.Where() != "serial ports" {
		t.Fatalf("unknown: %v", err)
	}
}

// TestDialCached: an id the cache knows is dialled at its address without
// discovery; an entry whose address now holds another board is not
// trusted for it (and discovery, here looking nowhere, is asked).
func TestDialCached(t *testing.T) {
	b := startBoard(t, agent.Config{})
	r := &dispatcher.Resolver{NoMDNS: true, NoSerial: true, CacheFile: filepath.Join(t.TempDir(), "boards.json")}
	ctx := context.Background()
	r.Remember("test", discovery.Record{ID: "test-board", Address: b.ws.URL()})
	for _, id := range []string{"test", "test-board"} {
		c, err := dispatcher.Dial(ctx, id, labOptions(r))
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if c.Hello().BoardID != "test-board" {
			t.Fatalf("%s: hello %+v", id, c.Hello())
		}
		c.Close()
	}
	r.Remember("lab-7", discovery.Record{ID: "lab-7", Address: b.ws.URL()})
	_, err := dispatcher.Dial(ctx, "lab-7", labOptions(r))
	var ue *dispatcher.UnknownBoardError
	if !errors.As(err, &ue) || ue.Found.Where() != "nowhere" {
		t.Fatalf("a stale entry: %v", err)
	}
	if _, err := dispatcher.Dial(ctx, "lab-7", dispatcher.DialOptions{Token: labToken}); !errors.Is(err, dispatcher.ErrNeedsDiscovery) {
		t.Fatalf("an id without a resolver: %v", err)
	}
}

// TestWatchSerial: Watch reports a board heard on a serial port as added.
func TestWatchSerial(t *testing.T) {
	port := servePTY(t, "uart-board")
	r := &dispatcher.Resolver{NoMDNS: true, SerialPorts: []string{port}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got []discovery.Event
	err := r.Watch(ctx, func(ev discovery.Event) error {
		got = append(got, ev)
		cancel() // one is enough
		return nil
	})
	if err != nil || len(got) != 1 || got[0].Op != discovery.Added || got[0].Record.ID != "uart-board" {
		t.Fatalf("watch: %+v %v", got, err)
	}
	stop := errors.New("stop")
	if err := r.Watch(context.Background(), func(discovery.Event) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("an error of the caller's: %v", err)
	}
}
