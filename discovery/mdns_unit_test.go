package discovery

import (
	"encoding/hex"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// A record whose TXT id is not its instance name is refused, reported as
// such (an event and Refusals), and never listed; nor is one whose id
// could be a path.
func TestBrowserRefusesImpostors(t *testing.T) {
	ifc := fakeIface(t)
	b := NewBrowser(BrowseConfig{})
	t0 := time.Now()
	feed(b, ifc, announcement(t, testRecord("board-2", 7207, "1"), "10.77.0.2", 1), "10.77.0.2", t0)
	if ev := nextEvent(t, b); ev.Op != Added || ev.Record.ID != "board-2" {
		t.Fatalf("got %s %s", ev.Op, ev.Record.ID)
	}
	impostor := announcement(t, testRecord("board-2", 17454, "x"), "10.77.0.9", 1)
	rename(impostor, "board-2", "pub-mismatch")
	feed(b, ifc, impostor, "10.77.0.9", t0)
	ev := nextEvent(t, b)
	if ev.Op != Refused || ev.Record.ID != "board-2" || !strings.Contains(ev.Reason, `"pub-mismatch" from 10.77.0.9: its TXT claims id "board-2"`) {
		t.Fatalf("got %s %q %+v", ev.Op, ev.Reason, ev.Record)
	}
	noEvent(t, b)
	feed(b, ifc, impostor, "10.77.0.9", t0) // reported once
	noEvent(t, b)

	hostile := testRecord("x", 7207, "1")
	hostile.ID = "../../escape"
	m := newResponse()
	s := &service{rec: hostile}
	m.Answer = s.records(&ifaceAddrs{v4: []netip.Addr{netip.MustParseAddr("10.77.0.8")}}, 1)
	feed(b, ifc, roundTrip(t, m), "10.77.0.8", t0)
	if ev := nextEvent(t, b); ev.Op != Refused || !strings.Contains(ev.Reason, "invalid board id") {
		t.Fatalf("hostile id: %s %q", ev.Op, ev.Reason)
	}
	if got := b.Boards(); len(got) != 1 || got[0].ID != "board-2" || got[0].Port != 7207 || len(got[0].Conflict) != 0 {
		t.Fatalf("Boards() = %+v", got)
	}
	if rf := b.Refusals(); len(rf) != 2 || rf[0].Name != "pub-mismatch" || rf[1].Name != "../../escape" {
		t.Fatalf("Refusals() = %+v", rf)
	}
}

// rename makes m's records about instance from be about instance to,
// leaving their data (the TXT id) as it was.
func rename(m *dns.Msg, from, to string) {
	for _, rr := range append(m.Answer, m.Extra...) {
		h := rr.Header()
		h.Name = strings.Replace(h.Name, from, to, 1)
		if ptr, ok := rr.(*dns.PTR); ok {
			ptr.Ptr = strings.Replace(ptr.Ptr, from, to, 1)
		}
	}
}

// Two boards announcing one id are a conflict, with both addresses; when
// one goes, the other is listed alone again.
func TestBrowserConflict(t *testing.T) {
	ifc := fakeIface(t)
	b := NewBrowser(BrowseConfig{Grace: -1})
	t0 := time.Now()
	feed(b, ifc, announcement(t, testRecord("board-2", 7207, "1"), "10.77.0.2", 1), "10.77.0.2", t0)
	feed(b, ifc, announcement(t, testRecord("board-2", 7207, "9"), "10.77.0.3", 1), "10.77.0.3", t0)
	if ev := nextEvent(t, b); ev.Op != Added {
		t.Fatalf("got %s", ev.Op)
	}
	ev := nextEvent(t, b)
	want := []string{"ws://10.77.0.2:7207", "ws://10.77.0.3:7207"}
	if ev.Op != Conflict || !slices.Equal(ev.Record.Conflict, want) || ev.Record.Address != want[0] {
		t.Fatalf("got %s %+v", ev.Op, ev.Record)
	}
	if got := b.Boards(); len(got) != 1 || !slices.Equal(got[0].Conflict, want) {
		t.Fatalf("Boards() = %+v", got)
	}
	feed(b, ifc, announcement(t, testRecord("board-2", 7207, "1"), "10.77.0.2", 0), "10.77.0.2", t0)
	b.tick(t0)
	ev = nextEvent(t, b)
	if ev.Op != Updated || ev.Record.Conflict != nil || ev.Record.Address != want[1] || ev.Record.BootID != "9" {
		t.Fatalf("after a goodbye: %s %+v", ev.Op, ev.Record)
	}
}

// A board is added only once it has an address: SRV and TXT alone make
// the browser ask for the host's addresses, and their answer adds it.
func TestBrowserAddsWithAddressOnly(t *testing.T) {
	ifc := fakeIface(t)
	b := NewBrowser(BrowseConfig{})
	t0 := time.Now()
	full := announcement(t, testRecord("burst-1", 7207, "1"), "10.77.0.5", 1)
	var addrs, rest []dns.RR
	for _, rr := range full.Answer {
		if rr.Header().Rrtype == dns.TypeA {
			addrs = append(addrs, rr)
		} else {
			rest = append(rest, rr)
		}
	}
	m := newResponse()
	m.Answer = rest
	feed(b, ifc, roundTrip(t, m), "10.77.0.5", t0)
	noEvent(t, b)
	b.mu.Lock()
	in := b.insts["burst-1"]
	qs := b.resolveQuestionsLocked(in)
	b.mu.Unlock()
	if len(qs) != 2 || qs[0].Qtype != dns.TypeA || qs[0].Name != "boardlink-burst-1.local." {
		t.Fatalf("asks %v", qs)
	}
	m = newResponse()
	m.Answer = addrs
	feed(b, ifc, roundTrip(t, m), "10.77.0.5", t0.Add(10*time.Millisecond))
	if ev := nextEvent(t, b); ev.Op != Added || ev.Record.Address != "ws://10.77.0.5:7207" {
		t.Fatalf("got %s %+v", ev.Op, ev.Record)
	}
}

// A board that heartbeats is asked when a heartbeat is late and removed
// when it does not answer: within Heartbeat + hbSlack + probeWindow of
// the last word from it. One that announced a reboot is kept until its
// reboot window ends, and its return is one Updated.
func TestBrowserLiveness(t *testing.T) {
	ifc := fakeIface(t)
	b := NewBrowser(BrowseConfig{})
	t0 := time.Now()
	feed(b, ifc, announcement(t, testRecord("hb-1", 7207, "1"), "10.77.0.6", 1), "10.77.0.6", t0)
	feed(b, ifc, announcement(t, testRecord("hb-2", 7208, "1"), "10.77.0.7", 1), "10.77.0.7", t0)
	nextEvent(t, b)
	nextEvent(t, b)
	probes := func(id string) int {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.insts[id].origins[0].probes
	}
	b.tick(t0.Add(DefaultHeartbeat + hbSlack - 50*time.Millisecond))
	if probes("hb-1") != 0 {
		t.Fatal("asked before the heartbeat was late")
	}
	// hb-2 reboots.
	s := &service{rec: testRecord("hb-2", 7208, "1"), hb: hbInfo{Every: DefaultHeartbeat, Reboot: time.Minute}}
	m := newResponse()
	m.Answer = []dns.RR{s.hbRR()}
	feed(b, ifc, roundTrip(t, m), "10.77.0.7", t0.Add(time.Second))
	b.tick(t0.Add(DefaultHeartbeat + hbSlack + 10*time.Millisecond))
	if probes("hb-1") != 1 {
		t.Fatal("not asked when the heartbeat was late")
	}
	gone := t0.Add(DefaultHeartbeat + hbSlack + probeWindow)
	b.tick(gone.Add(-time.Millisecond))
	noEvent(t, b)
	b.tick(gone)
	if ev := nextEvent(t, b); ev.Op != Removed || ev.Record.ID != "hb-1" {
		t.Fatalf("got %s %s", ev.Op, ev.Record.ID)
	}
	b.tick(t0.Add(50 * time.Second))
	noEvent(t, b)
	feed(b, ifc, announcement(t, testRecord("hb-2", 7208, "2"), "10.77.0.7", 1), "10.77.0.7", t0.Add(55*time.Second))
	if ev := nextEvent(t, b); ev.Op != Updated || ev.Record.BootID != "2" {
		t.Fatalf("back from its reboot: %s %+v", ev.Op, ev.Record)
	}
	noEvent(t, b)
}

// A responder sends each announcement over IPv4 and IPv6; the browser
// reads them on two goroutines, so the IPv6 copy of an old announcement
// may come after the IPv4 copy of the new one. It is not taken as news
// (TestLabAddUpdateRemove once saw board1 flip back to its old boot id),
// but the same TXT coming back later, or first on the other family, is.
func TestBrowserLateCopyFromOtherFamily(t *testing.T) {
	ifc := fakeIface(t)
	b := NewBrowser(BrowseConfig{})
	const v4src, v6src = "10.77.0.2", "fe80::2"
	var bothAt func(port int, boot string) *dns.Msg
	both := func(boot string) *dns.Msg { return bothAt(7207, boot) }
	bothAt = func(port int, boot string) *dns.Msg {
		s := &service{rec: testRecord("board1", port, boot), hb: hbInfo{Every: DefaultHeartbeat}}
		m := newResponse()
		m.Answer = s.records(&ifaceAddrs{v4: []netip.Addr{netip.MustParseAddr(v4src)}, v6: []netip.Addr{netip.MustParseAddr(v6src)}}, 1)
		return roundTrip(t, m)
	}
	t0 := time.Now()
	feedFam(b, ifc, both("1"), v4src, v4, t0)
	feedFam(b, ifc, both("1"), v6src, v6, t0)
	if ev := nextEvent(t, b); ev.Op != Added || ev.Record.BootID != "1" {
		t.Fatalf("got %s %+v", ev.Op, ev.Record)
	}
	feedFam(b, ifc, both("2"), v4src, v4, t0.Add(10*time.Millisecond))
	if ev := nextEvent(t, b); ev.Op != Updated || ev.Record.BootID != "2" {
		t.Fatalf("update: %s %+v", ev.Op, ev.Record)
	}
	feedFam(b, ifc, both("1"), v6src, v6, t0.Add(11*time.Millisecond)) // the late copy
	feedFam(b, ifc, both("2"), v6src, v6, t0.Add(12*time.Millisecond))
	noEvent(t, b)
	if got := b.Boards(); len(got) != 1 || got[0].BootID != "2" {
		t.Fatalf("Boards() = %+v", got)
	}
	// Past the second, the old TXT again is news, whichever family says it first.
	feedFam(b, ifc, both("1"), v6src, v6, t0.Add(2*time.Second))
	if ev := nextEvent(t, b); ev.Op != Updated || ev.Record.BootID != "1" {
		t.Fatalf("back to 1: %s %+v", ev.Op, ev.Record)
	}
	feedFam(b, ifc, both("1"), v4src, v4, t0.Add(2*time.Second))
	noEvent(t, b)
	// A restart on another port: the late IPv6 copy of the old SRV does
	// not move the board back to its old port either.
	t1 := t0.Add(4 * time.Second)
	feedFam(b, ifc, bothAt(7300, "3"), v4src, v4, t1)
	if ev := nextEvent(t, b); ev.Op != Updated || ev.Record.BootID != "3" || ev.Record.Port != 7300 {
		t.Fatalf("restart on 7300: %s %+v", ev.Op, ev.Record)
	}
	feedFam(b, ifc, both("1"), v6src, v6, t1.Add(time.Millisecond)) // the late copy
	feedFam(b, ifc, bothAt(7300, "3"), v6src, v6, t1.Add(2*time.Millisecond))
	noEvent(t, b)
	if got := b.Boards(); len(got) != 1 || got[0].Port != 7300 {
		t.Fatalf("Boards() = %+v, want port 7300", got)
	}
}

// The responder answers a PTR question with every record of the board
// in one group, leaves out what the asker knows, and answers a legacy
// unicast question with TTLs of at most 10 s and the question repeated.
func TestResponderAnswers(t *testing.T) {
	s := &service{rec: testRecord("r-1", 7207, "1"), hb: hbInfo{Every: DefaultHeartbeat}}
	ifc := &ifaceAddrs{v4: []netip.Addr{netip.MustParseAddr("10.77.0.2")}, v6: []netip.Addr{netip.MustParseAddr("fd77::2")}}
	q := dns.Question{Name: serviceName, Qtype: dns.TypePTR, Qclass: dns.ClassINET}
	ans, extra := s.answer(q, ifc)
	types := func(rrs []dns.RR) (out []uint16) {
		for _, rr := range rrs {
			out = append(out, rr.Header().Rrtype)
		}
		return out
	}
	if !slices.Equal(types(ans), []uint16{dns.TypePTR}) ||
		!slices.Equal(types(extra), []uint16{dns.TypeSRV, dns.TypeTXT, dns.TypeA, dns.TypeAAAA, dns.TypeTXT}) {
		t.Fatalf("answer %v extra %v", types(ans), types(extra))
	}
	ptr := ans[0]
	knowns := knownSet([]dns.RR{&dns.PTR{Hdr: header(serviceName, dns.TypePTR, false, ttlOther/2), Ptr: instancePath("r-1")}})
	if !known(ptr, knowns) {
		t.Fatal("a known answer with half its TTL left does not suppress")
	}
	knowns = knownSet([]dns.RR{&dns.PTR{Hdr: header(serviceName, dns.TypePTR, false, ttlOther/2-1), Ptr: instancePath("r-1")}})
	if known(ptr, knowns) {
		t.Fatal("a known answer with less than half its TTL left suppresses")
	}
}

// packQuery: known answers that do not fit one packet continue in more,
// every one but the last truncated (TC), each within maxPacket.
func TestPackQuery(t *testing.T) {
	var knownRRs []dns.RR
	for i := range 200 {
		knownRRs = append(knownRRs, &dns.PTR{Hdr: header(serviceName, dns.TypePTR, false, ttlOther),
			Ptr: instancePath("board-" + strings.Repeat("x", i%20) + string(rune('a'+i%26)))})
	}
	pkts, err := packQuery([]dns.Question{{Name: serviceName, Qtype: dns.TypePTR, Qclass: dns.ClassINET}}, knownRRs)
	if err != nil || len(pkts) < 3 {
		t.Fatalf("%d packets, %v", len(pkts), err)
	}
	total := 0
	for i, p := range pkts {
		m, err := decode(p)
		if err != nil || len(p) > maxPacket || m.Truncated != (i < len(pkts)-1) || (i == 0) != (len(m.Question) == 1) {
			t.Fatalf("packet %d: %d bytes, tc %v, %d questions, %v", i, len(p), m.Truncated, len(m.Question), err)
		}
		total += len(m.Answer)
	}
	if total != len(knownRRs) {
		t.Fatalf("%d known answers sent of %d", total, len(knownRRs))
	}
}

func TestLabels(t *testing.T) {
	for _, s := range []string{"board-1", "a.b", `back\slash`, "sp ace", "\x1b[31m", "é"} {
		path := instancePath(s)
		got, ok := instanceOf(path, instSuffix)
		if !ok || got != s {
			t.Errorf("instanceOf(instancePath(%q) = %q) = %q %v", s, path, got, ok)
		}
		if got, ok := instanceOf(hbPath(s), hbSuffix); !ok || got != s {
			t.Errorf("hb of %q: %q %v", s, got, ok)
		}
	}
	for _, name := range []string{serviceName, "a.b." + serviceName, `a\.` + serviceName[1:], "x" + hbSuffix} {
		if got, ok := instanceOf(name, instSuffix); ok {
			t.Errorf("instanceOf(%q) = %q", name, got)
		}
	}
}

func TestCheckID(t *testing.T) {
	for _, id := range []string{"board-1", "lab_7.rack2", strings.Repeat("a", 63)} {
		if err := CheckID(id); err != nil {
			t.Errorf("%q: %v", id, err)
		}
	}
	for _, id := range []string{"", ".", "..", "../../escape", "a/b", "a b", "\x1b[31m", "é", strings.Repeat("a", 64), "ws://x"} {
		if err := CheckID(id); err == nil {
			t.Errorf("%q accepted", id)
		}
	}
}

// FuzzDecode: whatever arrives on the mDNS port, the browser and the
// responder take it without panicking.
func FuzzDecode(f *testing.F) {
	for _, m := range []*dns.Msg{
		announcement(f, testRecord("b1", 7207, "1"), "10.77.0.2", 1),
		announcement(f, testRecord("b1", 7207, "1"), "10.77.0.2", 0),
	} {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	q, err := packQuery([]dns.Question{{Name: serviceName, Qtype: dns.TypePTR, Qclass: dns.ClassINET}},
		[]dns.RR{&dns.PTR{Hdr: header(serviceName, dns.TypePTR, false, 100), Ptr: instancePath("b1")}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(q[0])
	ifc := fakeIface(f)
	ifc.v4 = []netip.Addr{netip.MustParseAddr("10.77.0.1")}
	f.Fuzz(func(t *testing.T, data []byte) {
		b := NewBrowser(BrowseConfig{})
		p := packet{data: data, src: netip.MustParseAddrPort("10.77.0.2:5353"), ifindex: ifc.Index, fam: v4}
		b.ifaces[ifc.Index] = ifc
		b.handle(p)
		b.tick(time.Now().Add(time.Minute))
		_ = b.Boards()
		r := &responder{key: responderKey{heartbeat: DefaultHeartbeat}, log: orDiscard(nil), wake: make(chan struct{}, 1),
			services: map[string]*service{"b1": {rec: testRecord("b1", 7207, "1"), hb: hbInfo{Every: DefaultHeartbeat}}},
			ifaces:   map[int]*ifaceAddrs{ifc.Index: ifc}, pending: map[outKey]*pendingRR{}, sent: map[outKey]time.Time{},
			warned: map[string]time.Time{}}
		r.handle(p)
		r.handle(packet{data: data, src: netip.MustParseAddrPort("10.77.0.2:40000"), ifindex: ifc.Index, fam: v4})
		r.tick(time.Now().Add(time.Second))
	})
}

// A packet with a record miekg/dns refuses (python-zeroconf's NSEC with
// an empty bitmap block, as captured in the lab) still yields its other
// records.
func TestDecodeSkipsBadRecords(t *testing.T) {
	// python-zeroconf 0.47's answer to a PTR question: the PTR, then
	// TXT, A, SRV and an NSEC whose bitmap has an empty block.
	pkt, err := hex.DecodeString(pyAnswerNSEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := new(dns.Msg).Unpack(pkt); err == nil {
		t.Fatal("miekg/dns reads the packet: the test no longer shows anything")
	}
	m, err := decode(pkt)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, rr := range append(m.Answer, m.Extra...) {
		types = append(types, dns.TypeToString[rr.Header().Rrtype])
	}
	if !m.Response || strings.Join(types, " ") != "PTR TXT A SRV" {
		t.Fatalf("response %v, records %v; want PTR TXT A SRV", m.Response, types)
	}
	for _, bad := range [][]byte{nil, pkt[:11], pkt[:20]} {
		if m, err := decode(bad); err == nil && len(m.Answer)+len(m.Extra) > 0 {
			t.Errorf("decode of %d bytes: %v", len(bad), m)
		}
	}
}

const pyAnswerNSEC = "0000840000010001000000040a5f626f6172646c696e6b045f746370056c6f63616c00000c0001c00c000c00010000119400070470792d30c00cc033001000010000119400300769643d70792d30086d6f64656c3d70790770726f746f3d3409636170733d65786563057665723d3106626f6f743d620770792d70792d30c01c000100010000007800040a4d0902c03300210001000000780008000000002328c076c076002f000100001194000ac0760000000400000008"
