package discovery

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/betamos/zeroconf"

	"github.com/boardlink/boardlink/internal/testenv"
)

// The product's bounds (issue 3): removal after a goodbye, and after a
// board vanished without one with default settings.
const (
	goodbyeBound = 2 * time.Second
	vanishBound  = 15 * time.Second
)

// ------------------------------------------------------------- TXT

func TestTXTRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		rec  Record
		txt  []string
	}{
		{"minimal", Record{ID: "b1"}, []string{"id=b1", "model=", "proto=0", "caps=", "ver=", "boot="}},
		{"full", Record{ID: "board-7", Model: "imx8", Protocol: 1, Capabilities: []string{"exec", "ota"},
			Version: "1.2.3", BootID: "4f1c", Slot: "b", SlotVersion: "2.1.0", Labels: map[string]string{"rack": "r2", "a": "x=y"}},
			[]string{"id=board-7", "model=imx8", "proto=1", "caps=exec,ota", "ver=1.2.3", "boot=4f1c", "slot=b", "sver=2.1.0", "l.a=x=y", "l.rack=r2"}},
		{"unicode and spaces", Record{ID: "bänk 1", Model: "Raspberry Pi 5", Labels: map[string]string{"room": "Salle 2"}},
			[]string{"id=bänk 1", "model=Raspberry Pi 5", "proto=0", "caps=", "ver=", "boot=", "l.room=Salle 2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.rec.TXT(); !slices.Equal(got, c.txt) {
				t.Fatalf("TXT() = %q, want %q", got, c.txt)
			}
			back, err := ParseTXT(c.txt)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, c.rec) {
				t.Fatalf("ParseTXT = %+v, want %+v", back, c.rec)
			}
		})
	}
}

func TestParseTXTErrorsAndUnknownKeys(t *testing.T) {
	for _, txt := range [][]string{nil, {"model=x"}, {"id="}, {"id=b", "proto=one"}} {
		if _, err := ParseTXT(txt); err == nil {
			t.Errorf("ParseTXT(%q) = nil error", txt)
		}
	}
	r, err := ParseTXT([]string{"id=b", "future=1", "novalue", "l.=x"})
	if err != nil || r.ID != "b" || r.Labels != nil {
		t.Errorf("ParseTXT with unknown keys = %+v, %v", r, err)
	}
}

func FuzzParseTXT(f *testing.F) {
	f.Add("id=b1\x00model=imx8\x00proto=1\x00caps=a,b\x00l.k=v")
	f.Add("id=\x00proto=x")
	f.Add("l.=\x00=\x00id=é\x00slot=")
	f.Fuzz(func(t *testing.T, s string) {
		txt := strings.Split(s, "\x00")
		r, err := ParseTXT(txt)
		if err != nil {
			return
		}
		// What parses re-encodes to TXT that parses to the same record.
		again, err := ParseTXT(r.TXT())
		if err != nil {
			t.Fatalf("ParseTXT(%q) = %v after ParseTXT(%q) = %+v", r.TXT(), err, txt, r)
		}
		if !slices.Equal(again.TXT(), r.TXT()) {
			t.Fatalf("not stable: %q -> %q", r.TXT(), again.TXT())
		}
	})
}

// ------------------------------------------------------- pure helpers

func TestWSAddress(t *testing.T) {
	p := netip.MustParseAddr
	cases := []struct {
		addrs []netip.Addr
		tls   bool
		want  string
	}{
		{nil, true, ""},
		{[]netip.Addr{p("fd77::2"), p("10.77.0.2")}, true, "wss://10.77.0.2:7207"},
		{[]netip.Addr{p("fd77::2"), p("10.77.0.2")}, false, "ws://10.77.0.2:7207"},
		{[]netip.Addr{p("fe80::1%mdns0"), p("fd77::2")}, true, "wss://[fd77::2]:7207"},
		{[]netip.Addr{p("fe80::1%mdns0")}, false, "ws://[fe80::1%25mdns0]:7207"},
	}
	for _, c := range cases {
		if got := wsAddress(c.addrs, 7207, c.tls); got != c.want {
			t.Errorf("wsAddress(%v) = %q, want %q", c.addrs, got, c.want)
		}
	}
}

func TestHostLabel(t *testing.T) {
	for id, want := range map[string]string{
		"board1":                "boardlink-board1.local",
		"Bänk 1.x":              "boardlink-b-nk-1-x.local",
		strings.Repeat("a", 80): "boardlink-" + strings.Repeat("a", 53) + ".local",
	} {
		if got := hostLabel(id); got != want {
			t.Errorf("hostLabel(%q) = %q, want %q", id, got, want)
		}
	}
}

