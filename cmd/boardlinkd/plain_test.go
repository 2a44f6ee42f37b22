package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// notifySocket listens where a Type=notify unit's systemd would, and
// returns its path and the first datagram the agent sends to it.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		if n, err := pc.Read(buf); err == nil {
			got <- string(buf[:n])
		}
	}()
	return path, got
}

// TestLinuxBoardWithoutSlots runs the real boardlinkd on a linux board
// with no A/B slots, as a Type=notify systemd unit runs it: it says
// READY=1 once it serves; it runs commands, which do not inherit the
// notification socket; it takes a push and a download; it serves no
// update (no ota capability, no slots, ota.status is method_not_found,
// nothing in the state dir) on either link; and it reboots with the
// reboot command.
func TestLinuxBoardWithoutSlots(t *testing.T) {
	bin := buildAgent(t)
	dir := t.TempDir()
	files, state := filepath.Join(dir, "files"), filepath.Join(dir, "state")
	if err := os.Mkdir(files, 0o755); err != nil {
		t.Fatal(err)
	}
	marker, uart := filepath.Join(dir, "rebooted"), filepath.Join(dir, "uart.sock")
	sock, ready := notifySocket(t)
	t.Setenv(notifySocketEnv, sock) // the agent inherits it, as from systemd
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()

	b := startBoard(t, bin, "--board", "linux", "--state-dir", state, "--listen", "127.0.0.1:0", "--id", "plain-1", "--model", "m1",
		"--root", files, "--serial", "unix:"+uart, "--reboot-command", "touch "+marker)
	select {
	case msg := <-ready:
		if msg != "READY=1" {
			t.Errorf("notified %q, want READY=1", msg)
		}
		// Said once the servers listen: the serial line's socket takes a
		// connection now (its log line may still be in the pipe).
		if conn, err := net.Dial("unix", uart); err != nil {
			t.Errorf("READY=1 before the agent serves: %v", err)
		} else {
			conn.Close()
		}
	case <-b.done:
		t.Fatalf("boardlinkd exited before it was ready: %v\n%s", b.err, b.logs.String())
	case <-ctx.Done():
		t.Fatalf("no READY=1:\n%s", b.logs.String())
	}

	c, err := dispatcher.Dial(ctx, b.addr(t), b.opts())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != "plain-1" || info.Model != "m1" || len(info.Slots) != 0 {
		t.Errorf("info: id %q model %q slots %+v; want plain-1, m1, no slots", info.ID, info.Model, info.Slots)
	}
	for _, capa := range []string{proto.CapExec, proto.CapFile, proto.CapDownload, proto.CapReboot} {
		if !slices.Contains(info.Capabilities, capa) {
			t.Errorf("capabilities %v lack %s", info.Capabilities, capa)
		}
	}
	if slices.Contains(info.Capabilities, proto.CapOTA) {
		t.Errorf("capabilities %v include %s", info.Capabilities, proto.CapOTA)
	}
	if _, err := c.OTAStatus(ctx); !proto.IsReason(err, proto.ReasonMethodNotFound) {
		t.Errorf("ota.status = %v, want method_not_found", err)
	}
	if _, err := os.Stat(filepath.Join(state, "ota")); !os.IsNotExist(err) {
		t.Errorf("a board without slots keeps update state: %v", err)
	}

	// A command: its code, its streams apart, and no NOTIFY_SOCKET.
	var stdout, stderr bytes.Buffer
	res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"sh", "-c", `echo "${NOTIFY_SOCKET-unset}"; echo oops >&2; exit 42`},
		Stdout: &stdout, Stderr: &stderr})
	if err != nil || res.ExitCode != 42 || stdout.String() != "unset\n" || stderr.String() != "oops\n" {
		t.Errorf("exec: %+v, %v; stdout %q stderr %q", res, err, stdout.String(), stderr.String())
	}

	// A push, and a download the board makes itself.
	payload := make([]byte, 300<<10)
	rand.Read(payload)
	local := filepath.Join(dir, "payload")
	if err := os.WriteFile(local, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Push(ctx, local, filepath.Join(files, "pushed"), dispatcher.TransferOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(files, "pushed")); got != string(payload) {
		t.Errorf("pushed %d bytes, the board holds %d", len(payload), len(got))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(payload) }))
	defer srv.Close()
	sum := sha256.Sum256(payload)
	if _, err := c.Download(ctx, dispatcher.DownloadRequest{URL: srv.URL + "/payload", Path: filepath.Join(files, "fetched"),
		SHA256: hex.EncodeToString(sum[:])}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(files, "fetched")); got != string(payload) {
		t.Errorf("downloaded %d bytes, want %d", len(got), len(payload))
	}

	// The serial line says the same.
	sc, err := dispatcher.Dial(ctx, "unix://"+uart, b.opts())
	if err != nil {
		t.Fatal(err)
	}
	if si, err := sc.Info(ctx); err != nil || slices.Contains(si.Capabilities, proto.CapOTA) || len(si.Slots) != 0 {
		t.Errorf("info over the serial line: %+v, %v", si, err)
	}
	if _, err := sc.OTAStatus(ctx); !proto.IsReason(err, proto.ReasonMethodNotFound) {
		t.Errorf("ota.status over the serial line = %v, want method_not_found", err)
	}
	sc.Close()

	// A reboot stops the agent cleanly (no update machine to stop) and
	// runs the reboot command; boardlinkd then exits 0.
	if _, err := c.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.wait(t); err != nil {
		t.Fatalf("boardlinkd after the reboot command: %v\n%s", err, b.logs.String())
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the reboot command did not run: %v", err)
	}
	logs := b.logs.String()
	if !strings.Contains(logs, `msg="boardlinkd started"`) || !strings.Contains(logs, `loader=none ota="off: no A/B slots"`) ||
		strings.Contains(logs, "component=ota") || !strings.Contains(logs, `msg="boardlinkd stopped"`) {
		t.Errorf("logs of a board without slots:\n%s", logs)
	}
}

