package discovery

// The mDNS half of discovery, on github.com/betamos/zeroconf (see
// docs/discovery.md for why that library and how its gaps are covered).
// Nothing outside this file and mdns_iface.go knows the library.

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

	"github.com/betamos/zeroconf"
)

// Defaults and limits of the mDNS side.
const (
	// DefaultExpiry bounds how long a browser keeps a board that stopped
	// answering without a goodbye (killed, cable pulled). The browser
	// re-queries at 80-97% of it; a board that does not answer is removed
	// when it runs out. Removal then comes within Expiry + Grace (11 s).
	DefaultExpiry = 10 * time.Second
	// MinExpiry is the smallest Expiry accepted; smaller values are raised
	// to it, because each browser queries about once per Expiry.
	MinExpiry = 2 * time.Second
	// DefaultGrace is how long a removal is held back in case the board
	// comes straight back (an agent restart): it is then reported as one
	// Updated instead of Removed + Added.
	DefaultGrace = time.Second
	// EventBuffer is the capacity of Browser.Events. When the reader falls
	// behind, the oldest pending event is dropped (and counted in the log);
	// Boards() always has the current state.
	EventBuffer = 256

	maxTXTString = 255  // RFC 6763 6.1: one length byte
	maxTXTTotal  = 1300 // RFC 6763 6.2: keep the TXT record small enough for one packet
)

var serviceType = zeroconf.NewType(Service)

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// openClient opens c on "udp" (IPv4 and IPv6), falling back to one family
// when the other is unavailable (IPv6 disabled on a board, say).
func openClient(log *slog.Logger, build func(network string) *zeroconf.Client) (*zeroconf.Client, error) {
	var errs []error
	for _, network := range []string{"udp", "udp4", "udp6"} {
		c, err := build(network).Open()
		if err == nil {
			if network != "udp" {
				log.Warn("mdns: dual-stack socket failed; running on one family", "network", network, "err", errors.Join(errs...))
			}
			return c, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", network, err))
	}
	return nil, fmt.Errorf("mdns: open: %w", errors.Join(errs...))
}

// ---------------------------------------------------------------- advertise

// AdvertiseConfig configures an Advertiser.
type AdvertiseConfig struct {
	// Ifaces names the interfaces to advertise on. Empty means every
	// interface that is up, can multicast and is not loopback, re-read
	// every few seconds. A name that does not exist is an error at Start;
	// one that is down is waited for.
	Ifaces []string
	Logger *slog.Logger // nil: discard
}

// Advertiser announces one board as _boardlink._tcp: instance name = the
// board id, port = the WebSocket port, TXT = Record.TXT(), host name
// boardlink-<id>.local with the addresses of each interface it runs on
// (one IPv4, one global and one link-local IPv6 per interface).
type Advertiser struct {
	cfg AdvertiseConfig
	log *slog.Logger

	mu     sync.Mutex
	rec    Record
	pub    *publication
	cancel context.CancelFunc
	done   chan struct{}
}

// publication is one library client publishing one version of the record.
type publication struct {
	client *zeroconf.Client
	ifaces *ifaceSelector
}

// NewAdvertiser returns an Advertiser; nothing happens until Start.
func NewAdvertiser(cfg AdvertiseConfig) *Advertiser {
	return &Advertiser{cfg: cfg, log: orDiscard(cfg.Logger)}
}

func checkRecord(r Record) error {
	if r.ID == "" {
		return errors.New("mdns: record has no id")
	}
	if len(r.ID) > 63 {
		return fmt.Errorf("mdns: board id %q is longer than 63 bytes (a DNS label)", r.ID)
	}
	if r.Port <= 0 || r.Port > 65535 {
		return fmt.Errorf("mdns: port %d out of range", r.Port)
	}
	total := 0
	for _, s := range r.TXT() {
		if len(s) > maxTXTString {
			return fmt.Errorf("mdns: TXT string %.20q... is %d bytes, more than %d", s, len(s), maxTXTString)
		}
		total += 1 + len(s)
	}
	if total > maxTXTTotal {
		return fmt.Errorf("mdns: TXT record is %d bytes, more than %d", total, maxTXTTotal)
	}
	return nil
}

// hostLabel turns a board id into a DNS host label of its own, so boards
// sharing a host name (containers, network namespaces, images cloned with
// the same /etc/hostname) never publish conflicting A/AAAA records, and an
// Avahi on the board keeps its own name.
func hostLabel(id string) string {
	var b strings.Builder
	b.WriteString("boardlink-")
	for _, c := range strings.ToLower(id) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' {
			b.WriteRune(c)
		} else {
			b.WriteByte('-')
		}
	}
	s := b.String()
	if len(s) > 63 {
		s = s[:63]
	}
	return strings.TrimRight(s, "-") + ".local"
}

