package discovery

// The responder behind Advertisers: one per process and interface
// selection, shared by every board the process announces (as one Avahi
// serves a host), so that their answers share packets and their
// heartbeats one packet.
//
// What it sends, all of it multicast except answers to legacy unicast
// questions (RFC 6762 §6.7), which go straight back to the asker:
//   - announcements of a board's records when it starts, changes or an
//     interface changes: at once and one second later (§8.3);
//   - answers to questions: PTR answers 20-120 ms later, 400-500 ms when
//     the question's known answers continue in more packets (§6, §7.2),
//     aggregated per interface and family, never a record the asker
//     already knows with half its TTL left (§7.1), never the same record
//     twice within a second on one interface and family (§6: it waits);
//   - a heartbeat: one small record per board every Heartbeat, on one
//     family per interface (IPv4 if the interface has it), so that
//     browsers can tell a board that vanished within seconds without
//     asking (docs/discovery.md, "Liveness");
//   - goodbyes (TTL 0) when a board stops, or, when it reboots, a
//     heartbeat saying it will be back, and no goodbye.

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// announceAt are the offsets of a board's announcements (RFC 6762 §8.3:
// at least two, one second apart).
var announceAt = []time.Duration{0, time.Second}

// byeRepeat is the gap between the two copies of a goodbye or a reboot
// notice: one lost packet should not turn a reboot into a removal.
const byeRepeat = 100 * time.Millisecond

type responderKey struct {
	ifaces    string
	heartbeat time.Duration
}

var responders = struct {
	sync.Mutex
	m map[responderKey]*responder
}{m: map[responderKey]*responder{}}

// service is one board the responder answers for.
type service struct {
	rec      Record
	hb       hbInfo
	announce []time.Time
}

type outKey struct {
	ifindex int
	fam     family
	rr      string
}

// pendingRR is a record waiting to be multicast.
type pendingRR struct {
	rr    dns.RR
	group string // the board it belongs to: a group is sent in one packet
	due   time.Time
}

type responder struct {
	key   responderKey
	log   *slog.Logger
	sel   *ifaceSelector
	socks *sockets
	wg    sync.WaitGroup
	stop  context.CancelFunc
	wake  chan struct{}

	mu       sync.Mutex
	refs     int
	services map[string]*service // by lowercased id
	ifaces   map[int]*ifaceAddrs
	pending  map[outKey]*pendingRR
	sent     map[outKey]time.Time
	nextHB   time.Time
	warned   map[string]time.Time // conflicts logged, by id
}

// acquireResponder returns the process's responder for cfg, starting it.
func acquireResponder(cfg AdvertiseConfig, log *slog.Logger) (*responder, error) {
	names := slices.Clone(cfg.Ifaces)
	slices.Sort(names)
	key := responderKey{ifaces: strings.Join(names, "\x00"), heartbeat: cfg.heartbeat()}
	responders.Lock()
	defer responders.Unlock()
	if r := responders.m[key]; r != nil {
		r.mu.Lock()
		r.refs++
		r.mu.Unlock()
		return r, nil
	}
	sel := newIfaceSelector(cfg.Ifaces)
	if err := sel.check(log); err != nil {
		return nil, err
	}
	socks, err := openSockets("udp", mdnsPort)
	if err != nil {
		return nil, err
	}
	r := &responder{key: key, log: log, sel: sel, socks: socks, wake: make(chan struct{}, 1), refs: 1,
		services: map[string]*service{}, ifaces: map[int]*ifaceAddrs{}, pending: map[outKey]*pendingRR{},
		sent: map[outKey]time.Time{}, warned: map[string]time.Time{}}
	r.loadIfaces()
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	socks.start(&r.wg, false, r.handle)
	r.wg.Go(func() { r.run(ctx) })
	r.wg.Go(func() {
		sel.watch(ctx, func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.log.Info("mdns: interfaces changed; re-announcing")
			r.loadIfacesLocked()
			now := time.Now()
			for _, s := range r.services {
				s.announce = announceTimes(now)
			}
			r.kick()
		})
	})
	responders.m[key] = r
	return r, nil
}

// release drops a reference; the last one closes the sockets.
func (r *responder) release() {
	responders.Lock()
	r.mu.Lock()
	r.refs--
	last := r.refs == 0
	r.mu.Unlock()
	if last {
		delete(responders.m, r.key)
	}
	responders.Unlock()
	if last {
		r.stop()
		_ = r.socks.close()
		r.wg.Wait()
	}
}

func (r *responder) loadIfaces() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.loadIfacesLocked()
}

