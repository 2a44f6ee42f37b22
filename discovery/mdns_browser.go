package discovery

// The Browser: it asks for _boardlink._tcp boards, keeps what it hears
// per board and per responder ("origin": one host, however many
// addresses and families it speaks from), and reports a board only when
// it has its SRV, its TXT and an address, its TXT id is its instance
// name, and that id is valid. Two responders announcing one id are a
// conflict, shown as such. See docs/discovery.md for the schedule of
// queries and the liveness rules.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Browser tuning.
const (
	// The first query goes out at once, then with gaps of 1 s, 2 s, 4 s...
	// up to an hour (RFC 6762 §5.2). Each carries the boards already known
	// (§7.1), so that only new boards answer.
	firstQueryGap = time.Second
	maxQueryGap   = time.Hour
	// v6Lag is how long after its IPv4 query the browser asks over IPv6,
	// with what the IPv4 answers taught it among its known answers: a
	// dual-stack board answers once, not once per family.
	v6Lag = 250 * time.Millisecond
	// hbSlack is how late a heartbeat may be before the board is asked;
	// probeWindow is how long the browser then waits for an answer (asking
	// twice) before it removes the board.
	hbSlack     = 500 * time.Millisecond
	probeWindow = time.Second
	// tickEvery is the browser's clock for removals and asking.
	tickEvery = 100 * time.Millisecond
	// maxBoards bounds what a browser keeps from the network; maxRefused
	// how many refusals it remembers.
	maxBoards  = 10000
	maxRefused = 64
	maxOrigins = 8 // per board id
	maxAddrs   = 32
)

// BrowseConfig configures a Browser.
type BrowseConfig struct {
	// Ifaces names the interfaces to browse on; empty means every up,
	// multicast-capable, non-loopback interface, re-read every few seconds.
	Ifaces []string
	// Expiry bounds how long a board that sends no heartbeat (another
	// mDNS stack, an older agent) is kept when it stops answering: it is
	// asked at 80% and 90% of Expiry after it was last heard, and removed
	// at Expiry. Zero means DefaultExpiry (10 s); less than MinExpiry is
	// raised to it. Negative keeps every board for its records' own TTL
	// (120 s) and turns heartbeat checks off: only goodbyes and TTLs
	// remove boards.
	Expiry time.Duration
	// Grace holds a removal after a goodbye back this long; a board that
	// comes back within it (an agent restart) is reported as Updated, or
	// not at all if nothing changed. Zero means DefaultGrace (1 s);
	// negative disables.
	Grace time.Duration
	// Network is "udp" (IPv4 and IPv6, the default), "udp4" or "udp6".
	Network string
	Logger  *slog.Logger // nil: discard
}

