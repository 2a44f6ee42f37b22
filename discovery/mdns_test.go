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

	"github.com/miekg/dns"

	"github.com/boardlink/boardlink/internal/testenv"
)

// eventGuard bounds a lab test's wait for an event: a guard against a
// hang, far beyond any removal time. The times themselves are logged; the
// schedule that bounds them is checked in logical time by
// TestBrowserLiveness, and measured by BenchmarkIdleTraffic.
const eventGuard = 30 * time.Second

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

// fakeIface is the interface index the unit tests pretend packets came
// in on (lo, which always exists).
func fakeIface(t testing.TB) *ifaceAddrs {
	t.Helper()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	return &ifaceAddrs{Interface: *lo}
}

// announcement is what an Advertiser multicasts for rec from addr: every
// record, TTLs scaled (0: goodbye).
func announcement(t testing.TB, rec Record, addr string, scale uint32) *dns.Msg {
	t.Helper()
	s := &service{rec: rec, hb: hbInfo{Every: DefaultHeartbeat}}
	ifc := &ifaceAddrs{v4: []netip.Addr{netip.MustParseAddr(addr)}}
	m := newResponse()
	m.Answer = s.records(ifc, scale)
	return roundTrip(t, m)
}

// roundTrip packs and decodes m, as the network would.
func roundTrip(t testing.TB, m *dns.Msg) *dns.Msg {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	back, err := decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return back
}

// feed hands the browser a packet from src, as its socket would.
func feed(b *Browser, ifc *ifaceAddrs, m *dns.Msg, src string, at time.Time) {
	feedFam(b, ifc, m, src, v4, at)
}

// feedFam is feed on the socket of family f.
func feedFam(b *Browser, ifc *ifaceAddrs, m *dns.Msg, src string, f family, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ifaces[ifc.Index] = ifc
	b.handleLocked(m, packet{src: netip.AddrPortFrom(netip.MustParseAddr(src), mdnsPort), ifindex: ifc.Index, fam: f}, at)
}

func nextEvent(t *testing.T, b *Browser) Event {
	t.Helper()
	select {
	case ev := <-b.Events():
		return ev
	default:
		t.Fatal("no event")
		return Event{}
	}
}

func noEvent(t *testing.T, b *Browser) {
	t.Helper()
	select {
	case ev := <-b.Events():
		t.Fatalf("unexpected event %s %s", ev.Op, ev.Record.ID)
	default:
	}
}