func (r *responder) loadIfacesLocked() {
	// An interface without an address has nothing to announce.
	if ifaces, up, ok := r.sel.usable(r.log, true); ok {
		r.ifaces = ifaces
		r.socks.join(up)
	}
}

func announceTimes(now time.Time) []time.Time {
	out := make([]time.Time, len(announceAt))
	for i, d := range announceAt {
		out[i] = now.Add(d)
	}
	return out
}

func (r *responder) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// add starts answering for rec and announces it.
func (r *responder) add(rec Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := strings.ToLower(rec.ID)
	if r.services[k] != nil {
		return fmt.Errorf("mdns: board %s is already advertised by this process", rec.ID)
	}
	r.services[k] = &service{rec: cloneRecord(rec), hb: hbInfo{Every: r.key.heartbeat}, announce: announceTimes(time.Now())}
	if r.key.heartbeat > 0 && r.nextHB.IsZero() {
		r.nextHB = time.Now().Add(r.hbInterval())
	}
	r.kick()
	return nil
}

// update replaces the record of a board (same id) and announces it: the
// records carry the cache-flush bit, so caches replace the old ones.
func (r *responder) update(rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.services[strings.ToLower(rec.ID)]
	if s == nil {
		return
	}
	s.rec = cloneRecord(rec)
	s.announce = announceTimes(time.Now())
	r.dropPendingLocked(rec.ID)
	r.kick()
}

// remove stops answering for id. With reboot > 0 it multicasts the
// heartbeat record saying the board will be back within reboot instead
// of goodbyes, twice, byeRepeat apart.
func (r *responder) remove(ctx context.Context, id string, reboot time.Duration) error {
	r.mu.Lock()
	s := r.services[strings.ToLower(id)]
	if s == nil {
		r.mu.Unlock()
		return nil
	}
	delete(r.services, strings.ToLower(id))
	r.dropPendingLocked(id)
	s.hb.Reboot = reboot
	bye := func() {
		for _, ifc := range r.ifaces {
			for _, f := range []family{v4, v6} {
				if !ifc.has(f) || !r.socks.has(f) {
					continue
				}
				var rrs []dns.RR
				if reboot > 0 {
					rrs = []dns.RR{s.hbRR()}
				} else {
					rrs = s.records(ifc, 0)
				}
				r.sendLocked(ifc, f, []rrGroup{{answers: rrs}}, netip.AddrPort{}, nil)
			}
		}
	}
	bye()
	r.mu.Unlock()
	t := time.NewTimer(byeRepeat)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.mu.Lock()
	bye()
	r.mu.Unlock()
	return nil
}

func (r *responder) dropPendingLocked(id string) {
	for k, p := range r.pending {
		if strings.EqualFold(p.group, id) {
			delete(r.pending, k)
		}
	}
}

func (r *responder) hbInterval() time.Duration {
	// 90-100% of the interval: never later than announced, and boards
	// started together drift apart.
	return r.key.heartbeat - time.Duration(rand.Int64N(int64(r.key.heartbeat/10)+1))
}

// hbRR is the board's heartbeat record.
func (s *service) hbRR() dns.RR {
	return &dns.TXT{Hdr: header(hbPath(s.rec.ID), dns.TypeTXT, true, ttlHost), Txt: s.hb.txt()}
}

// records are every record of the board on ifc, with TTLs scaled: 1 as
// published, 0 for goodbyes.
func (s *service) records(ifc *ifaceAddrs, scale uint32) []dns.RR {
	rrs := []dns.RR{s.ptrRR(scale), s.srvRR(scale), s.txtRR(scale)}
	rrs = append(rrs, s.addrRRs(ifc, scale)...)
	if s.hb.Every > 0 {
		hb := s.hbRR()
		hb.Header().Ttl *= scale
		rrs = append(rrs, hb)
	}
	return rrs
}

func (s *service) ptrRR(scale uint32) dns.RR {
	return &dns.PTR{Hdr: header(serviceName, dns.TypePTR, false, ttlOther*scale), Ptr: instancePath(s.rec.ID)}
}

func (s *service) srvRR(scale uint32) dns.RR {
	return &dns.SRV{Hdr: header(instancePath(s.rec.ID), dns.TypeSRV, true, ttlHost*scale), Port: uint16(s.rec.Port),
		Target: hostLabel(s.rec.ID) + "."}
}

func (s *service) txtRR(scale uint32) dns.RR {
	return &dns.TXT{Hdr: header(instancePath(s.rec.ID), dns.TypeTXT, true, ttlOther*scale), Txt: escapeTXT(s.rec.TXT())}
}