// Browser follows the _boardlink._tcp boards on the chosen interfaces.
type Browser struct {
	cfg BrowseConfig
	log *slog.Logger

	events chan Event

	mu       sync.Mutex
	insts    map[string]*inst       // by lowercased instance name
	hosts    map[string][]*hostAddr // by lowercased host name
	refused  []Refusal
	ifaces   map[int]*ifaceAddrs
	sel      *ifaceSelector
	listens  map[family]bool // the families it hears: Network's, then what opened
	socks    *sockets        // the mDNS group
	asker    *sockets        // an ephemeral port, for questions to one board
	started  bool
	stopped  bool
	dropped  int
	queryAt  time.Time
	queryGap time.Duration
	v6At     time.Time
	// firstRound: the current round of queries is the first since Start
	// or an interface change.
	firstRound bool
	gcAt       time.Time
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

// inst is what the browser knows of one instance name.
type inst struct {
	name      string // unescaped
	origins   []*origin
	shown     *Record // as last reported; nil: not listed
	resolveAt time.Time
	resolveN  int
	ifindex   int
	fam       family
}

// origin is one responder's view of an instance.
type origin struct {
	srcs        []netip.Addr // packet sources it spoke from
	ifindex     int
	fam         family
	port        int
	target      string // host name, lowercased
	srvTTL      uint32
	haveSRV     bool
	txt         []string
	haveTXT     bool
	txtBy       [2]famSeen // the TXT per family (v4, v6): see lateCopy
	srvBy       [2]famSeen // the SRV's port and target per family
	hb          hbInfo
	rebootUntil time.Time
	ptrAt       time.Time
	ptrTTL      uint32
	heard       time.Time
	goodbye     time.Time // goodbye received; removed after Grace
	probes      int       // questions asked since last heard
	refused     string    // why its record is not believed, as last reported
	seq         int       // order of appearance
}

// famSeen is what one family's packets of an origin carry for one
// record (its TXT, or its SRV's port and target), and what they carried
// before it changed.
type famSeen struct {
	cur, prev []string
	changed   time.Time
}

// lateCopy records in by that a packet of family f carried vals, and
// says whether it is a late copy of what the other family's packets have
// replaced within the last second. A responder sends each announcement
// over IPv4 and IPv6, and the browser reads the two sockets on their own
// goroutines, so the IPv6 copy of an old announcement can be handled
// after the IPv4 copy of the new one; taking it would flip the board back
// and forth (its boot id in the TXT, its port in the SRV after a restart).
func lateCopy(by *[2]famSeen, f family, vals []string, now time.Time) bool {
	i, other := 0, 1
	if f == v6 {
		i, other = 1, 0
	}
	h := &by[other]
	late := now.Sub(h.changed) < time.Second && h.prev != nil && slices.Equal(h.prev, vals) && !slices.Equal(h.cur, vals)
	if mine := &by[i]; !slices.Equal(mine.cur, vals) {
		mine.prev, mine.cur, mine.changed = mine.cur, vals, now
	}
	return late
}

// hostAddr is an address record, with the packet source that sent it.
type hostAddr struct {
	addr netip.Addr
	src  netip.Addr
	at   time.Time
}

var originSeq int

// NewBrowser returns a Browser; nothing happens until Start.
func NewBrowser(cfg BrowseConfig) *Browser {
	switch {
	case cfg.Expiry == 0:
		cfg.Expiry = DefaultExpiry
	case cfg.Expiry > 0 && cfg.Expiry < MinExpiry:
		cfg.Expiry = MinExpiry
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.Network == "" {
		cfg.Network = "udp"
	}
	listens := map[family]bool{v4: cfg.Network != "udp6", v6: cfg.Network != "udp4"}
	return &Browser{
		listens: listens,
		cfg:     cfg,
		log:     orDiscard(cfg.Logger),
		events:  make(chan Event, EventBuffer),
		insts:   map[string]*inst{},
		hosts:   map[string][]*hostAddr{},
		ifaces:  map[int]*ifaceAddrs{},
	}
}

// Start opens the sockets and starts asking. Events and Boards follow.
func (b *Browser) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	switch b.cfg.Network {
	case "udp", "udp4", "udp6":
	default:
		return fmt.Errorf("mdns: network %q: want udp, udp4 or udp6", b.cfg.Network)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started || b.stopped {
		return errors.New("mdns: browser already started")
	}
	b.sel = newIfaceSelector(b.cfg.Ifaces)
	if err := b.sel.check(b.log); err != nil {
		return err
	}
	socks, err := openSockets(b.cfg.Network, mdnsPort)
	if err != nil {
		return err
	}
	asker, err := openSockets(b.cfg.Network, 0)
	if err != nil {
		socks.close()
		return err
	}
	b.socks, b.asker, b.started = socks, asker, true
	b.listens = map[family]bool{v4: socks.has(v4), v6: socks.has(v6)}
	b.loadIfacesLocked()
	wctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	socks.start(&b.wg, false, b.handle)
	asker.start(&b.wg, true, b.handle)
	b.queryAt = time.Now()
	b.wg.Go(func() { b.run(wctx) })
	b.wg.Go(func() {
		b.sel.watch(wctx, func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			b.log.Info("mdns: interfaces changed; asking again")
			b.loadIfacesLocked()
			b.queryAt, b.queryGap = time.Now(), 0
		})
	})
	return nil
}

func (b *Browser) loadIfacesLocked() {
	if ifaces, up, ok := b.sel.usable(b.log, false); ok {
		b.ifaces = ifaces
		b.socks.join(up)
	}
}

// Events delivers added, updated and removed boards, conflicts and
// refusals. It is closed by Stop. It holds EventBuffer events; when the
// reader falls behind, the oldest is dropped so the network is never
// blocked.
func (b *Browser) Events() <-chan Event { return b.events }

// Boards returns the boards seen now, sorted by id (a board within its
// Grace after a goodbye is still listed).
func (b *Browser) Boards() []Record {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Record
	for _, in := range b.insts {
		if in.shown != nil {
			out = append(out, cloneRecord(*in.shown))
		}
	}
	slices.SortFunc(out, func(x, y Record) int { return strings.Compare(x.ID, y.ID) })
	return out
}

// Refusals returns the records that claimed to be boards and were not
// believed, most recent last (at most 64).
func (b *Browser) Refusals() []Refusal {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.refused)
}

