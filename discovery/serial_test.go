package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/internal/uucplock"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport/seriallink"
)

// countingOpen opens ports like the real scan does and counts every byte
// the probe writes to them. It fails the test when the probe opens a
// port without holding its uucp lock.
func countingOpen(t *testing.T, written *atomic.Int64) func(string, int) (io.ReadWriteCloser, error) {
	return func(dev string, baud int) (io.ReadWriteCloser, error) {
		if pid, alive, err := uucplock.Owner(filepath.Join(uucplock.Dirs[0], uucplock.Name(dev))); err != nil || !alive || pid != os.Getpid() {
			t.Errorf("the probe opened %s without its lock file: pid %d, %v", dev, pid, err)
		}
		p, err := openTTY(dev, baud)
		if err != nil {
			return nil, err
		}
		return writeCounter{p, written}, nil
	}
}

// requireLockDir skips unless this user can write the uucp lock
// directory, where the probe keeps its lock.
func requireLockDir(t *testing.T) {
	t.Helper()
	f, err := os.CreateTemp(uucplock.Dirs[0], "boardlink-test-")
	if err != nil {
		testenv.SkipOrFail(t, "cannot write the lock directory %s: %v", uucplock.Dirs[0], err)
	}
	f.Close()
	os.Remove(f.Name())
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
	requireLockDir(t)
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
	recs, skipped, err := ScanSerial(ctx, SerialConfig{Ports: []string{slave.Name()}, NoUSB: true, Open: countingOpen(t, &written)})
	if err != nil || len(skipped) > 0 {
		t.Fatal(err, skipped)
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
	if _, err := os.Stat(filepath.Join(uucplock.Dirs[0], uucplock.Name(slave.Name()))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the probe left its lock file: %v", err)
	}
}

func TestProbeLeavesAShellAlone(t *testing.T) {
	requireLockDir(t)
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
	_, err := ProbePort(context.Background(), slave.Name(), SerialConfig{Wait: time.Second, Open: countingOpen(t, &written)})
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

// A port another process reads (a `cat` on the pty, as a terminal
// program would) is not opened: every line written to it reaches that
// process while the scan runs, and the scan says it skipped the port
// and who holds it.
func TestProbeSkipsAPortInUse(t *testing.T) {
	master, slave := testenv.RawPTY(t)
	var got testenv.Buffer
	cat := exec.Command("cat", slave.Name())
	cat.Stdout = &got
	if err := cat.Start(); err != nil {
		testenv.SkipOrFail(t, "cannot run cat: %v", err)
	}
	t.Cleanup(func() { cat.Process.Kill(); cat.Wait() })
	const lines = 200
	sent := 0
	send := func(n int) {
		for range n {
			fmt.Fprintf(master, "line %03d\n", sent)
			sent++
		}
	}
	send(1)
	testenv.Eventually(t, "cat to read the pty", func() bool { return strings.Contains(got.String(), "line 000\n") })

	done := make(chan struct{})
	var (
		skipped []SkippedPort
		err     error
	)
	go func() {
		defer close(done)
		_, skipped, err = ScanSerial(context.Background(), SerialConfig{Ports: []string{slave.Name()}, NoUSB: true, Wait: time.Second})
	}()
	for sent < lines {
		send(1)
		select {
		case <-done:
			send(lines - sent)
		default:
		}
	}
	<-done
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := range lines {
		fmt.Fprintf(&want, "line %03d\n", i)
	}
	testenv.Eventually(t, "every line to reach cat", func() bool { return len(got.String()) >= want.Len() })
	if got.String() != want.String() {
		t.Fatalf("cat received %d of %d bytes:\n%s", len(got.String()), want.Len(), got.String())
	}
	if len(skipped) != 1 || skipped[0].Port != slave.Name() || !strings.Contains(skipped[0].Reason, fmt.Sprintf("pid %d (cat)", cat.Process.Pid)) {
		t.Fatalf("skipped %+v, want %s skipped as open in cat's pid %d", skipped, slave.Name(), cat.Process.Pid)
	}
}

// A port whose uucp lock file names a live process is not opened; a lock
// left by a process that is gone is taken over, and removed after.
func TestProbeHonoursLockFiles(t *testing.T) {
	requireLockDir(t)
	_, slave := testenv.RawPTY(t)
	lock := filepath.Join(uucplock.Dirs[0], uucplock.Name(slave.Name()))
	t.Cleanup(func() { os.Remove(lock) })
	cfg := SerialConfig{Wait: 100 * time.Millisecond}

	if err := os.WriteFile(lock, []byte("         1\n"), 0o644); err != nil { // init never exits
		t.Fatal(err)
	}
	_, err := ProbePort(context.Background(), slave.Name(), cfg)
	var busy *PortBusyError
	if !errors.As(err, &busy) || !strings.Contains(busy.Reason, "locked by pid 1") || !strings.Contains(busy.Reason, lock) {
		t.Fatalf("probe of a locked port: %v, want a PortBusyError naming pid 1 and %s", err, lock)
	}

	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lock, []byte(fmt.Sprintf("%10d\n", dead.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ProbePort(context.Background(), slave.Name(), cfg); !errors.Is(err, ErrNoBeacon) {
		t.Fatalf("probe of a port with a stale lock: %v, want ErrNoBeacon", err)
	}
	if _, err := os.Stat(lock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the stale lock file is still there: %v", err)
	}
}
