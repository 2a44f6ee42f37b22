package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// ifaceWatchInterval is how often a running Advertiser or Browser looks at
// the host's interfaces; when the selection or its addresses change (a USB
// Ethernet gadget comes up, DHCP hands out an address) the mDNS client is
// reloaded, which re-announces and re-queries on the new set.
var ifaceWatchInterval = 3 * time.Second

// ifaceSelector picks the interfaces mDNS runs on. It is handed to the
// library as its interface lister, so it is called from the library's own
// goroutine.
type ifaceSelector struct {
	names []string // empty: every up, multicast-capable, non-loopback interface

	// muted makes the lister return no interface at all; see
	// Advertiser.Update for why.
	muted   atomic.Bool
	mutedCh chan struct{}
}

func newIfaceSelector(names []string) *ifaceSelector {
	return &ifaceSelector{names: slices.Clone(names), mutedCh: make(chan struct{}, 1)}
}

// list is the library's lister.
func (s *ifaceSelector) list() ([]net.Interface, error) {
	if s.muted.Load() {
		select {
		case s.mutedCh <- struct{}{}:
		default:
		}
		return nil, nil
	}
	return s.selected()
}

func (s *ifaceSelector) selected() ([]net.Interface, error) {
	all, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []net.Interface
	for _, ifi := range all {
		if len(s.names) == 0 {
			if unusable(ifi) == "" && ifi.Flags&net.FlagLoopback == 0 {
				out = append(out, ifi)
			}
		} else if slices.Contains(s.names, ifi.Name) {
			// Named interfaces are taken as they are; the library skips
			// one that is down or cannot multicast, and the watcher
			// reloads when it comes up.
			out = append(out, ifi)
		}
	}
	return out, nil
}

// unusable says why mDNS cannot run on ifi now, or "" if it can.
// usable lists the selected interfaces mDNS can run on now, with their
// addresses; needAddr leaves out those that have none. ok is false when
// the interfaces could not be listed (logged).
func (s *ifaceSelector) usable(log *slog.Logger, needAddr bool) (addrs map[int]*ifaceAddrs, up []net.Interface, ok bool) {
	ifis, err := s.list()
	if err != nil {
		log.Warn("mdns: list interfaces", "err", err)
		return nil, nil, false
	}
	addrs = map[int]*ifaceAddrs{}
	for _, ifi := range ifis {
		if unusable(ifi) != "" {
			continue
		}
		ia := addrsOf(ifi)
		if needAddr && len(ia.v4)+len(ia.v6) == 0 {
			continue
		}
		addrs[ifi.Index] = &ia
		up = append(up, ifi)
	}
	return addrs, up, true
}

func unusable(ifi net.Interface) string {
	switch {
	case ifi.Flags&net.FlagUp == 0:
		return "down"
	case ifi.Flags&net.FlagMulticast == 0:
		return "cannot multicast"
	}
	return ""
}

// IfaceReport is where mDNS runs, now, for a selection of interfaces.
type IfaceReport struct {
	// Used are the interfaces mDNS runs on: selected, up and able to
	// multicast. Empty: mDNS hears nothing at all.
	Used []string `json:"used"`
	// Skipped are the interfaces left out, each with why: selected but
	// down or unable to multicast, or, without a selection, loopback
	// (used only when named).
	Skipped []SkippedIface `json:"skipped,omitempty"`
}

// SkippedIface is an interface mDNS does not run on, and why.
type SkippedIface struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Interfaces reports where mDNS runs for names, a selection as
// BrowseConfig.Ifaces and AdvertiseConfig.Ifaces take it (empty: every up,
// multicast-capable, non-loopback interface). A name that does not exist
// is an error.
func Interfaces(names []string) (IfaceReport, error) {
	var rep IfaceReport
	for _, n := range names {
		if _, err := net.InterfaceByName(n); err != nil {
			return rep, fmt.Errorf("mdns: interface %q: %w", n, err)
		}
	}
	all, err := net.Interfaces()
	if err != nil {
		return rep, fmt.Errorf("mdns: list interfaces: %w", err)
	}
	for _, ifi := range all {
		why := unusable(ifi)
		switch {
		case len(names) > 0 && !slices.Contains(names, ifi.Name):
			continue
		case why != "":
		case len(names) == 0 && ifi.Flags&net.FlagLoopback != 0:
			why = "loopback, used only when named"
		default:
			rep.Used = append(rep.Used, ifi.Name)
			continue
		}
		rep.Skipped = append(rep.Skipped, SkippedIface{Name: ifi.Name, Reason: why})
	}
	return rep, nil
}

// check fails for a named interface that does not exist, and warns about
// a selection that cannot multicast (yet).
func (s *ifaceSelector) check(log *slog.Logger) error {
	rep, err := Interfaces(s.names)
	if err != nil {
		return err
	}
	if len(s.names) > 0 { // without names, interfaces left out are the rule
		for _, sk := range rep.Skipped {
			log.Warn("mdns: interface is down or cannot multicast; waiting for it", "iface", sk.Name, "why", sk.Reason)
		}
	}
	if len(rep.Used) == 0 {
		log.Warn("mdns: no usable interface yet", "ifaces", s.names, "skipped", rep.Skipped)
	}
	return nil
}

// snapshot describes the selection, to notice changes.
func (s *ifaceSelector) snapshot() string {
	sel, err := s.selected()
	if err != nil {
		return "error: " + err.Error()
	}
	var b strings.Builder
	for _, ifi := range sel {
		fmt.Fprintf(&b, "%d %s %s", ifi.Index, ifi.Name, ifi.Flags)
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			b.WriteString(" " + a.String())
		}
		b.WriteString("\n")
	}
	return b.String()
}

// watch calls reload whenever the selection changes, until ctx ends.
func (s *ifaceSelector) watch(ctx context.Context, reload func()) {
	last := s.snapshot()
	t := time.NewTicker(ifaceWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if now := s.snapshot(); now != last {
				last = now
				reload()
			}
		}
	}
}

// singleName is the one interface name of an explicit selection, used as
// the zone of link-local IPv6 addresses; "" when there are several.
func (s *ifaceSelector) singleName() string {
	if len(s.names) == 1 {
		return s.names[0]
	}
	if len(s.names) == 0 {
		if sel, err := s.selected(); err == nil && len(sel) == 1 {
			return sel[0].Name
		}
	}
	return ""
}
