package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/fx"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/agent/ota"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/proctest"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

var stoppedRE = regexp.MustCompile(`msg=stopped component=(\S+)`)

// TestStopOrder runs a board with every component (wss://, a serial line
// on a unix socket, mDNS on a private lo, the update machine, commands
// running) and stops it, as SIGTERM does. Its log says the components
// stopped in order: the servers stop accepting, then the commands end,
// then the update machine stops with its state on disk, and mDNS says
// goodbye last. A browser hears the goodbye, and no command is left.
func TestStopOrder(t *testing.T) {
	if !testenv.InPrivateLoopback(t) {
		return
	}
	dir := t.TempDir()
	pub, priv, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "release")
	if err := image.WriteKeyPair(keyFile, pub, priv); err != nil {
		t.Fatal(err)
	}
	const id, token = "stop-order-1", "stop-order-token-0123"
	sock := filepath.Join(dir, "uart.sock")

	ctx := context.Background()
	// The records' own TTL and no grace: the board leaves the browser soon
	// only by its goodbye.
	br := discovery.NewBrowser(discovery.BrowseConfig{Ifaces: []string{"lo"}, Expiry: -1, Grace: -1})
	if err := br.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer br.Stop()

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		logs   testenv.Buffer
		runErr error
		done   = make(chan struct{})
	)
	go func() {
		defer close(done)
		runErr = run(runCtx, []string{"--board", "sim", "--state-dir", filepath.Join(dir, "state"), "--id", id,
			"--listen", "127.0.0.1:0", "--serial", "unix:" + sock, "--iface", "lo", "--token-file", writeToken(t, token),
			"--trust-key", keyFile + ".pub", "--health-check", "true", "--sim-boot-delay", "5ms"}, io.Discard, &logs)
	}()
	for announced := false; !announced; {
		select {
		case ev := <-br.Events():
			announced = ev.Op == discovery.Added && ev.Record.ID == id
		case <-done:
			t.Fatalf("boardlinkd exited before mDNS announced it: %v\n%s", runErr, logs.String())
		}
	}

	opts := dispatcher.DialOptions{Token: token, Trust: dispatcher.NewKnownBoards("")}
	wss := waitAddr(t, logs.String, done)
	c, _ := dialBoot(t, wss, opts, "")
	defer c.Close()
	serial, _ := dialBoot(t, "unix://"+sock, opts, "")
	defer serial.Close()
	// A command that dies with its connection, and a detached one that
	// only the end of the commands ends.
	attached := make(chan error, 1)
	pr, pw := io.Pipe()
	go func() {
		_, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"sh", "-c", "echo up; exec sleep 1000"}, Stdout: pw})
		pw.CloseWithError(err)
		attached <- err
	}()
	if _, err := bufio.NewReader(pr).ReadString('\n'); err != nil {
		t.Fatalf("the attached command: %v", err)
	}
	detached := startDetached(t, serial, "sleep", "1000")

	stop()
	<-done
	if runErr != nil {
		t.Fatalf("run: %v\n%s", runErr, logs.String())
	}
	if err := <-attached; err == nil {
		t.Error("the attached command's exec returned no error when its server stopped")
	}
	if !proctest.Gone(detached) {
		t.Errorf("the detached command (pid %d) outlived the board", detached)
	}
	for ev := range br.Events() {
		if ev.Op == discovery.Removed && ev.Record.ID == id {
			break
		}
	}
	var order []string
	for _, m := range stoppedRE.FindAllStringSubmatch(logs.String(), -1) {
		order = append(order, m[1])
	}
	if want := []string{"wss", "serial", "commands", "ota", "mdns"}; !slices.Equal(order, want) {
		t.Errorf("stopped %v, want %v\n%s", order, want, logs.String())
	}
}

// TestStopKeepsTimeForTheGoodbye: a detached command that ignores TERM
// with a grace longer than the stop allows is killed before the stop's
// deadline, early enough for the update machine to stop and mDNS to say
// goodbye after it.
func TestStopKeepsTimeForTheGoodbye(t *testing.T) {
	var logs testenv.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	dir := t.TempDir()
	boot, err := sim.NewBootControl(dir, "A")
	if err != nil {
		t.Fatal(err)
	}
	m := agent.NewExecs(agent.ExecOptions{Logger: log})
	u := ota.New(ota.Config{Dir: filepath.Join(dir, "ota"), Boot: boot, Model: "sim", BootID: "boot-1", Logger: log})
	goodbye := make(chan struct{})
	announce := mdns{{"mdns", func(context.Context) error { return nil }, func(context.Context) error { close(goodbye); return nil }}}
	app := fx.New(fx.NopLogger, fx.Supply(log, m, u, servers(nil), announce), fx.Invoke(lifecycle))
	ctx := context.Background()
	if err := app.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd, err := m.Start(proto.ExecStartParams{Argv: []string{"sh", "-c", "trap '' TERM; echo ready; exec sleep 1000"},
		Detach: true, GraceMs: 600_000}, agent.ExecIO{Stdout: pw})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(pr).ReadString('\n'); err != nil { // TERM is ignored from here on
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	stopCtx, cancel := context.WithTimeout(ctx, afterCommands+time.Second)
	defer cancel()
	if err := app.Stop(stopCtx); err == nil || !strings.Contains(err.Error(), "stop commands") {
		t.Errorf("stop: %v; want the commands' stop to fail", err)
	}
	select {
	case <-goodbye:
	default:
		t.Fatalf("no goodbye after the commands' stop ran out of time:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "msg=stopped component=ota") {
		t.Errorf("the update machine did not stop:\n%s", logs.String())
	}
	<-cmd.Done() // killed, not left to its grace
	if res := cmd.Result(); res.Signal != "KILL" {
		t.Errorf("the command ended %+v; want killed by KILL", res)
	}
}
