package discovery

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// portCounters is what node n has sent onto the lab's bridge so far:
// packets and bytes received by its bridge port (Ethernet frames, IPv6
// neighbour discovery included).
func (l *lab) portCounters(n int) (pkts, bytes float64) {
	l.t.Helper()
	out, err := exec.Command("ip", "-n", l.bridge, "-s", "-j", "link", "show", fmt.Sprintf("p%d", n)).Output()
	if err != nil {
		l.t.Fatalf("ip link show p%d: %v", n, err)
	}
	var links []struct {
		Stats struct {
			RX struct {
				Bytes   float64 `json:"bytes"`
				Packets float64 `json:"packets"`
			} `json:"rx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		l.t.Fatalf("ip link show p%d: %v %s", n, err, out)
	}
	return links[0].Stats.RX.Packets, links[0].Stats.RX.Bytes
}

// idleWindow is how long idle traffic is counted, after settle.
const (
	idleSettle = 20 * time.Second
	idleWindow = 60 * time.Second
)

// idle is the traffic of one idle span, per second: what the watcher
// (node 1) sent, and what the boards (node 2) sent.
type idle struct {
	watcherPkts, watcherBytes float64
	boardsPkts, boardsBytes   float64
}

func (i idle) pkts() float64  { return i.watcherPkts + i.boardsPkts }
func (i idle) bytes() float64 { return i.watcherBytes + i.boardsBytes }

// linkShare is the share of a 100 Mbit/s link that boards boards and
// watchers watchers would take, scaled from i, measured with measured
// boards and one watcher: the boards' traffic grows with their number
// (heartbeats, answers), the watcher's with the watchers'.
func (i idle) linkShare(measured, boards, watchers int) float64 {
	perBoard := i.boardsBytes / float64(measured)
	return (float64(boards)*perBoard + float64(watchers)*i.watcherBytes) * 8 / 100e6
}

// measureIdle counts what the watcher (node 1) and the boards (node 2)
// send in idleWindow, after idleSettle.
func measureIdle(b *testing.B, l *lab) idle {
	time.Sleep(idleSettle) // a benchmark, not a test: it measures a span of time
	p0, b0 := l.portCounters(1)
	q0, c0 := l.portCounters(2)
	time.Sleep(idleWindow)
	p1, b1 := l.portCounters(1)
	q1, c1 := l.portCounters(2)
	secs := idleWindow.Seconds()
	return idle{(p1 - p0) / secs, (b1 - b0) / secs, (q1 - q0) / secs, (c1 - c0) / secs}
}

// BenchmarkIdleTraffic: 60 boards, each its own process, and one
// watcher, on one link: the packets and bytes per second the link
// carries once everything is known (ours, then Debian's avahi-daemon
// publishing the same 60 services to an avahi-browse), the share of a
// 100 Mbit/s link that 1,000 boards and 10 watchers would take at the
// measured per-board and per-watcher rates, and the time from SIGKILL of
// one of our boards to its removal at the watcher.
//
//	go test -run '^$' -bench IdleTraffic -benchtime 1x ./discovery
func BenchmarkIdleTraffic(b *testing.B) {
	const boards = 60
	for range b.N {
		l := newLab(b)
		watcher, nd := l.addNode("watcher", nodeOpts{}), l.addNode("boards", nodeOpts{})

		br := helper(b, "browse", watcher.NS, "browse", labIface, "udp")
		br.expect("ready", 10*time.Second)
		var ads []*proc
		for i := range boards {
			ads = append(ads, helper(b, fmt.Sprintf("agent %d", i), nd.NS, "advertise", labIface, fmt.Sprintf("idle-%02d", i), fmt.Sprint(7000+i), "boot-1"))
		}
		seen := map[string]bool{}
		for len(seen) < boards {
			if ev := (eventStream{br}).next(30 * time.Second); ev.Op == Added {
				seen[ev.Record.ID] = true
			}
		}
		ours := measureIdle(b, l)
		b.ReportMetric(ours.pkts(), "ours-pkts/s")
		b.ReportMetric(ours.bytes(), "ours-B/s")
		b.ReportMetric(ours.watcherBytes, "ours-watcher-B/s")
		b.ReportMetric(100*ours.linkShare(boards, 1000, 10), "ours-1000x10-%-of-100Mbit")

		t0 := time.Now()
		if err := ads[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
			b.Fatal(err)
		}
		ev := (eventStream{br}).waitFor(Removed, "idle-00", 30*time.Second)
		b.ReportMetric(time.Unix(0, ev.At).Sub(t0).Seconds(), "s/removal-after-SIGKILL")
		for _, a := range ads {
			a.kill()
		}
		br.kill()

		if _, err := exec.LookPath("avahi-daemon"); err != nil {
			b.Logf("no avahi-daemon: no comparison (%v)", err)
			continue
		}
		al := newLab(b)
		aw, an := al.addNode("watcher", nodeOpts{}), al.addNode("boards", nodeOpts{})
		wenv, penv := avahi(b, aw), avahi(b, an)
		abr := start(b, "avahi-browse", aw.NS, wenv, "avahi-browse", "-r", "-p", Service)
		for i := range boards {
			id := fmt.Sprintf("idle-%02d", i)
			start(b, "avahi-publish "+id, an.NS, penv, "avahi-publish", "-s", id, Service, fmt.Sprint(7000+i),
				"id="+id, "model=sim", "proto=4", "caps=exec,file,ota", "ver=0.1.0", "boot=boot-1", "slot=a", "l.lab=netns", "l.rack=r1")
		}
		resolved := map[string]bool{}
		for len(resolved) < boards {
			// =;IFACE;PROTO;NAME;TYPE;DOMAIN;HOST;ADDRESS;PORT;TXT
			if f := strings.Split(abr.expect("=", 60*time.Second), ";"); len(f) > 3 {
				resolved[f[3]] = true
			}
		}
		theirs := measureIdle(b, al)
		b.ReportMetric(theirs.pkts(), "avahi-pkts/s")
		b.ReportMetric(theirs.bytes(), "avahi-B/s")
		b.ReportMetric(100*theirs.linkShare(boards, 1000, 10), "avahi-1000x10-%-of-100Mbit")
	}
}