func TestCheckRecord(t *testing.T) {
	ok := testRecord("b1", 7207, "x")
	if err := checkRecord(ok); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]Record{
		"no id":    {Port: 1},
		"no port":  {ID: "b"},
		"long txt": {ID: "b", Port: 1, Labels: map[string]string{"k": strings.Repeat("v", 300)}},
	} {
		if err := checkRecord(r); err == nil {
			t.Errorf("%s: checkRecord = nil", name)
		}
	}
}

// The browser's own bookkeeping, driven with library events directly:
// restart coalescing within Grace, removal after Grace, drop-oldest.
func TestBrowserCoalescesAndDrops(t *testing.T) {
	testenv.CheckLeaks(t)
	svc := func(id, boot string) *zeroconf.Service {
		s := zeroconf.NewService(serviceType, id, 7207)
		s.Text = testRecord(id, 7207, boot).TXT()
		s.Addrs = []netip.Addr{netip.MustParseAddr("10.77.0.2")}
		return s
	}
	b := NewBrowser(BrowseConfig{Grace: 200 * time.Millisecond})
	b.handle(zeroconf.Event{Service: svc("b1", "1"), Op: zeroconf.OpAdded})
	b.handle(zeroconf.Event{Service: svc("b1", "1"), Op: zeroconf.OpUpdated}) // same: no event
	b.handle(zeroconf.Event{Service: svc("b1", "1"), Op: zeroconf.OpRemoved})
	b.handle(zeroconf.Event{Service: svc("b1", "2"), Op: zeroconf.OpAdded}) // restart within Grace
	b.handle(zeroconf.Event{Service: svc("b1", "2"), Op: zeroconf.OpRemoved})
	foreign := svc("foreign", "1")
	foreign.Text = []string{"path=/"} // no id: not a board
	b.handle(zeroconf.Event{Service: foreign, Op: zeroconf.OpAdded})
	want := []struct {
		op   Op
		boot string
	}{{Added, "1"}, {Updated, "2"}, {Removed, "2"}}
	for i, w := range want {
		select {
		case ev := <-b.Events():
			if ev.Op != w.op || ev.Record.BootID != w.boot || ev.Record.Address != "ws://10.77.0.2:7207" {
				t.Fatalf("event %d = %s boot %s addr %s, want %s boot %s", i, ev.Op, ev.Record.BootID, ev.Record.Address, w.op, w.boot)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("no event %d", i)
		}
	}
	if got := b.Boards(); len(got) != 0 {
		t.Fatalf("Boards() = %+v, want none", got)
	}

	// Nobody reads: the newest EventBuffer events are kept.
	for i := range EventBuffer + 10 {
		b.handle(zeroconf.Event{Service: svc(fmt.Sprintf("n%03d", i), "1"), Op: zeroconf.OpAdded})
	}
	if ev := <-b.Events(); ev.Record.ID != "n010" {
		t.Fatalf("oldest kept event is %s, want n010", ev.Record.ID)
	}
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	for range b.Events() {
	}
}

func TestIfaceErrors(t *testing.T) {
	ctx := context.Background()
	a := NewAdvertiser(AdvertiseConfig{Ifaces: []string{"nosuchif0"}})
	if err := a.Start(ctx, testRecord("b1", 7207, "1")); err == nil || !strings.Contains(err.Error(), "nosuchif0") {
		t.Fatalf("Start on a missing interface: %v", err)
	}
	b := NewBrowser(BrowseConfig{Ifaces: []string{"nosuchif0"}})
	if err := b.Start(ctx); err == nil {
		t.Fatal("browser Start on a missing interface succeeded")
	}
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := NewBrowser(BrowseConfig{Network: "tcp"}).Start(ctx); err == nil {
		t.Fatal("network tcp accepted")
	}
}

// ------------------------------------------------------------ the lab

// collectAdded waits until every id has been added; it fails on any other op.
func collectAdded(t *testing.T, s eventStream, timeout time.Duration, ids ...string) map[string]helperEvent {
	t.Helper()
	got := map[string]helperEvent{}
	deadline := time.Now().Add(timeout)
	for len(got) < len(ids) {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("added only %d of %v within %v", len(got), ids, timeout)
		}
		ev := s.next(left)
		if ev.Op != Added || !slices.Contains(ids, ev.Record.ID) {
			t.Fatalf("unexpected event %s %s", ev.Op, ev.Record.ID)
		}
		got[ev.Record.ID] = ev
	}
	return got
}

func checkBoard(t *testing.T, got Record, want Record, addr string) {
	t.Helper()
	if !slices.Equal(got.TXT(), want.TXT()) {
		t.Errorf("%s: TXT %q, want %q", want.ID, got.TXT(), want.TXT())
	}
	if got.Address != addr || got.Port != want.Port || got.Source != "mdns" {
		t.Errorf("%s: address %q port %d source %q, want %s %d mdns", want.ID, got.Address, got.Port, got.Source, addr, want.Port)
	}
}