// Stop closes the sockets and the Events channel. Boards still known are
// not reported as removed.
func (b *Browser) Stop() error {
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		return nil
	}
	b.stopped = true
	started := b.started
	b.mu.Unlock()
	var err error
	if started {
		b.cancel()
		err = errors.Join(b.socks.close(), b.asker.close())
		b.wg.Wait()
	}
	b.mu.Lock()
	close(b.events)
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("mdns: close: %w", err)
	}
	return nil
}

// emitLocked queues an event, dropping the oldest queued one when full.
func (b *Browser) emitLocked(ev Event) {
	if b.stopped {
		return
	}
	ev.Record = cloneRecord(ev.Record)
	for {
		select {
		case b.events <- ev:
			return
		default:
		}
		select {
		case <-b.events:
			b.dropped++
			if b.dropped == 1 || b.dropped%100 == 0 {
				b.log.Warn("mdns: event reader is slow; dropped the oldest events", "dropped", b.dropped)
			}
		default:
		}
	}
}

// ------------------------------------------------------------ receiving

// svcRRs are the records about one instance in one packet.
type svcRRs struct {
	ptr, srv, txt, hb dns.RR
}

// handle is called by the socket readers with every datagram.
func (b *Browser) handle(p packet) {
	m, err := decode(p.data)
	if err != nil || !m.Response {
		return // queries are the responders' business
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped || b.ifaces[p.ifindex] == nil {
		return
	}
	b.handleLocked(m, p, time.Now())
}

func (b *Browser) handleLocked(m *dns.Msg, p packet, now time.Time) {
	src := p.src.Addr()
	rrs := append(slices.Clone(m.Answer), m.Extra...)
	var claimed []netip.Addr
	hostsSeen := map[string]bool{}
	per := map[string]*svcRRs{}
	get := func(name string) *svcRRs {
		if per[name] == nil {
			per[name] = &svcRRs{}
		}
		return per[name]
	}
	for _, rr := range rrs {
		h := rr.Header()
		flush := h.Class&classCacheFlush != 0
		switch rr := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(rr.A); ok && a.Unmap().Is4() {
				claimed = append(claimed, a.Unmap())
				hostsSeen[strings.ToLower(h.Name)] = true
				b.putHostLocked(strings.ToLower(h.Name), a.Unmap(), src, h.Ttl, flush, now)
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(rr.AAAA); ok && a.Is6() && !a.Is4In6() {
				claimed = append(claimed, a)
				hostsSeen[strings.ToLower(h.Name)] = true
				b.putHostLocked(strings.ToLower(h.Name), a, src, h.Ttl, flush, now)
			}
		case *dns.PTR:
			if sameName(h.Name, serviceName) {
				if name, ok := instanceOf(rr.Ptr, instSuffix); ok {
					get(name).ptr = rr
				}
			}
		case *dns.SRV:
			if name, ok := instanceOf(h.Name, instSuffix); ok {
				get(name).srv = rr
			}
		case *dns.TXT:
			if name, ok := instanceOf(h.Name, instSuffix); ok {
				get(name).txt = rr
			} else if name, ok := instanceOf(h.Name, hbSuffix); ok {
				get(name).hb = rr
			}
		}
	}
	touched := map[*inst]bool{}
	for _, name := range slicesSortedKeys(per) {
		if in := b.applyLocked(name, per[name], p, claimed, now); in != nil {
			touched[in] = true
		}
	}
	// Addresses may complete boards whose SRV came earlier.
	for _, in := range b.insts {
		if len(hostsSeen) == 0 {
			break
		}
		for _, o := range in.origins {
			if hostsSeen[o.target] {
				touched[in] = true
			}
		}
	}
	for in := range touched {
		b.publishLocked(in, now)
	}
}

func slicesSortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// putHostLocked records an address of a host, as sent by src.
func (b *Browser) putHostLocked(host string, a netip.Addr, src netip.Addr, ttl uint32, flush bool, now time.Time) {
	hs := b.hosts[host]
	if ttl == 0 {
		// A goodbye comes with its board's: the board stays listed for
		// Grace with its addresses, which go with it (gcLocked).
		return
	}
	if flush { // RFC 6762 §10.2, per sender: older records of the same type go
		hs = slices.DeleteFunc(hs, func(h *hostAddr) bool {
			return h.src == src && h.addr.Is4() == a.Is4() && now.Sub(h.at) > time.Second
		})
	}
	for _, h := range hs {
		if h.addr == a && h.src == src {
			h.at = now
			b.hosts[host] = hs
			return
		}
	}
	if len(hs) >= maxAddrs || len(b.hosts) >= 2*maxBoards && b.hosts[host] == nil {
		return
	}
	b.hosts[host] = append(hs, &hostAddr{addr: a, src: src, at: now})
}

// addrsLocked are the addresses o's host has, as o's sources sent them.
func (b *Browser) addrsLocked(o *origin) []netip.Addr {
	var out []netip.Addr
	for _, h := range b.hosts[o.target] {
		if slices.Contains(o.srcs, h.src) && !slices.Contains(out, h.addr) {
			out = append(out, h.addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// matchLocked finds the origin of in that a packet from src, claiming
// the addresses claimed, comes from.
func (b *Browser) matchLocked(in *inst, src netip.Addr, claimed []netip.Addr) *origin {
	for _, o := range in.origins {
		if slices.Contains(o.srcs, src) {
			return o
		}
	}
	for _, o := range in.origins {
		addrs := b.addrsLocked(o)
		if slices.Contains(addrs, src) || slices.ContainsFunc(claimed, func(a netip.Addr) bool { return slices.Contains(addrs, a) }) {
			return o
		}
	}
	return nil
}

// applyLocked takes what one packet says of one instance.
func (b *Browser) applyLocked(name string, s *svcRRs, p packet, claimed []netip.Addr, now time.Time) *inst {
	key := strings.ToLower(name)
	in := b.insts[key]
	src := p.src.Addr()
	bye := func(rr dns.RR) bool { return rr != nil && rr.Header().Ttl == 0 }
	goodbye := bye(s.ptr) || bye(s.srv) || bye(s.txt)
	onlyHB := s.ptr == nil && s.srv == nil && s.txt == nil
	if in == nil {
		if goodbye || len(b.insts) >= maxBoards || onlyHB && CheckID(name) != nil {
			return nil
		}
		in = &inst{name: name, ifindex: p.ifindex, fam: p.fam}
		b.insts[key] = in
	}
	o := b.matchLocked(in, src, claimed)
	if o == nil {
		if goodbye {
			return nil
		}
		if onlyHB { // a heartbeat from a board we do not know (yet): ask it
			in.ifindex, in.fam = p.ifindex, p.fam
			if in.resolveAt.IsZero() {
				in.resolveAt = now
			}
			return in
		}
		// A board that said goodbye or is rebooting, back from another
		// address, is the same board; anything else is a second one.
		in.origins = slices.DeleteFunc(in.origins, func(o *origin) bool { return !o.goodbye.IsZero() || !o.rebootUntil.IsZero() })
		if len(in.origins) >= maxOrigins {
			return nil
		}
		originSeq++
		o = &origin{seq: originSeq}
		in.origins = append(in.origins, o)
		if in.resolveAt.IsZero() {
			in.resolveAt = now.Add(tickEvery) // the rest may be on its way
		}
	}
	if !slices.Contains(o.srcs, src) && len(o.srcs) < maxAddrs {
		o.srcs = append(o.srcs, src)
	}
	o.ifindex, o.fam = p.ifindex, p.fam
	in.ifindex, in.fam = p.ifindex, p.fam
	if goodbye {
		if o.goodbye.IsZero() {
			o.goodbye = now
		}
		return in
	}
	o.goodbye = time.Time{}
	if s.ptr != nil && !p.legacy {
		o.ptrAt, o.ptrTTL = now, s.ptr.Header().Ttl
	}
	if srv, ok := s.srv.(*dns.SRV); ok && srv.Port > 0 {
		target := strings.ToLower(srv.Target)
		if !lateCopy(&o.srvBy, p.fam, []string{strconv.Itoa(int(srv.Port)), target}, now) {
			o.port, o.target = int(srv.Port), target
		}
		o.haveSRV = true
		if !p.legacy {
			o.srvTTL = srv.Hdr.Ttl
		}
	}
	if txt, ok := s.txt.(*dns.TXT); ok {
		vals := make([]string, len(txt.Txt))
		for i, t := range txt.Txt {
			vals[i] = unescapeTXT(t)
		}
		if !lateCopy(&o.txtBy, p.fam, vals, now) {
			o.txt = vals
		}
		o.haveTXT = true
	}
	if hb, ok := s.hb.(*dns.TXT); ok {
		var raw []string
		for _, t := range hb.Txt {
			raw = append(raw, unescapeTXT(t))
		}
		h, err := parseHB(raw)
		switch {
		case hb.Hdr.Ttl == 0 || err != nil:
			o.hb, o.rebootUntil = hbInfo{}, time.Time{}
		case h.Reboot > 0:
			o.hb, o.rebootUntil = h, now.Add(h.Reboot)
		default:
			o.hb, o.rebootUntil = h, time.Time{}
		}
	} else if s.srv != nil || s.txt != nil {
		o.rebootUntil = time.Time{} // announced again: back from its reboot
	}
	o.heard, o.probes = now, 0
	return in
}

// recordLocked is o's board record, or why it is not believed.
func (b *Browser) recordLocked(in *inst, o *origin) (Record, string) {
	r, err := ParseTXT(o.txt)
	if err != nil {
		return r, "TXT: " + err.Error()
	}
	if err := CheckID(in.name); err != nil {
		return r, "instance name: " + err.Error()
	}
	if r.ID != in.name {
		return r, fmt.Sprintf("its TXT claims id %q, not its instance name %q", r.ID, in.name)
	}
	r.Port = o.port
	zone := ""
	if ifi, err := net.InterfaceByIndex(o.ifindex); err == nil {
		zone = ifi.Name
	}
	for _, a := range b.addrsLocked(o) {
		if a.Is6() && a.IsLinkLocalUnicast() {
			if zone == "" {
				continue
			}
			a = a.WithZone(zone)
		}
		r.Addrs = append(r.Addrs, a)
	}
	r.Address = wsAddress(r.Addrs, r.Port, r.TLS)
	r.Source = "mdns"
	r.Seen = o.heard
	return r, ""
}

// publishLocked works out how in should be listed now and reports the
// change.
func (b *Browser) publishLocked(in *inst, now time.Time) {
	var recs []Record
	slices.SortFunc(in.origins, func(x, y *origin) int { return x.seq - y.seq })
	for _, o := range in.origins {
		if !o.haveSRV || !o.haveTXT {
			continue
		}
		rec, why := b.recordLocked(in, o)
		if why != "" {
			if o.refused != why {
				o.refused = why
				b.refuseLocked(in, o, rec, why)
			}
			continue
		}
		o.refused = ""
		if rec.Address != "" {
			recs = append(recs, rec)
		}
	}
	var cur *Record
	if len(recs) > 0 {
		r := recs[0]
		var addrs []string
		for _, x := range recs {
			if !slices.Contains(addrs, x.Address) {
				addrs = append(addrs, x.Address)
			}
		}
		if len(addrs) > 1 {
			slices.Sort(addrs)
			r.Conflict = addrs
		}
		cur = &r
	}
	was := in.shown
	in.shown = cur
	switch {
	case was == nil && cur != nil:
		b.emitLocked(Event{Op: Added, Record: *cur})
		if len(cur.Conflict) > 0 {
			b.conflictLocked(*cur)
		}
	case was != nil && cur == nil:
		b.emitLocked(Event{Op: Removed, Record: *was})
	case was != nil && cur != nil:
		if len(cur.Conflict) > len(was.Conflict) {
			b.conflictLocked(*cur)
		} else if !cur.SameAnnouncement(*was) || !slices.Equal(cur.Addrs, was.Addrs) || !slices.Equal(cur.Conflict, was.Conflict) {
			b.emitLocked(Event{Op: Updated, Record: *cur})
		}
	}
	if len(in.origins) == 0 && in.resolveAt.IsZero() {
		delete(b.insts, strings.ToLower(in.name))
	}
}

func (b *Browser) conflictLocked(r Record) {
	b.log.Warn("mdns: several boards announce one id", "id", r.ID, "addresses", r.Conflict)
	b.emitLocked(Event{Op: Conflict, Record: r})
}

func (b *Browser) refuseLocked(in *inst, o *origin, rec Record, why string) {
	from := netip.Addr{}
	if len(o.srcs) > 0 {
		from = o.srcs[0]
	}
	rf := Refusal{Name: in.name, ID: rec.ID, From: from, Reason: why}
	b.refused = slices.DeleteFunc(b.refused, func(x Refusal) bool { return x.Name == rf.Name && x.From == rf.From })
	if len(b.refused) >= maxRefused {
		b.refused = b.refused[1:]
	}
	b.refused = append(b.refused, rf)
	b.log.Warn("mdns: refused a record", "name", in.name, "id", rec.ID, "from", from, "why", why)
	rec.Port = o.port
	rec.Addrs = b.addrsLocked(o)
	rec.Address = wsAddress(rec.Addrs, o.port, rec.TLS)
	rec.Source = "mdns"
	b.emitLocked(Event{Op: Refused, Record: rec, Reason: fmt.Sprintf("%q from %s: %s", in.name, from, why)})
}

// ------------------------------------------------------------- the clock

func (b *Browser) run(ctx context.Context) {
	t := time.NewTicker(tickEvery)
	defer t.Stop()
	for {
		b.tick(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// liveness says when to ask o again, and when to give up on it.
func (b *Browser) liveness(o *origin) (ask, deadline time.Time) {
	switch {
	case b.cfg.Expiry < 0:
		ttl := time.Duration(o.srvTTL) * time.Second
		if ttl <= 0 {
			ttl = ttlHost * time.Second
		}
		return o.heard.Add(ttl * 8 / 10), o.heard.Add(ttl)
	case !o.rebootUntil.IsZero():
		return o.rebootUntil, o.rebootUntil.Add(probeWindow)
	case o.hb.Every > 0 && b.hearsHeartbeat(o):
		ask = o.heard.Add(o.hb.Every + hbSlack)
		return ask, ask.Add(probeWindow)
	}
	return o.heard.Add(b.cfg.Expiry * 8 / 10), o.heard.Add(b.cfg.Expiry)
}

// hearsHeartbeat: a board multicasts its heartbeat over IPv4 when it has
// an IPv4 address, else over IPv6; this browser must listen there.
func (b *Browser) hearsHeartbeat(o *origin) bool {
	if slices.ContainsFunc(b.addrsLocked(o), netip.Addr.Is4) {
		return b.listens[v4]
	}
	return b.listens[v6]
}

func (b *Browser) tick(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return
	}
	asks := map[askKey][]dns.Question{}
	for _, key := range slicesSortedKeys(b.insts) {
		in := b.insts[key]
		changed := false
		in.origins = slices.DeleteFunc(in.origins, func(o *origin) bool {
			if !o.goodbye.IsZero() {
				if b.cfg.Grace <= 0 || now.Sub(o.goodbye) >= b.cfg.Grace {
					changed = true
					return true
				}
				return false
			}
			ask, deadline := b.liveness(o)
			if !now.Before(deadline) {
				b.log.Debug("mdns: no answer; removing", "name", in.name, "from", o.srcs)
				changed = true
				return true
			}
			step := deadline.Sub(ask) / 2
			if !now.Before(ask.Add(time.Duration(o.probes)*step)) && o.probes < 2 {
				o.probes++
				b.askOneLocked(in, o)
			}
			return false
		})
		if b.needsResolveLocked(in) && !in.resolveAt.IsZero() && !now.Before(in.resolveAt) {
			k := askKey{in.ifindex, in.fam}
			asks[k] = append(asks[k], b.resolveQuestionsLocked(in)...)
			in.resolveN++
			in.resolveAt = now.Add(min(firstQueryGap<<min(in.resolveN-1, 6), time.Minute))
		} else if !b.needsResolveLocked(in) {
			in.resolveAt, in.resolveN = time.Time{}, 0
		}
		if changed || len(in.origins) == 0 {
			b.publishLocked(in, now)
		}
	}
	for k, qs := range asks {
		b.sendQueryLocked(k.ifindex, k.fam, qs, nil, false)
	}
	if !now.Before(b.queryAt) {
		fams := []family{v4}
		if !b.socks.has(v4) {
			fams = []family{v6}
		} else if b.socks.has(v6) {
			b.v6At = now.Add(v6Lag)
		}
		// The first round asks from the ephemeral port: answers come back
		// at once by unicast, even from responders that multicast the same
		// records less than a second ago and so may not again (§6, §6.7).
		b.firstRound = b.queryGap == 0
		b.browseLocked(fams[0], b.firstRound)
		b.queryGap = min(max(b.queryGap*2, firstQueryGap), maxQueryGap)
		b.queryAt = now.Add(b.queryGap)
	}
	if !b.v6At.IsZero() && !now.Before(b.v6At) {
		b.v6At = time.Time{}
		b.browseLocked(v6, b.firstRound)
	}
	if now.After(b.gcAt) {
		b.gcLocked(now)
		b.gcAt = now.Add(10 * time.Second)
	}
}

type askKey struct {
	ifindex int
	fam     family
}

// needsResolveLocked: in is heard of but neither listed nor refused.
func (b *Browser) needsResolveLocked(in *inst) bool {
	if in.shown != nil {
		return false
	}
	for _, o := range in.origins {
		if o.refused != "" || !o.goodbye.IsZero() || !o.rebootUntil.IsZero() {
			return false
		}
	}
	return true
}

// resolveQuestionsLocked asks for what in lacks: SRV and TXT, or the
// addresses of its host.
func (b *Browser) resolveQuestionsLocked(in *inst) []dns.Question {
	qs := []dns.Question{
		{Name: instancePath(in.name), Qtype: dns.TypeSRV, Qclass: dns.ClassINET},
		{Name: instancePath(in.name), Qtype: dns.TypeTXT, Qclass: dns.ClassINET},
	}
	for _, o := range in.origins {
		if o.haveSRV && o.haveTXT && o.target != "" {
			qs = []dns.Question{
				{Name: o.target, Qtype: dns.TypeA, Qclass: dns.ClassINET},
				{Name: o.target, Qtype: dns.TypeAAAA, Qclass: dns.ClassINET},
			}
		}
	}
	return qs
}

// askOneLocked asks o whether it is still there: its SRV, as a legacy
// unicast question from the ephemeral port, so that only its answer
// comes back, and only to this browser.
func (b *Browser) askOneLocked(in *inst, o *origin) {
	q := []dns.Question{{Name: instancePath(in.name), Qtype: dns.TypeSRV, Qclass: dns.ClassINET}}
	b.sendQueryLocked(o.ifindex, o.fam, q, nil, true)
}

// browseLocked asks every interface over f for the boards, with what is
// already known (RFC 6762 §7.1).
func (b *Browser) browseLocked(f family, legacy bool) {
	var knownRRs []dns.RR
	now := time.Now()
	for _, key := range slicesSortedKeys(b.insts) {
		in := b.insts[key]
		if b.needsResolveLocked(in) {
			continue // let its answer bring all of it
		}
		for _, o := range in.origins {
			if o.ptrAt.IsZero() {
				continue
			}
			left := int64(o.ptrTTL) - int64(now.Sub(o.ptrAt)/time.Second)
			if left > int64(o.ptrTTL)/2 {
				knownRRs = append(knownRRs, &dns.PTR{Hdr: header(serviceName, dns.TypePTR, false, uint32(left)), Ptr: instancePath(in.name)})
				break
			}
		}
	}
	q := []dns.Question{{Name: serviceName, Qtype: dns.TypePTR, Qclass: dns.ClassINET}}
	for _, ifc := range b.ifaces {
		if ifc.has(f) {
			b.sendQueryLocked(ifc.Index, f, q, knownRRs, legacy)
		}
	}
}

// sendQueryLocked multicasts a query on an interface: from the mDNS port,
// or from the ephemeral one (legacy), which is answered by unicast.
func (b *Browser) sendQueryLocked(ifindex int, f family, qs []dns.Question, knownRRs []dns.RR, legacy bool) {
	socks := b.socks
	if legacy {
		socks = b.asker
	}
	if !socks.has(f) {
		return
	}
	pkts, err := packQuery(qs, knownRRs)
	if err != nil {
		b.log.Warn("mdns: pack query", "err", err)
		return
	}
	for _, pkt := range pkts {
		if err := socks.send(f, ifindex, pkt, netip.AddrPort{}); err != nil {
			b.log.Debug("mdns: query", "ifindex", ifindex, "family", f, "err", err)
		}
	}
}

// gcLocked forgets addresses no board uses any more, and instances heard
// of that never became boards.
func (b *Browser) gcLocked(now time.Time) {
	inUse := map[string]map[netip.Addr]bool{}
	for _, in := range b.insts {
		for _, o := range in.origins {
			if inUse[o.target] == nil {
				inUse[o.target] = map[netip.Addr]bool{}
			}
			for _, s := range o.srcs {
				inUse[o.target][s] = true
			}
		}
		if len(in.origins) == 0 && in.resolveN > 6 {
			delete(b.insts, strings.ToLower(in.name))
		}
	}
	for host, hs := range b.hosts {
		hs = slices.DeleteFunc(hs, func(h *hostAddr) bool {
			return !inUse[host][h.src] && now.Sub(h.at) > ttlHost*time.Second
		})
		if len(hs) == 0 {
			delete(b.hosts, host)
		} else {
			b.hosts[host] = hs
		}
	}
}