func (s *service) addrRRs(ifc *ifaceAddrs, scale uint32) []dns.RR {
	host := hostLabel(s.rec.ID) + "."
	var rrs []dns.RR
	for _, a := range ifc.v4 {
		rrs = append(rrs, &dns.A{Hdr: header(host, dns.TypeA, true, ttlHost*scale), A: a.AsSlice()})
	}
	for _, a := range ifc.v6 {
		rrs = append(rrs, &dns.AAAA{Hdr: header(host, dns.TypeAAAA, true, ttlHost*scale), AAAA: a.AsSlice()})
	}
	return rrs
}

// escapeTXT turns TXT strings into miekg/dns's presentation form, which
// it unescapes when packing.
func escapeTXT(txt []string) []string {
	out := make([]string, len(txt))
	for i, s := range txt {
		var b strings.Builder
		for j := 0; j < len(s); j++ {
			c := s[j]
			switch {
			case c == '"' || c == '\\':
				b.WriteByte('\\')
				b.WriteByte(c)
			case c < ' ' || c >= 0x7f:
				fmt.Fprintf(&b, "\\%03d", c)
			default:
				b.WriteByte(c)
			}
		}
		out[i] = b.String()
	}
	return out
}

// answer is what s answers to q on ifc: the records asked for, and the
// ones that go with them.
func (s *service) answer(q dns.Question, ifc *ifaceAddrs) (ans, extra []dns.RR) {
	any := q.Qtype == dns.TypeANY
	is := func(t uint16) bool { return any || q.Qtype == t }
	switch {
	case sameName(q.Name, serviceName) && is(dns.TypePTR):
		ans = []dns.RR{s.ptrRR(1)}
		extra = append([]dns.RR{s.srvRR(1), s.txtRR(1)}, s.addrRRs(ifc, 1)...)
	case sameName(q.Name, instancePath(s.rec.ID)):
		if is(dns.TypeSRV) {
			ans = append(ans, s.srvRR(1))
		} else {
			extra = append(extra, s.srvRR(1))
		}
		if is(dns.TypeTXT) {
			ans = append(ans, s.txtRR(1))
		} else {
			extra = append(extra, s.txtRR(1))
		}
		extra = append(extra, s.addrRRs(ifc, 1)...)
	case sameName(q.Name, hostLabel(s.rec.ID)+"."):
		for _, rr := range s.addrRRs(ifc, 1) {
			if is(rr.Header().Rrtype) {
				ans = append(ans, rr)
			}
		}
	case sameName(q.Name, hbPath(s.rec.ID)) && is(dns.TypeTXT) && s.hb.Every > 0:
		ans = []dns.RR{s.hbRR()}
	}
	if len(ans) > 0 && s.hb.Every > 0 && !sameName(q.Name, hbPath(s.rec.ID)) {
		extra = append(extra, s.hbRR())
	}
	return ans, extra
}

