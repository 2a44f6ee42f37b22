package discovery

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport/seriallink"
)

// countingOpen opens ports like the real scan does and counts every byte
// the probe writes to them.
func countingOpen(written *atomic.Int64) func(string, int) (io.ReadWriteCloser, error) {
	return func(dev string, baud int) (io.ReadWriteCloser, error) {
		p, err := seriallink.OpenPort(dev, baud)
		if err != nil {
			return nil, err
		}
		return writeCounter{p, written}, nil
	}
}

type writeCounter struct {
	io.ReadWriteCloser
	n *atomic.Int64
}

func (w writeCounter) Write(p []byte) (int, error) {
	w.n.Add(int64(len(p)))
	return w.ReadWriteCloser.Write(p)
}

// The board's side of each pty is the master; the host opens the slave by
// path, as it opens /dev/ttyUSB0.
func TestProbeFindsAgentByListening(t *testing.T) {
	master, slave := testenv.RawPTY(t)
	beacon := proto.Beacon{ID: "pty-board", Model: "imx8", Protocol: 1, Version: "1.2.3", BootID: "b1",
		Labels: map[string]string{"rack": "4"}}
	board := seriallink.NewEndpoint(master, seriallink.Config{Beacon: func() []byte {
		return []byte(`{"id":"pty-board","model":"imx8","proto":1,"ver":"1.2.3","boot":"b1","labels":{"rack":"4"}}`)
	}, BeaconInterval: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go board.Accept(ctx) // beacons while no session is open
	defer func() {
		slave.Close() // a blocked read on the master returns only when the slave side goes
		board.Close()
	}()
	var written atomic.Int64
	recs, err := ScanSerial(ctx, SerialConfig{Ports: []string{slave.Name()}, NoUSB: true, Open: countingOpen(&written)})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Fatalf("found %d boards, want 1", len(recs))
	}
	r := recs[0]
	if r.ID != beacon.ID || r.Model != beacon.Model || r.Labels["rack"] != "4" || r.Source != "serial" ||
		r.Address != "serial://"+slave.Name()+"?baud=115200" {
		t.Fatalf("record %+v", r)
	}
	if n := written.Load(); n != 0 {
		t.Fatalf("the probe wrote %d bytes", n)
	}
}

func TestProbeLeavesAShellAlone(t *testing.T) {
	master, slave := testenv.RawPTY(t)
	// The board's side runs a login prompt and records what reaches it.
	var received testenv.Buffer
	stop := make(chan struct{})
	defer close(stop)
	go io.Copy(&received, master)
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				master.Write([]byte("\r\nbuildroot login: "))
			}
		}
	}()
	var written atomic.Int64
	_, err := ProbePort(context.Background(), slave.Name(), SerialConfig{Wait: time.Second, Open: countingOpen(&written)})
	if !errors.Is(err, ErrNoBeacon) {
		t.Fatalf("probe of a shell: %v, want ErrNoBeacon", err)
	}
	// What the probe wrote crosses the pty ahead of a marker written after it.
	const marker = "written after the probe"
	if _, err := slave.Write([]byte(marker)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the marker to reach the shell", func() bool { return strings.Contains(received.String(), marker) })
	if got := strings.TrimSuffix(received.String(), marker); written.Load() != 0 || got != "" {
		t.Fatalf("the probe wrote %d bytes; the shell received %q", written.Load(), got)
	}
}

func TestProbeMissingPort(t *testing.T) {
	_, err := ProbePort(context.Background(), "/dev/boardlink-no-such-port", SerialConfig{})
	if err == nil || errors.Is(err, ErrNoBeacon) {
		t.Fatalf("got %v, want an open error", err)
	}
	if _, statErr := os.Stat("/dev/boardlink-no-such-port"); statErr == nil {
		t.Skip("the port exists here")
	}
}