func (a *Advertiser) publish(r Record) (*publication, error) {
	sel := newIfaceSelector(a.cfg.Ifaces)
	svc := zeroconf.NewService(serviceType, r.ID, uint16(r.Port))
	svc.Hostname = hostLabel(r.ID)
	svc.Text = r.TXT()
	c, err := openClient(a.log, func(network string) *zeroconf.Client {
		return zeroconf.New().Publish(svc).Network(network).Interfaces(sel.list).Logger(a.log)
	})
	if err != nil {
		return nil, err
	}
	return &publication{client: c, ifaces: sel}, nil
}

// checkRequest refuses an announcement before anything is sent: ctx has
// ended, or r cannot be announced.
func checkRequest(ctx context.Context, r Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return checkRecord(r)
}

// Start announces r (r.ID, r.Port and the TXT fields are used).
func (a *Advertiser) Start(ctx context.Context, r Record) error {
	if err := checkRequest(ctx, r); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pub != nil {
		return errors.New("mdns: advertiser already started")
	}
	if err := newIfaceSelector(a.cfg.Ifaces).check(a.log); err != nil {
		return err
	}
	pub, err := a.publish(r)
	if err != nil {
		return err
	}
	a.rec, a.pub = r, pub
	wctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan struct{})
	go func() {
		defer close(a.done)
		sel := newIfaceSelector(a.cfg.Ifaces)
		sel.watch(wctx, func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.pub != nil {
				a.log.Info("mdns: interfaces changed; re-announcing")
				a.pub.client.Reload()
			}
		})
	}()
	a.log.Info("mdns: advertising", "id", r.ID, "port", r.Port, "txt", r.TXT())
	return nil
}

// Update announces a changed record (a new boot id, another slot, another
// port) for the same board id. Browsers see one Updated event: the old
// announcement is withdrawn without a goodbye and the new one announced at
// once, which mDNS caches treat as new data for the same name. ctx bounds
// the wait for the library to go quiet (at most a second).
func (a *Advertiser) Update(ctx context.Context, r Record) error {
	if err := checkRequest(ctx, r); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pub == nil {
		return errors.New("mdns: advertiser not started")
	}
	if r.ID != a.rec.ID {
		return fmt.Errorf("mdns: update changes the board id from %q to %q; Stop and Start instead", a.rec.ID, r.ID)
	}
	if r.Port == a.rec.Port && slices.Equal(r.TXT(), a.rec.TXT()) {
		return nil
	}
	// The library cannot change a published service, and Close always
	// sends goodbyes (TTL 0), which every browser reports as a removal.
	// So the old client is first muted: its interface lister returns
	// nothing, and Reload makes the library adopt that empty set, after
	// which it answers nothing and its Close says goodbye to no interface.
	old := a.pub
	old.ifaces.muted.Store(true)
	old.client.Reload()
	wait, cancel := context.WithTimeout(ctx, time.Second)
	select {
	case <-old.ifaces.mutedCh:
	case <-wait.Done():
		a.log.Warn("mdns: could not mute the old announcement; browsers may see a goodbye", "id", r.ID)
	}
	cancel()
	if err := old.client.Close(); err != nil {
		a.log.Debug("mdns: close muted client", "err", err)
	}
	pub, err := a.publish(r)
	if err != nil {
		a.pub = nil
		a.stopWatchLocked()
		return err
	}
	a.rec, a.pub = r, pub
	a.log.Info("mdns: updated", "id", r.ID, "port", r.Port, "txt", r.TXT())
	return nil
}

func (a *Advertiser) stopWatchLocked() {
	if a.cancel != nil {
		a.cancel()
		a.cancel = nil
	}
}

