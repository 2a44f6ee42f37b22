package discovery

// The mDNS half of discovery: the Advertiser (agent side) and the Browser
// (host side), on an mDNS implementation of our own (mdns_*.go) over
// github.com/miekg/dns and golang.org/x/net. docs/discovery.md says why
// and what it does on the wire.

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
)

// Defaults and limits of the mDNS side.
const (
	// DefaultHeartbeat is how often an Advertiser multicasts each board's
	// heartbeat record. A browser that misses one asks that board once
	// (a legacy unicast question) before removing it, so a board that
	// vanished is removed within Heartbeat + 1.5 s (4.5 s).
	DefaultHeartbeat = 3 * time.Second
	// DefaultReboot is how long browsers keep a board that announced a
	// reboot (Advertiser.Reboot) without hearing from it.
	DefaultReboot = 2 * time.Minute
	// DefaultExpiry bounds how long a browser keeps a board that sends
	// no heartbeat (another mDNS stack, an older agent) and stopped
	// answering without a goodbye: the browser asks it at 80% and 90% of
	// Expiry after it last heard it, and removes it at Expiry.
	DefaultExpiry = 10 * time.Second
	// MinExpiry is the smallest Expiry accepted; smaller values are raised
	// to it, because each browser asks such a board about once per Expiry.
	MinExpiry = 2 * time.Second
	// DefaultGrace is how long a removal after a goodbye is held back in
	// case the board comes straight back (an agent restart): it is then
	// reported as one Updated instead of Removed + Added.
	DefaultGrace = time.Second
	// EventBuffer is the capacity of Browser.Events. When the reader falls
	// behind, the oldest pending event is dropped (and counted in the log);
	// Boards() always has the current state.
	EventBuffer = 256

	maxTXTString = 255  // RFC 6763 6.1: one length byte
	maxTXTTotal  = 1300 // RFC 6763 6.2: keep the TXT record small enough for one packet
)

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// ---------------------------------------------------------------- advertise

// AdvertiseConfig configures an Advertiser.
type AdvertiseConfig struct {
	// Ifaces names the interfaces to advertise on. Empty means every
	// interface that is up, can multicast and is not loopback, re-read
	// every few seconds. A name that does not exist is an error at Start;
	// one that is down is waited for.
	Ifaces []string
	// Heartbeat is how often the board's heartbeat record is multicast;
	// zero means DefaultHeartbeat, negative none (browsers then fall back
	// on their Expiry). Bounded to [0.5 s, 10 min].
	Heartbeat time.Duration
	Logger    *slog.Logger // nil: discard
}

func (c AdvertiseConfig) heartbeat() time.Duration {
	switch {
	case c.Heartbeat == 0:
		return DefaultHeartbeat
	case c.Heartbeat < 0:
		return 0
	}
	return min(max(c.Heartbeat, minHeartbeat), maxHeartbeat)
}

// Advertiser announces one board as _boardlink._tcp: instance name = the
// board id, port = the WebSocket port, TXT = Record.TXT(), host name
// boardlink-<id>.local with the addresses of each interface it runs on.
// The Advertisers of one process share one responder (and its sockets)
// per interface selection, which answers for all of them at once.
type Advertiser struct {
	cfg AdvertiseConfig
	log *slog.Logger

	mu   sync.Mutex
	rec  Record
	resp *responder // nil until Start, and after Stop
}

// NewAdvertiser returns an Advertiser; nothing happens until Start.
func NewAdvertiser(cfg AdvertiseConfig) *Advertiser {
	return &Advertiser{cfg: cfg, log: orDiscard(cfg.Logger)}
}

func checkRecord(r Record) error {
	if err := CheckID(r.ID); err != nil {
		return fmt.Errorf("mdns: %w", err)
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
	if a.resp != nil {
		return errors.New("mdns: advertiser already started")
	}
	resp, err := acquireResponder(a.cfg, a.log)
	if err != nil {
		return err
	}
	if err := resp.add(r); err != nil {
		resp.release()
		return err
	}
	a.rec, a.resp = r, resp
	a.log.Info("mdns: advertising", "id", r.ID, "port", r.Port, "txt", r.TXT())
	return nil
}

// Update announces a changed record (a new boot id, another slot, another
// port) for the same board id. Browsers see one Updated event: the new
// records replace the old ones in every cache (they carry the cache-flush
// bit), and no goodbye is sent.
func (a *Advertiser) Update(ctx context.Context, r Record) error {
	if err := checkRequest(ctx, r); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.resp == nil {
		return errors.New("mdns: advertiser not started")
	}
	if r.ID != a.rec.ID {
		return fmt.Errorf("mdns: update changes the board id from %q to %q; Stop and Start instead", a.rec.ID, r.ID)
	}
	if r.Port == a.rec.Port && slices.Equal(r.TXT(), a.rec.TXT()) {
		return nil
	}
	a.resp.update(r)
	a.rec = r
	a.log.Info("mdns: updated", "id", r.ID, "port", r.Port, "txt", r.TXT())
	return nil
}

// Stop sends goodbye packets (TTL 0) on every interface and stops
// answering. Browsers remove the board at once (plus their Grace). Stop
// on a stopped Advertiser does nothing.
func (a *Advertiser) Stop(ctx context.Context) error { return a.leave(ctx, 0) }

// Reboot is Stop for a board that is rebooting: instead of goodbyes it
// multicasts that the board will be back within within (DefaultReboot
// when 0; at most 30 minutes). Browsers keep listing it, and its next
// Start, with a new boot id, shows as one Updated however long the
// reboot took; a board not back by then is removed.
func (a *Advertiser) Reboot(ctx context.Context, within time.Duration) error {
	if within <= 0 {
		within = DefaultReboot
	}
	return a.leave(ctx, min(within, maxReboot))
}

func (a *Advertiser) leave(ctx context.Context, reboot time.Duration) error {
	a.mu.Lock()
	resp, id := a.resp, a.rec.ID
	a.resp = nil
	a.mu.Unlock()
	if resp == nil {
		return nil
	}
	defer resp.release()
	if reboot > 0 {
		a.log.Info("mdns: announced a reboot", "id", id, "back_within", reboot)
	}
	if err := resp.remove(ctx, id, reboot); err != nil {
		return fmt.Errorf("mdns: goodbye: %w", err)
	}
	return nil
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
	r.Conflict = slices.Clone(r.Conflict)
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
