package discovery

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestConflictIgnoresOwnLinkLocal: the responder's own announcement,
// looped back from its link-local IPv6 address (which arrives with a
// zone), is not another responder; the same record from a neighbour's
// address is, and is logged once.
func TestConflictIgnoresOwnLinkLocal(t *testing.T) {
	var logs bytes.Buffer
	rec := Record{ID: "board1", Model: "sim", Protocol: 1, BootID: "boot-2", Port: 7207}
	r := &responder{log: slog.New(slog.NewTextHandler(&logs, nil)), warned: map[string]time.Time{},
		services: map[string]*service{"board1": {rec: rec}}}
	own := netip.MustParseAddr("fe80::34e9:7ff:fe82:dca7")
	ifc := &ifaceAddrs{v4: []netip.Addr{netip.MustParseAddr("10.77.0.2")}, v6: []netip.Addr{own}}
	old := rec
	old.BootID = "boot-1" // an announcement sent before the update, heard after it
	m := new(dns.Msg)
	m.Response = true
	m.Answer = []dns.RR{(&service{rec: old}).txtRR(1)}

	r.checkConflictLocked(m, packet{src: netip.AddrPortFrom(own.WithZone("mdns0"), mdnsPort), fam: v6}, ifc)
	if logs.Len() != 0 {
		t.Fatalf("our own looped-back announcement taken for another responder:\n%s", logs.String())
	}
	other := netip.MustParseAddr("fe80::1").WithZone("mdns0")
	r.checkConflictLocked(m, packet{src: netip.AddrPortFrom(other, mdnsPort), fam: v6}, ifc)
	if !strings.Contains(logs.String(), "another responder announces this board id") {
		t.Fatalf("a neighbour announcing our id was not logged:\n%s", logs.String())
	}
}