// The browser's own bookkeeping, driven with packets directly: restart
// coalescing within Grace, removal after Grace, drop-oldest.
func TestBrowserCoalescesAndDrops(t *testing.T) {
	ifc := fakeIface(t)
	b := NewBrowser(BrowseConfig{Grace: 200 * time.Millisecond})
	t0 := time.Now()
	feed(b, ifc, announcement(t, testRecord("b1", 7207, "1"), "10.77.0.2", 1), "10.77.0.2", t0)
	feed(b, ifc, announcement(t, testRecord("b1", 7207, "1"), "10.77.0.2", 1), "10.77.0.2", t0) // same: no event
	feed(b, ifc, announcement(t, testRecord("b1", 7207, "1"), "10.77.0.2", 0), "10.77.0.2", t0) // goodbye
	feed(b, ifc, announcement(t, testRecord("b1", 7207, "2"), "10.77.0.2", 1), "10.77.0.2", t0) // restart within Grace
	feed(b, ifc, announcement(t, testRecord("b1", 7207, "2"), "10.77.0.2", 0), "10.77.0.2", t0)
	foreign := newResponse()
	foreign.Answer = []dns.RR{&dns.TXT{Hdr: header(instancePath("foreign"), dns.TypeTXT, true, 120), Txt: []string{"path=/"}}}
	feed(b, ifc, roundTrip(t, foreign), "10.77.0.3", t0) // no id: not a board
	b.tick(t0.Add(300 * time.Millisecond))               // Grace is over
	want := []struct {
		op   Op
		boot string
	}{{Added, "1"}, {Updated, "2"}, {Removed, "2"}}
	for i, w := range want {
		ev := nextEvent(t, b)
		if ev.Op != w.op || ev.Record.BootID != w.boot || ev.Record.Address != "ws://10.77.0.2:7207" {
			t.Fatalf("event %d = %s boot %s addr %s, want %s boot %s", i, ev.Op, ev.Record.BootID, ev.Record.Address, w.op, w.boot)
		}
	}
	noEvent(t, b)
	if got := b.Boards(); len(got) != 0 {
		t.Fatalf("Boards() = %+v, want none", got)
	}

	// Nobody reads: the newest EventBuffer events are kept.
	for i := range EventBuffer + 10 {
		feed(b, ifc, announcement(t, testRecord(fmt.Sprintf("n%03d", i), 7207, "1"), "10.77.0.2", 1), "10.77.0.2", t0)
	}
	if ev := nextEvent(t, b); ev.Record.ID != "n010" {
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

// twoBoards makes a lab of a host, where a browser runs, and two board
// namespaces (l.nodes[1] and [2]) advertising id1 on port 7207 and id2
// on 7208 (boot id boot-1), and waits until the browser added both.
func twoBoards(t *testing.T, id1, id2 string) (*lab, eventStream, map[string]helperEvent, [2]*proc) {
	t.Helper()
	l := newLab(t)
	host, b1, b2 := l.addNode("host", nodeOpts{}), l.addNode("b1", nodeOpts{}), l.addNode("b2", nodeOpts{})
	br := helper(t, "browse", host.NS, "browse", labIface, "udp")
	br.expect("ready", 10*time.Second)
	events := eventStream{br}
	advs := [2]*proc{
		helper(t, "advertise "+id1, b1.NS, "advertise", labIface, id1, "7207", "boot-1"),
		helper(t, "advertise "+id2, b2.NS, "advertise", labIface, id2, "7208", "boot-1"),
	}
	for _, a := range advs {
		a.expect("ready", 10*time.Second)
	}
	return l, events, collectAdded(t, events, 10*time.Second, id1, id2), advs
}

// A host browser and two boards: both added with their TXT; Update with a
// new boot id is one Updated; an agent restart with a new boot id is one
// Updated; a clean stop and a SIGKILL are removed (the times are logged).
func TestLabAddUpdateRemove(t *testing.T) {
	t.Parallel()
	l, events, added, advs := twoBoards(t, "board1", "board2")
	b1, b2, adv1, adv2 := l.nodes[1], l.nodes[2], advs[0], advs[1]
	checkBoard(t, added["board1"].Record, testRecord("board1", 7207, "boot-1"), fmt.Sprintf("ws://%s:7207", b1.IPv4))
	checkBoard(t, added["board2"].Record, testRecord("board2", 7208, "boot-1"), fmt.Sprintf("ws://%s:7208", b2.IPv4))
	shown := map[string]Record{"board1": added["board1"].Record, "board2": added["board2"].Record}

	// Update: a new boot id, no removal in between.
	adv1.send("update boot-2")
	t0 := time.Now()
	ev := events.nextNews(5*time.Second, shown)
	if ev.Op != Updated || ev.Record.ID != "board1" {
		t.Fatalf("after Update: %s %s, want updated board1", ev.Op, ev.Record.ID)
	}
	checkBoard(t, ev.Record, testRecord("board1", 7207, "boot-2"), fmt.Sprintf("ws://%s:7207", b1.IPv4))
	t.Logf("Update seen as updated after %v", time.Unix(0, ev.At).Sub(t0).Round(time.Millisecond))

	// Agent restart: goodbye, then a new process with a new boot id (started
	// ahead, so that the restart takes what a service manager's does).
	again := helper(t, "advertise board2 again", b2.NS, "advertise", labIface, "board2", "7208", "boot-2", "on-go")
	again.expect("waiting", 10*time.Second)
	adv2.send("stop")
	adv2.expect("stopped", 5*time.Second)
	t0 = time.Now()
	adv2 = again
	adv2.send("go")
	adv2.expect("ready", 10*time.Second)
	ev = events.nextNews(5*time.Second, shown)
	if ev.Op != Updated || ev.Record.ID != "board2" {
		t.Fatalf("after restart: %s %s, want updated board2", ev.Op, ev.Record.ID)
	}
	checkBoard(t, ev.Record, testRecord("board2", 7208, "boot-2"), fmt.Sprintf("ws://%s:7208", b2.IPv4))
	t.Logf("restart seen as updated %v after the old agent stopped", time.Unix(0, ev.At).Sub(t0).Round(time.Millisecond))

	// Clean stop: goodbye.
	t0 = time.Now()
	adv1.send("stop")
	ev = events.nextNews(eventGuard, shown)
	if ev.Op != Removed || ev.Record.ID != "board1" {
		t.Fatalf("after stop: %s %s, want removed board1", ev.Op, ev.Record.ID)
	}
	took := time.Unix(0, ev.At).Sub(t0)
	t.Logf("removed %v after a clean stop (Grace %v)", took.Round(time.Millisecond), DefaultGrace)

	// SIGKILL: no goodbye; the default Expiry bounds it.
	t0 = time.Now()
	adv2.kill()
	ev = events.nextNews(eventGuard, shown)
	if ev.Op != Removed || ev.Record.ID != "board2" {
		t.Fatalf("after SIGKILL: %s %s, want removed board2", ev.Op, ev.Record.ID)
	}
	took = time.Unix(0, ev.At).Sub(t0)
	t.Logf("removed %v after SIGKILL (heartbeat %v + %v late + %v asking)", took.Round(time.Millisecond), DefaultHeartbeat, hbSlack, probeWindow)
}

// A reboot the agent announced (Advertiser.Reboot) is one Updated with
// the new boot id, however long it takes within the reboot window: here
// longer than a board that was SIGKILLed at the same moment takes to be
// removed, so past the removal a reboot without the announcement gets.
func TestLabAnnouncedReboot(t *testing.T) {
	t.Parallel()
	l, events, _, advs := twoBoards(t, "rb", "gone")
	rb, gone := advs[0], advs[1]

	rb.send("reboot")
	rb.expect("rebooting", 5*time.Second)
	gone.kill()
	if ev := events.next(eventGuard); ev.Op != Removed || ev.Record.ID != "gone" {
		t.Fatalf("while rb reboots: %s %s, want only the SIGKILLed board removed", ev.Op, ev.Record.ID)
	}
	helper(t, "advertise rb again", l.nodes[1].NS, "advertise", labIface, "rb", "7207", "boot-2").expect("ready", 10*time.Second)
	ev := events.next(eventGuard)
	if ev.Op != Updated || ev.Record.ID != "rb" || ev.Record.BootID != "boot-2" {
		t.Fatalf("back from the reboot: %s %s boot %s, want updated rb boot-2", ev.Op, ev.Record.ID, ev.Record.BootID)
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
	eventStream{br}.waitFor(Removed, "board6", eventGuard)
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