// A host browser and two boards: both added with their TXT; Update with a
// new boot id is one Updated; an agent restart with a new boot id is one
// Updated; a clean stop is removed within 2 s; SIGKILL within 15 s with
// the default Expiry.
func TestLabAddUpdateRemove(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	host, b1, b2 := l.addNode("host", nodeOpts{}), l.addNode("b1", nodeOpts{}), l.addNode("b2", nodeOpts{})

	br := helper(t, "browse", host.NS, "browse", labIface, "udp")
	br.expect("ready", 10*time.Second)
	events := eventStream{br}

	adv1 := helper(t, "advertise board1", b1.NS, "advertise", labIface, "board1", "7207", "boot-1")
	adv2 := helper(t, "advertise board2", b2.NS, "advertise", labIface, "board2", "7208", "boot-1")
	adv1.expect("ready", 10*time.Second)
	adv2.expect("ready", 10*time.Second)
	added := collectAdded(t, events, 10*time.Second, "board1", "board2")
	checkBoard(t, added["board1"].Record, testRecord("board1", 7207, "boot-1"), fmt.Sprintf("ws://%s:7207", b1.IPv4))
	checkBoard(t, added["board2"].Record, testRecord("board2", 7208, "boot-1"), fmt.Sprintf("ws://%s:7208", b2.IPv4))

	// Update: a new boot id, no removal in between.
	adv1.send("update boot-2")
	t0 := time.Now()
	ev := events.next(5 * time.Second)
	if ev.Op != Updated || ev.Record.ID != "board1" {
		t.Fatalf("after Update: %s %s, want updated board1", ev.Op, ev.Record.ID)
	}
	checkBoard(t, ev.Record, testRecord("board1", 7207, "boot-2"), fmt.Sprintf("ws://%s:7207", b1.IPv4))
	t.Logf("Update seen as updated after %v", time.Unix(0, ev.At).Sub(t0).Round(time.Millisecond))

	// Agent restart: goodbye, then a new process with a new boot id.
	adv2.send("stop")
	adv2.expect("stopped", 5*time.Second)
	t0 = time.Now()
	adv2 = helper(t, "advertise board2 again", b2.NS, "advertise", labIface, "board2", "7208", "boot-2")
	adv2.expect("ready", 10*time.Second)
	ev = events.next(5 * time.Second)
	if ev.Op != Updated || ev.Record.ID != "board2" {
		t.Fatalf("after restart: %s %s, want updated board2", ev.Op, ev.Record.ID)
	}
	checkBoard(t, ev.Record, testRecord("board2", 7208, "boot-2"), fmt.Sprintf("ws://%s:7208", b2.IPv4))
	t.Logf("restart seen as updated %v after the old agent stopped", time.Unix(0, ev.At).Sub(t0).Round(time.Millisecond))

	// Clean stop: goodbye.
	t0 = time.Now()
	adv1.send("stop")
	ev = events.next(goodbyeBound + time.Second)
	if ev.Op != Removed || ev.Record.ID != "board1" {
		t.Fatalf("after stop: %s %s, want removed board1", ev.Op, ev.Record.ID)
	}
	took := time.Unix(0, ev.At).Sub(t0)
	t.Logf("removed %v after a clean stop (bound %v)", took.Round(time.Millisecond), goodbyeBound)
	if took > goodbyeBound {
		t.Errorf("removal after goodbye took %v, more than %v", took, goodbyeBound)
	}

	// SIGKILL: no goodbye; the default Expiry bounds it.
	t0 = time.Now()
	adv2.kill()
	ev = events.next(vanishBound + 2*time.Second)
	if ev.Op != Removed || ev.Record.ID != "board2" {
		t.Fatalf("after SIGKILL: %s %s, want removed board2", ev.Op, ev.Record.ID)
	}
	took = time.Unix(0, ev.At).Sub(t0)
	t.Logf("removed %v after SIGKILL (Expiry %v + Grace %v; bound %v)", took.Round(time.Millisecond), DefaultExpiry, DefaultGrace, vanishBound)
	if took > vanishBound {
		t.Errorf("removal after SIGKILL took %v, more than %v", took, vanishBound)
	}
}