// handle is called by the socket readers.
func (r *responder) handle(p packet) {
	m, err := decode(p.data)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ifc := r.ifaces[p.ifindex]
	if ifc == nil {
		return // an interface we do not run on
	}
	if m.Response {
		r.checkConflictLocked(m, p, ifc)
		return
	}
	knowns := knownSet(m.Answer)
	if len(m.Question) == 0 {
		// Known answers continued from a truncated query (§7.2).
		r.suppressLocked(p, knowns)
		return
	}
	legacy := p.src.Port() != mdnsPort
	var groups []rrGroup
	shared, enum := false, false
	for _, s := range r.services {
		var g rrGroup
		for _, q := range m.Question {
			if q.Qclass&^qClassUnicast != dns.ClassINET && q.Qclass&^qClassUnicast != dns.ClassANY {
				continue
			}
			if sameName(q.Name, typeEnum) && (q.Qtype == dns.TypePTR || q.Qtype == dns.TypeANY) {
				enum = true
			}
			ans, extra := s.answer(q, ifc)
			for _, rr := range ans {
				if !known(rr, knowns) && !slices.ContainsFunc(g.answers, func(x dns.RR) bool { return dns.IsDuplicate(x, rr) }) {
					g.answers = append(g.answers, rr)
					shared = shared || rr.Header().Rrtype == dns.TypePTR
				}
			}
			for _, rr := range extra {
				if !known(rr, knowns) && !slices.ContainsFunc(g.extras, func(x dns.RR) bool { return dns.IsDuplicate(x, rr) }) {
					g.extras = append(g.extras, rr)
				}
			}
		}
		if len(g.answers) > 0 {
			g.extras = slices.DeleteFunc(g.extras, func(x dns.RR) bool {
				return slices.ContainsFunc(g.answers, func(a dns.RR) bool { return dns.IsDuplicate(x, a) })
			})
			groups = append(groups, g)
		}
	}
	if enum && len(r.services) > 0 {
		rr := &dns.PTR{Hdr: header(typeEnum, dns.TypePTR, false, ttlOther), Ptr: serviceName}
		if !known(rr, knowns) {
			groups = append(groups, rrGroup{answers: []dns.RR{rr}})
			shared = true
		}
	}
	if len(groups) == 0 {
		return
	}
	if legacy {
		r.sendLocked(ifc, p.fam, groups, p.src, m)
		return
	}
	var delay time.Duration
	switch {
	case len(m.Ns) > 0: // a probe: defend at once (§8.1)
	case m.Truncated:
		delay = 400*time.Millisecond + rand.N(100*time.Millisecond)
	case shared:
		delay = 20*time.Millisecond + rand.N(100*time.Millisecond)
	}
	now := time.Now()
	for _, g := range groups {
		name := ""
		if len(g.answers) > 0 {
			name = groupOf(g.answers[0])
		}
		for _, rr := range append(slices.Clone(g.answers), g.extras...) {
			k := outKey{ifc.Index, p.fam, rrKey(rr)}
			due := now.Add(delay)
			if last, ok := r.sent[k]; ok && last.Add(time.Second).After(due) {
				due = last.Add(time.Second) // RFC 6762 §6: once a second per record, at most
			}
			if old := r.pending[k]; old == nil || due.Before(old.due) {
				r.pending[k] = &pendingRR{rr: rr, group: name, due: due}
			}
		}
	}
	r.kick()
}

// groupOf names the board a record belongs to, so its records travel
// together.
func groupOf(rr dns.RR) string {
	if ptr, ok := rr.(*dns.PTR); ok {
		if id, ok := instanceOf(ptr.Ptr, instSuffix); ok {
			return id
		}
	}
	if id, ok := instanceOf(rr.Header().Name, instSuffix); ok {
		return id
	}
	return rr.Header().Name
}

// suppressLocked drops pending answers that a querier says it knows.
func (r *responder) suppressLocked(p packet, knowns map[string]uint32) {
	for k, pr := range r.pending {
		if k.ifindex == p.ifindex && k.fam == p.fam && known(pr.rr, knowns) {
			delete(r.pending, k)
		}
	}
}

// checkConflictLocked warns, once a minute per board, when a responder
// that is not this process announces one of our ids with other data.
func (r *responder) checkConflictLocked(m *dns.Msg, p packet, ifc *ifaceAddrs) {
	// A link-local source carries its zone; the interface's addresses do not.
	if src := p.src.Addr().WithZone(""); slices.Contains(ifc.v4, src) || slices.Contains(ifc.v6, src) {
		return // our own, looped back
	}
	for _, rr := range append(slices.Clone(m.Answer), m.Extra...) {
		t := rr.Header().Rrtype
		if (t != dns.TypeSRV && t != dns.TypeTXT) || rr.Header().Ttl == 0 {
			continue
		}
		id, ok := instanceOf(rr.Header().Name, instSuffix)
		if !ok {
			continue
		}
		s := r.services[strings.ToLower(id)]
		if s == nil {
			continue
		}
		ours := s.srvRR(1)
		if t == dns.TypeTXT {
			ours = s.txtRR(1)
		}
		if dns.IsDuplicate(ours, rr) {
			continue
		}
		if last, ok := r.warned[s.rec.ID]; ok && time.Since(last) < time.Minute {
			continue
		}
		r.warned[s.rec.ID] = time.Now()
		r.log.Warn("mdns: another responder announces this board id", "id", s.rec.ID, "from", p.src.Addr(), "record", rr.String())
	}
}