// Stop sends goodbye packets (TTL 0) on every interface and closes the
// sockets. Browsers remove the board at once (plus their Grace). Stop on a
// stopped Advertiser does nothing.
func (a *Advertiser) Stop(ctx context.Context) error {
	a.mu.Lock()
	pub, done := a.pub, a.done
	a.pub = nil
	a.stopWatchLocked()
	a.mu.Unlock()
	if done != nil {
		<-done
	}
	if pub == nil {
		return nil
	}
	errc := make(chan error, 1)
	go func() { errc <- pub.client.Close() }()
	select {
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("mdns: close: %w", err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ------------------------------------------------------------------- browse

// BrowseConfig configures a Browser.
type BrowseConfig struct {
	// Ifaces names the interfaces to browse on; empty means every up,
	// multicast-capable, non-loopback interface, re-read every few seconds.
	Ifaces []string
	// Expiry replaces the records' TTL (120 s) as the liveness bound for a
	// board that vanished without a goodbye: the browser re-queries at
	// 80-97% of Expiry and removes a board that has not answered for
	// Expiry. Zero means DefaultExpiry (10 s); less than MinExpiry is
	// raised to it; negative keeps the records' own TTL. Shorter means
	// faster removal and more multicast: one query per browser and one
	// answer per board about every 0.8*Expiry.
	Expiry time.Duration
	// Grace holds a removal back this long; a board that comes back within
	// it (an agent restart) is reported as Updated, or not at all if
	// nothing changed. Zero means DefaultGrace (1 s); negative disables.
	// Removal after a goodbye takes about Grace + 50 ms.
	Grace time.Duration
	// Network is "udp" (IPv4 and IPv6, the default), "udp4" or "udp6".
	Network string
	Logger  *slog.Logger // nil: discard
}

// Browser follows the _boardlink._tcp boards on the chosen interfaces.
type Browser struct {
	cfg  BrowseConfig
	log  *slog.Logger
	zone string // for link-local IPv6 addresses, when on one interface

	events chan Event

	mu      sync.Mutex
	boards  map[string]*entry // by instance name
	client  *zeroconf.Client
	started bool
	stopped bool
	dropped int
	cancel  context.CancelFunc
	done    chan struct{}
}

type entry struct {
	rec     Record
	removal *time.Timer // pending removal within Grace, or nil
}

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
	return &Browser{
		cfg:    cfg,
		log:    orDiscard(cfg.Logger),
		events: make(chan Event, EventBuffer),
		boards: map[string]*entry{},
	}
}

// Start opens the sockets and starts querying. Events and Boards follow.
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
	sel := newIfaceSelector(b.cfg.Ifaces)
	if err := sel.check(b.log); err != nil {
		return err
	}
	b.zone = sel.singleName()
	build := func(network string) *zeroconf.Client {
		c := zeroconf.New().Browse(b.handle, serviceType).Interfaces(sel.list).Logger(b.log).Network(network)
		if b.cfg.Expiry > 0 {
			c = c.Expiry(b.cfg.Expiry)
		}
		return c
	}
	var c *zeroconf.Client
	var err error
	if b.cfg.Network == "udp" {
		c, err = openClient(b.log, build)
	} else if c, err = build(b.cfg.Network).Open(); err != nil {
		err = fmt.Errorf("mdns: open %s: %w", b.cfg.Network, err)
	}
	if err != nil {
		return err
	}
	b.client, b.started = c, true
	wctx, cancel := context.WithCancel(context.Background())
	b.cancel, b.done = cancel, make(chan struct{})
	go func() {
		defer close(b.done)
		sel.watch(wctx, func() {
			b.log.Info("mdns: interfaces changed; re-querying")
			c.Reload()
		})
	}()
	return nil
}

// Events delivers added, updated and removed boards. It is closed by Stop.
// It holds EventBuffer events; when the reader falls behind, the oldest
// is dropped so the library is never blocked.
func (b *Browser) Events() <-chan Event { return b.events }

// Boards returns the boards seen now, sorted by id (a board within its
// Grace after a goodbye is still listed).
func (b *Browser) Boards() []Record {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Record, 0, len(b.boards))
	for _, e := range b.boards {
		out = append(out, cloneRecord(e.rec))
	}
	slices.SortFunc(out, func(x, y Record) int { return strings.Compare(x.ID, y.ID) })
	return out
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
	c, cancel, done := b.client, b.cancel, b.done
	b.mu.Unlock()

	var err error
	if c != nil {
		cancel()
		<-done
		err = c.Close() // waits for the library's goroutine: no more callbacks
	}
	b.mu.Lock()
	for _, e := range b.boards {
		if e.removal != nil {
			e.removal.Stop()
		}
	}
	close(b.events)
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("mdns: close: %w", err)
	}
	return nil
}

