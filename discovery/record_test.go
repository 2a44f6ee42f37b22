package discovery

import (
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/proto"
)

// TestRecordOf: an agent announces its own version as ver and the image
// version of the slot it booted as sver.
func TestRecordOf(t *testing.T) {
	info := proto.BoardInfo{ID: "lab-7", Model: "imx8", Agent: "0.9.0", Protocol: proto.Version, BootID: "b1",
		Slots: []proto.Slot{{Name: "a", Version: "2.0.0", Active: true}, {Name: "b", Version: "2.1.0", Booted: true}}}
	r := RecordOf(info, 7207, true)
	if r.Version != "0.9.0" || r.Slot != "b" || r.SlotVersion != "2.1.0" || !r.TLS || r.Port != 7207 {
		t.Fatalf("RecordOf = %+v", r)
	}
	if !slices.Contains(r.TXT(), "sver=2.1.0") || !slices.Contains(r.TXT(), "ver=0.9.0") {
		t.Fatalf("TXT %q", r.TXT())
	}
	info.Slots = nil // an agent without updates: no slot to name
	if r := RecordOf(info, 7207, true); r.Slot != "" || r.SlotVersion != "" || slices.ContainsFunc(r.TXT(), func(s string) bool {
		return strings.HasPrefix(s, "sver=")
	}) {
		t.Fatalf("without slots: %+v", r)
	}
}

// TestInterfaces: without a selection loopback is left out and says so;
// a named interface is used when it can multicast, and one that does not
// exist is an error.
func TestInterfaces(t *testing.T) {
	all, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Interfaces(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, ifi := range all {
		used := slices.Contains(rep.Used, ifi.Name)
		skipped := slices.IndexFunc(rep.Skipped, func(s SkippedIface) bool { return s.Name == ifi.Name })
		if used == (skipped >= 0) {
			t.Errorf("%s: used %v, skipped %v: want exactly one", ifi.Name, used, skipped >= 0)
		}
		if ifi.Flags&net.FlagLoopback != 0 && (used || unusable(ifi) == "" && rep.Skipped[skipped].Reason != "loopback, used only when named") {
			t.Errorf("loopback %s: used %v, skipped %+v", ifi.Name, used, rep.Skipped)
		}
	}
	lo, err := Interfaces([]string{"lo"})
	if err != nil {
		t.Fatal(err)
	}
	ifi, _ := net.InterfaceByName("lo")
	if why := unusable(*ifi); why == "" && !slices.Equal(lo.Used, []string{"lo"}) ||
		why != "" && (len(lo.Used) != 0 || len(lo.Skipped) != 1 || lo.Skipped[0].Reason != why) {
		t.Fatalf("--iface lo (%s): %+v", why, lo)
	}
	if _, err := Interfaces([]string{"nosuchif0"}); err == nil {
		t.Fatal("a missing interface is not an error")
	}
}