// sendLocked packs groups and sends them on ifc over f: multicast, or to
// dst as a legacy unicast answer to query q (its id and questions
// repeated, TTLs at most 10 s, no cache-flush bit: RFC 6762 §6.7).
func (r *responder) sendLocked(ifc *ifaceAddrs, f family, groups []rrGroup, dst netip.AddrPort, q *dns.Msg) {
	var prep func(*dns.Msg)
	if q != nil {
		for _, g := range groups {
			for _, rr := range append(slices.Clone(g.answers), g.extras...) {
				h := rr.Header()
				h.Class &^= classCacheFlush
				h.Ttl = min(h.Ttl, ttlLegacy)
			}
		}
		prep = func(m *dns.Msg) { m.Id, m.Question = q.Id, q.Question }
	}
	pkts, err := packResponses(groups, prep)
	if err != nil {
		r.log.Warn("mdns: pack", "err", err)
		return
	}
	for _, b := range pkts {
		if err := r.socks.send(f, ifc.Index, b, dst); err != nil {
			r.log.Debug("mdns: send", "iface", ifc.Name, "family", f, "err", err)
		}
	}
	if q == nil {
		now := time.Now()
		for _, g := range groups {
			for _, rr := range append(slices.Clone(g.answers), g.extras...) {
				r.sent[outKey{ifc.Index, f, rrKey(rr)}] = now
			}
		}
	}
}

// run sends what is due: announcements, pending answers, heartbeats.
func (r *responder) run(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := r.tick(time.Now())
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-t.C:
		}
	}
}

// tick does what is due at now and returns when to look again.
func (r *responder) tick(now time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	next := now.Add(time.Minute)
	soon := func(t time.Time) {
		if t.Before(next) {
			next = t
		}
	}
	// Announcements.
	var announce []*service
	for _, s := range r.services {
		for len(s.announce) > 0 && !s.announce[0].After(now) {
			s.announce = s.announce[1:]
			if !slices.Contains(announce, s) {
				announce = append(announce, s)
			}
		}
		if len(s.announce) > 0 {
			soon(s.announce[0])
		}
	}
	if len(announce) > 0 {
		slices.SortFunc(announce, func(a, b *service) int { return strings.Compare(a.rec.ID, b.rec.ID) })
		for _, ifc := range r.ifaces {
			for _, f := range []family{v4, v6} {
				if !ifc.has(f) || !r.socks.has(f) {
					continue
				}
				var groups []rrGroup
				for _, s := range announce {
					groups = append(groups, rrGroup{answers: s.records(ifc, 1)})
				}
				r.sendLocked(ifc, f, groups, netip.AddrPort{}, nil)
				for _, g := range groups {
					for _, rr := range g.answers {
						delete(r.pending, outKey{ifc.Index, f, rrKey(rr)})
					}
				}
			}
		}
	}
	// Pending answers: what is due, with what falls due within 20 ms.
	type dest struct {
		ifindex int
		fam     family
	}
	due := map[dest]map[string][]dns.RR{}
	for k, p := range r.pending {
		if p.due.After(now.Add(20 * time.Millisecond)) {
			soon(p.due)
			continue
		}
		d := dest{k.ifindex, k.fam}
		if due[d] == nil {
			due[d] = map[string][]dns.RR{}
		}
		due[d][p.group] = append(due[d][p.group], p.rr)
		delete(r.pending, k)
	}
	for d, byGroup := range due {
		ifc := r.ifaces[d.ifindex]
		if ifc == nil {
			continue
		}
		var groups []rrGroup
		for _, name := range slices.Sorted(maps.Keys(byGroup)) {
			groups = append(groups, rrGroup{answers: byGroup[name]})
		}
		r.sendLocked(ifc, d.fam, groups, netip.AddrPort{}, nil)
	}
	// Heartbeats.
	if r.key.heartbeat > 0 && len(r.services) > 0 {
		if !r.nextHB.After(now) {
			r.heartbeatLocked()
			r.nextHB = now.Add(r.hbInterval())
		}
		soon(r.nextHB)
	}
	// Forget rate-limit marks older than their purpose.
	for k, t := range r.sent {
		if now.Sub(t) > 2*time.Second {
			delete(r.sent, k)
		}
	}
	return next
}

// heartbeatLocked multicasts every board's heartbeat record, on IPv4
// where the interface has it, else IPv6: browsers listen on both.
func (r *responder) heartbeatLocked() {
	ids := slices.Sorted(maps.Keys(r.services))
	for _, ifc := range r.ifaces {
		f := v4
		if !ifc.has(v4) || !r.socks.has(v4) {
			f = v6
		}
		if !ifc.has(f) || !r.socks.has(f) {
			continue
		}
		var groups []rrGroup
		for _, id := range ids {
			groups = append(groups, rrGroup{answers: []dns.RR{r.services[id].hbRR()}})
		}
		pkts, err := packResponses(groups, nil)
		if err != nil {
			continue
		}
		for _, b := range pkts {
			if err := r.socks.send(f, ifc.Index, b, netip.AddrPort{}); err != nil {
				r.log.Debug("mdns: heartbeat", "iface", ifc.Name, "err", err)
			}
		}
	}
}