// A board with only IPv6 (a ULA and its link-local address) is found by a
// browser on udp6, with an IPv6 address to dial.
func TestLabIPv6Only(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	host, b1 := l.addNode("host", nodeOpts{noIPv4: true}), l.addNode("b1", nodeOpts{noIPv4: true})

	br := helper(t, "browse udp6", host.NS, "browse", labIface, "udp6")
	br.expect("ready", 10*time.Second)
	adv := helper(t, "advertise board6", b1.NS, "advertise", labIface, "board6", "7300", "boot-1")
	adv.expect("ready", 10*time.Second)
	ev := eventStream{br}.waitFor(Added, "board6", 10*time.Second)
	checkBoard(t, ev.Record, testRecord("board6", 7300, "boot-1"), fmt.Sprintf("ws://[%s]:7300", b1.IPv6))
	var linkLocal bool
	for _, a := range ev.Record.Addrs {
		if a.IsLinkLocalUnicast() {
			linkLocal = true
			if a.Zone() != labIface {
				t.Errorf("link-local %v has zone %q, want %q", a, a.Zone(), labIface)
			}
		}
	}
	if !linkLocal {
		t.Errorf("no link-local address in %v", ev.Record.Addrs)
	}
	adv.send("stop")
	eventStream{br}.waitFor(Removed, "board6", goodbyeBound+time.Second)
}

// ------------------------------------------------------------ loopback

// Advertise and browse pinned to lo, without root: in a private network
// namespace whose lo can multicast (the host's usually cannot).
func TestLoopback(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	// The first socket of a process starts Go's netpoller (an epoll fd and
	// an eventfd, kept for good); start it before the leak check counts.
	if pc, err := net.ListenPacket("udp4", "127.0.0.1:0"); err == nil {
		pc.Close()
	}
	testenv.CheckLeaks(t)
	ctx := context.Background()
	b := NewBrowser(BrowseConfig{Ifaces: []string{"lo"}})
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	a := NewAdvertiser(AdvertiseConfig{Ifaces: []string{"lo"}})
	rec := testRecord("lo-board", 7207, "boot-1")
	if err := a.Start(ctx, rec); err != nil {
		t.Fatal(err)
	}
	next := func() Event {
		t.Helper()
		select {
		case ev := <-b.Events():
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no event on lo within 5 s")
			return Event{}
		}
	}
	ev := next()
	if ev.Op != Added {
		t.Fatalf("first event %s", ev.Op)
	}
	checkBoard(t, ev.Record, rec, "ws://127.0.0.1:7207")
	if got := b.Boards(); len(got) != 1 || got[0].ID != "lo-board" {
		t.Fatalf("Boards() = %+v", got)
	}
	// The one-shot helper sees it too (by querying: the announcements are over).
	boards, err := Browse(ctx, BrowseConfig{Ifaces: []string{"lo"}}, 500*time.Millisecond)
	if err != nil || len(boards) != 1 || boards[0].ID != "lo-board" {
		t.Fatalf("Browse = %+v, %v", boards, err)
	}
	rec.BootID = "boot-2"
	if err := a.Update(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if ev = next(); ev.Op != Updated || ev.Record.BootID != "boot-2" {
		t.Fatalf("after Update: %s %s", ev.Op, ev.Record.BootID)
	}
	t0 := time.Now()
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if ev = next(); ev.Op != Removed {
		t.Fatalf("after Stop: %s", ev.Op)
	}
	t.Logf("removed %v after Stop", time.Since(t0).Round(time.Millisecond))
}

// ----------------------------------------------------------- benchmark

// BenchmarkDiscover50: 50 advertisers in one board namespace (one helper
// process), a browser in the host namespace. Reports the seconds until all
// 50 are added when the browser is already running (they announce), and
// when it starts after them (it queries).
func BenchmarkDiscover50(b *testing.B) {
	const n = 50
	l := newLab(b)
	host, boards := l.addNode("host", nodeOpts{}), l.addNode("boards", nodeOpts{})
	var announce, query time.Duration
	waitAll := func(p *proc) {
		seen := map[string]bool{}
		for len(seen) < n {
			if ev := (eventStream{p}).next(30 * time.Second); ev.Op == Added {
				seen[ev.Record.ID] = true
			}
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		warm := helper(b, "browse (running)", host.NS, "browse", labIface, "udp")
		warm.expect("ready", 10*time.Second)
		t0 := time.Now()
		adv := helper(b, "advertise 50", boards.NS, "advertise", labIface, fmt.Sprintf("b%d", i), "8000", "boot", fmt.Sprint(n))
		waitAll(warm)
		announce += time.Since(t0)

		t0 = time.Now()
		cold := helper(b, "browse (new)", host.NS, "browse", labIface, "udp")
		waitAll(cold)
		query += time.Since(t0)

		adv.send("stop")
		adv.expect("stopped", 10*time.Second)
		cold.close(b)
		warm.close(b)
		adv.close(b)
	}
	b.ReportMetric(announce.Seconds()/float64(b.N), "s/50-announced")
	b.ReportMetric(query.Seconds()/float64(b.N), "s/50-queried")
}