// emitLocked queues ev, dropping the oldest queued event when full.
func (b *Browser) emitLocked(op Op, r Record) {
	if b.stopped {
		return
	}
	ev := Event{Op: op, Record: cloneRecord(r)}
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

// handle is the library's callback, run on its goroutine: it must not
// block, and it does not (emitLocked never waits).
func (b *Browser) handle(e zeroconf.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return
	}
	name := e.Service.Name
	cur := b.boards[name]
	if e.Op == zeroconf.OpRemoved {
		if cur == nil || cur.removal != nil {
			return
		}
		if b.cfg.Grace <= 0 {
			delete(b.boards, name)
			b.emitLocked(Removed, cur.rec)
			return
		}
		cur.removal = time.AfterFunc(b.cfg.Grace, func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.boards[name] == cur && cur.removal != nil {
				delete(b.boards, name)
				b.emitLocked(Removed, cur.rec)
			}
		})
		return
	}
	rec, err := b.record(e.Service)
	if err != nil {
		b.log.Debug("mdns: ignoring service", "name", name, "err", err)
		return
	}
	if cur == nil {
		b.boards[name] = &entry{rec: rec}
		b.emitLocked(Added, rec)
		return
	}
	if cur.removal != nil {
		cur.removal.Stop()
		cur.removal = nil
	}
	changed := !cur.rec.SameAnnouncement(rec) || !slices.Equal(cur.rec.Addrs, rec.Addrs)
	cur.rec = rec
	if changed {
		b.emitLocked(Updated, rec)
	}
}

// record turns a resolved service into a Record.
func (b *Browser) record(s *zeroconf.Service) (Record, error) {
	r, err := ParseTXT(s.Text)
	if err != nil {
		return r, err
	}
	if r.ID != s.Name {
		b.log.Debug("mdns: instance name differs from TXT id", "name", s.Name, "id", r.ID)
	}
	r.Port = int(s.Port)
	for _, a := range s.Addrs {
		if a.Is6() && a.IsLinkLocalUnicast() && a.Zone() == "" {
			if b.zone == "" {
				continue // unusable without knowing the interface; see docs
			}
			a = a.WithZone(b.zone)
		}
		r.Addrs = append(r.Addrs, a)
	}
	r.Address = wsAddress(r.Addrs, r.Port, r.TLS)
	r.Source = "mdns"
	r.Seen = time.Now()
	return r, nil
}

// wsAddress picks the URL to dial: IPv4 first, then global (or ULA) IPv6,
// then link-local IPv6 with its zone; wss:// when the board serves TLS.
func wsAddress(addrs []netip.Addr, port int, tls bool) string {
	rank := func(a netip.Addr) int {
		switch {
		case a.Is4() || a.Is4In6():
			return 0
		case !a.IsLinkLocalUnicast():
			return 1
		default:
			return 2
		}
	}
	best := -1
	for i, a := range addrs {
		if best < 0 || rank(a) < rank(addrs[best]) {
			best = i
		}
	}
	if best < 0 {
		return ""
	}
	host := strings.Replace(addrs[best].Unmap().String(), "%", "%25", 1)
	scheme := "ws://"
	if tls {
		scheme = "wss://"
	}
	return scheme + net.JoinHostPort(host, strconv.Itoa(port))
}

func cloneRecord(r Record) Record {
	r.Capabilities = slices.Clone(r.Capabilities)
	r.Addrs = slices.Clone(r.Addrs)
	if r.Labels != nil {
		l := make(map[string]string, len(r.Labels))
		for k, v := range r.Labels {
			l[k] = v
		}
		r.Labels = l
	}
	return r
}

// Browse browses for wait (or until ctx ends) and returns the boards seen,
// for one-shot use (`boardlink ls`). The error is ctx's if it ended first.
func Browse(ctx context.Context, cfg BrowseConfig, wait time.Duration) ([]Record, error) {
	b := NewBrowser(cfg)
	if err := b.Start(ctx); err != nil {
		return nil, err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	var err error
	select {
	case <-t.C:
	case <-ctx.Done():
		err = ctx.Err()
	}
	boards := b.Boards()
	if serr := b.Stop(); err == nil {
		err = serr
	}
	return boards, err
}
