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
			if ifi.Flags&net.FlagUp != 0 && ifi.Flags&net.FlagMulticast != 0 && ifi.Flags&net.FlagLoopback == 0 {
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

// check fails for a named interface that does not exist, and warns about
// a selection that cannot multicast (yet).
func (s *ifaceSelector) check(log *slog.Logger) error {
	for _, n := range s.names {
		if _, err := net.InterfaceByName(n); err != nil {
			return fmt.Errorf("mdns: interface %q: %w", n, err)
		}
	}
	sel, err := s.selected()
	if err != nil {
		return fmt.Errorf("mdns: list interfaces: %w", err)
	}
	usable := 0
	for _, ifi := range sel {
		if ifi.Flags&net.FlagUp != 0 && ifi.Flags&net.FlagMulticast != 0 {
			usable++
		} else {
			log.Warn("mdns: interface is down or cannot multicast; waiting for it", "iface", ifi.Name, "flags", ifi.Flags.String())
		}
	}
	if usable == 0 {
		log.Warn("mdns: no usable interface yet", "ifaces", s.names)
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
