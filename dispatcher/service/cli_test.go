package service

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/netlab"
	"github.com/boardlink/boardlink/internal/testenv"
)

// TestLeaseCLI: `boardlink lease -- CMD` gives CMD its boards in the
// environment, passes its exit status through and releases the lease
// when it ends; `lease acquire|renew|release|list` print JSON.
func TestLeaseCLI(t *testing.T) {
	cli := testenv.GoBuild(t, "../../cmd/boardlink")
	l := startLab(t, labOptions{boards: 3, labels: func(i int) map[string]string {
		return map[string]string{"rack": []string{"a", "b", "b"}[i]}
	}, ttl: 5 * time.Second})
	l.waitIdle()
	ctx := context.Background()
	run := cliRunner(t, cli, "--server", l.srv.URL, "BOARDLINK_TOKEN="+l.tokens["alice"], "XDG_CONFIG_HOME="+t.TempDir(),
		"XDG_CACHE_HOME="+t.TempDir())
	out, errOut, code := run("lease", "--select", "rack=b", "--count", "2", "--",
		"sh", "-c", `echo "$BOARDLINK_BOARDS|$BOARDLINK_ADDRESSES|$BOARDLINK_LEASE"; exit 7`)
	if code != 7 {
		t.Fatalf("exit %d, want 7\n%s", code, errOut)
	}
	parts := strings.Split(strings.TrimSpace(out), "|")
	b1, b2 := l.sim.Boards[1], l.sim.Boards[2]
	if len(parts) != 3 || parts[0] != b1.ID+","+b2.ID || parts[1] != b1.Addr()+","+b2.Addr() || !strings.HasPrefix(parts[2], "l-") {
		t.Fatalf("the command saw %q", out)
	}
	got, err := l.clients["alice"].Lease(ctx, parts[2])
	if err != nil || got.State != store.LeaseReleased || got.Holder != "alice" {
		t.Fatalf("after the command: %+v %v", got, err)
	}

	out, errOut, code = run("lease", "acquire", "--board", l.sim.Boards[0].ID, "--ttl", "1m")
	var acquired Lease
	if code != 0 || json.Unmarshal([]byte(out), &acquired) != nil || acquired.State != store.LeaseActive || acquired.TTLMs != 60000 {
		t.Fatalf("acquire: %d %s %s", code, out, errOut)
	}
	// Busy now: a lease that will not wait is refused (exit 1).
	if _, errOut, code := run("lease", "--board", l.sim.Boards[0].ID, "--wait", "0", "--", "true"); code != 1 || !strings.Contains(errOut, "not enough free boards") {
		t.Fatalf("%d %s", code, errOut)
	}
	out, _, code = run("lease", "renew", acquired.ID)
	var renewed Lease
	if code != 0 || json.Unmarshal([]byte(out), &renewed) != nil || !renewed.Renewed.After(acquired.Renewed) {
		t.Fatalf("renew: %d %s", code, out)
	}
	out, _, code = run("lease", "list")
	var list struct{ Leases []Lease }
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list.Leases) != 1 || list.Leases[0].ID != acquired.ID {
		t.Fatalf("list: %d %s", code, out)
	}
	out, _, code = run("lease", "release", acquired.ID)
	if code != 0 || !strings.Contains(out, `"state": "released"`) {
		t.Fatalf("release: %d %s", code, out)
	}
	// Without the service, lease is a usage error.
	cmd := exec.Command(cli, "lease", "--", "true")
	cmd.Env = append(os.Environ(), "BOARDLINK_SERVER=")
	if err := cmd.Run(); cmd.ProcessState.ExitCode() != 2 {
		t.Fatalf("without a server: %v", err)
	}
	// power through the service: the board has no driver.
	if _, errOut, code := run("power", l.sim.Boards[0].ID, "cycle"); code != 1 || !strings.Contains(errOut, "no power control") {
		t.Fatalf("power: %d %s", code, errOut)
	}
}

// TestServeCLI: `boardlink serve` on a config serves the API, brings its
// boards online, and stops cleanly on SIGTERM, its leases kept for the
// next start.
func TestServeCLI(t *testing.T) {
	cli := testenv.GoBuild(t, "../../cmd/boardlink")
	l := startLab(t, labOptions{boards: 1, ttl: 5 * time.Second})
	l.stopService() // this test runs its own, as a process
	dir := t.TempDir()
	cfg := filepath.Join(dir, "serve.yaml")
	yaml := fmt.Sprintf("token_file: %s\nheartbeat: 200ms\nusers:\n  - {name: alice, token_sha256: %x}\nboards:\n  - {id: %s, address: %q}\n",
		l.cfg.TokenFile, sha256.Sum256([]byte(l.tokens["alice"])), l.sim.Boards[0].ID, l.sim.Boards[0].Addr())
	writeSecret(t, cfg, yaml)
	// Beyond loopback the API needs TLS: a token never crosses in the clear.
	open := exec.Command(cli, "serve", "--config", cfg, "--listen", "0.0.0.0:0", "--db", filepath.Join(dir, "lab.db"))
	if out, _ := open.CombinedOutput(); open.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "in the clear") {
		t.Fatalf("serve beyond loopback without TLS: %v\n%s", open.ProcessState, out)
	}
	if _, err := NewClient("http://10.77.0.1:7300", "tok", nil); !errors.Is(err, ErrBadServer) {
		t.Fatalf("a client of plain http beyond loopback: %v", err)
	}
	certFile, keyFile, roots := selfSigned(t, dir)
	serve := func(tls bool) (*exec.Cmd, *Client, *testenv.Buffer) {
		args := []string{"--config", cfg, "--listen", "127.0.0.1:0", "--db", filepath.Join(dir, "lab.db")}
		var pool *x509.CertPool
		if tls {
			args, pool = append(args, "--tls-cert", certFile, "--tls-key", keyFile), roots
		}
		cmd, url, stderr := serveProcess(t, cli, []string{"XDG_CONFIG_HOME=" + dir, "XDG_STATE_HOME=" + dir}, args...)
		if want := map[bool]string{false: "http://", true: "https://"}[tls]; !strings.HasPrefix(url, want) {
			t.Fatalf("serve says %q, want %s", url, want)
		}
		c, err := NewClient(url, l.tokens["alice"], pool)
		if err != nil {
			t.Fatal(err)
		}
		return cmd, c, stderr
	}
	cmd, c, stderr := serve(false)
	ctx := context.Background()
	testenv.Eventually(t, "the board idle", func() bool {
		b, err := c.Board(ctx, l.sim.Boards[0].ID)
		return err == nil && b.State == Idle
	})
	held, err := acquire(ctx, c, AcquireRequest{TTLMs: 60000})
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Stopped cleanly, with the CLI's status after a signal: 128+15.
	if cmd.Wait(); cmd.ProcessState.ExitCode() != 143 || !strings.Contains(stderr.String(), "msg=stopped") {
		t.Fatalf("serve after SIGTERM: %v\n%s", cmd.ProcessState, stderr.String())
	}
	_, c, _ = serve(true) // and again over TLS, with the same database
	got, err := c.Lease(ctx, held.ID)
	if err != nil || got.State != store.LeaseActive || ids(got) != l.sim.Boards[0].ID {
		t.Fatalf("after the restart: %+v %v", got, err)
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 (and ips)
// and its key into dir and returns their paths and a pool that trusts it.
func selfSigned(t *testing.T, dir string, ips ...net.IP) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	certFile, keyFile, roots, err := netlab.SelfSigned(dir, ips...)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, roots
}