// TestLinuxBoardWithoutSlotsAnnounces: the mDNS record of a board
// without slots has no ota capability and no slot.
func TestLinuxBoardWithoutSlotsAnnounces(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	bin := buildAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	br := discovery.NewBrowser(discovery.BrowseConfig{Ifaces: []string{"lo"}})
	if err := br.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer br.Stop()
	b := startBoard(t, bin, "--board", "linux", "--state-dir", filepath.Join(t.TempDir(), "state"), "--listen", "127.0.0.1:0",
		"--id", "plain-2", "--model", "m1", "--iface", "lo", "--no-mdns=false", "--reboot-command", "true") // startBoard says --no-mdns
	for {
		select {
		case ev := <-br.Events():
			if ev.Op != discovery.Added || ev.Record.ID != "plain-2" {
				continue
			}
			r := ev.Record
			if slices.Contains(r.Capabilities, proto.CapOTA) || r.Slot != "" || r.SlotVersion != "" || !slices.Contains(r.Capabilities, proto.CapExec) {
				t.Errorf("announced %+v; want exec and no ota, no slot", r)
			}
			for _, kv := range r.TXT() {
				if strings.HasPrefix(kv, "slot=") || strings.HasPrefix(kv, "sver=") {
					t.Errorf("TXT %q", kv)
				}
			}
			return
		case <-b.done:
			t.Fatalf("boardlinkd exited: %v\n%s", b.err, b.logs.String())
		case <-ctx.Done():
			t.Fatalf("never announced:\n%s", b.logs.String())
		}
	}
}

// TestSdNotify: the word reaches a socket given as a path or, as systemd
// may give it, an abstract name ('@'); no socket is no word; anything
// else is an error, not a write somewhere else.
func TestSdNotify(t *testing.T) {
	path, got := notifySocket(t)
	abstract := "@boardlink-test-" + strings.ReplaceAll(t.TempDir(), "/", "-")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: abstract, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for _, sock := range []string{path, abstract} {
		if err := sdNotify(sock, "READY=1"); err != nil {
			t.Fatalf("sdNotify(%q): %v", sock, err)
		}
	}
	if msg := <-got; msg != "READY=1" {
		t.Errorf("on the path socket: %q", msg)
	}
	buf := make([]byte, 64)
	if n, err := pc.Read(buf); err != nil || string(buf[:n]) != "READY=1" {
		t.Errorf("on the abstract socket: %q, %v", buf[:n], err)
	}
	if err := sdNotify("", "READY=1"); err != nil {
		t.Errorf("no socket: %v", err)
	}
	for _, bad := range []string{"vsock:2:1234", "relative.sock", filepath.Join(t.TempDir(), "absent.sock")} {
		if err := sdNotify(bad, "READY=1"); err == nil {
			t.Errorf("sdNotify(%q) succeeded", bad)
		}
	}
}
