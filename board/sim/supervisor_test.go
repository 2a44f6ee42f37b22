package sim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/internal/testenv"
)

// scriptEnv tells a fake boot what to do: its boot number picks a word.
const scriptEnv = "SIM_TEST_SCRIPT"

// dirEnv is the state dir of a fake boot's board, for the A/B words.
const dirEnv = "SIM_TEST_DIR"

// TestMain lets the test binary be a boot of the boards under test.
func TestMain(m *testing.M) {
	if _, ok := os.LookupEnv(EnvBoot); ok {
		os.Exit(fakeBoot())
	}
	os.Exit(m.Run())
}

// fakeBoot takes the handoff and acts out the word of its script for its
// boot number (the last word repeats):
//
//	early   exit with ExitReboot before it is up
//	reboot  come up, say so on the UART and stderr, exit with ExitReboot
//	kill    come up and die of SIGKILL (a power cut)
//	exit7   come up and exit with status 7
//	echo    come up, answer a line read from the UART, exit 0
//	serve   come up and run until SIGTERM, then exit 0
//	deaf    come up and ignore SIGTERM
//	trial   come up, set a trial of the other slot, exit with ExitReboot
//	commit  come up, commit the booted slot, exit with ExitReboot
//	rollback come up, roll back the trial, exit with ExitReboot
//	off     come up and exit 0
//
// With a slot handed down, a boot that comes up writes "boot N: slot X
// active Y trial Z" on stderr, from its BootControl.
func fakeBoot() int {
	script := strings.Split(os.Getenv(scriptEnv), ",")
	h, err := TakeHandoff()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake boot:", err)
		return 2
	}
	for _, k := range []string{EnvBoot, EnvUpFD, EnvUARTFD, EnvSlot} {
		if v, ok := os.LookupEnv(k); ok {
			fmt.Fprintf(os.Stderr, "fake boot: %s=%s left in the environment\n", k, v)
			return 2
		}
	}
	word := script[min(h.Boot, len(script))-1]
	if word == "early" {
		return ExitReboot
	}
	terms := make(chan os.Signal, 1)
	signal.Notify(terms, syscall.SIGTERM)
	h.Up()
	fmt.Fprintf(os.Stderr, "boot %d is up\n", h.Boot)
	if h.UART != nil {
		fmt.Fprintf(h.UART, "uart of boot %d\n", h.Boot)
	}
	var bc *BootControl
	if h.Slot != "" {
		ctx := context.Background()
		if bc, err = NewBootControl(os.Getenv(dirEnv), h.Slot); err != nil {
			fmt.Fprintln(os.Stderr, "fake boot:", err)
			return 2
		}
		st, err := bc.State(ctx)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake boot:", err)
			return 2
		}
		fmt.Fprintf(os.Stderr, "boot %d: slot %s active %s trial %q\n", h.Boot, st.Booted, st.Active, st.Trial)
		switch word {
		case "trial":
			err = bc.SetTrial(ctx, board.Other(h.Slot))
		case "commit":
			err = bc.Commit(ctx)
		case "rollback":
			err = bc.Rollback(ctx)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake boot:", err)
			return 2
		}
	}
	switch word {
	case "trial", "commit", "rollback":
		return ExitReboot
	case "off":
		return 0
	case "reboot":
		return ExitReboot
	case "kill":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	case "exit7":
		return 7
	case "echo":
		line, _ := bufio.NewReader(h.UART).ReadString('\n')
		fmt.Fprintf(h.UART, "echo: %s", line)
		return 0
	case "serve":
		<-terms
		return 0
	}
	for range terms { // deaf, or dying of SIGKILL
	}
	return 0
}

// supervised runs Supervise over fake boots acting out script, with its
// UART attached to a host whose input is returned and whose output
// collects in console.
type supervised struct {
	logs    testenv.Buffer // the boots' stderr
	console testenv.Buffer // what the host received
	host    net.Conn
	boots   int
	dir     string // the board's state dir: Supervise is its A/B bootloader; "" not
}

func (s *supervised) config(t *testing.T, script string) SupervisorConfig {
	t.Helper()
	uart := &UART{}
	line, host := net.Pipe()
	s.host = host
	uart.Attach(line)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		io.Copy(&s.console, host)
	}()
	t.Cleanup(func() {
		uart.Close()
		<-copied
	})
	return SupervisorConfig{
		Boot: func(n int) (*exec.Cmd, error) {
			s.boots = n
			c := exec.Command(os.Args[0], "-test.run=^$")
			c.Env = append(os.Environ(), scriptEnv+"="+script, dirEnv+"="+s.dir)
			c.Stderr = &s.logs
			return c, nil
		},
		UART:      uart,
		BootDelay: time.Millisecond,
		Dir:       s.dir,
	}
}

// waitFor waits until text shows up in b.
func waitFor(t *testing.T, b *testenv.Buffer, text string) {
	t.Helper()
	seen := false
	defer func() {
		if !seen {
			t.Logf("the text so far:\n%s", b.String())
		}
	}()
	testenv.Eventually(t, fmt.Sprintf("%q", text), func() bool { return strings.Contains(b.String(), text) })
	seen = true
}

func TestSuperviseBootsAgainAfterRebootsAndPowerCuts(t *testing.T) {
	s := new(supervised)
	err := Supervise(context.Background(), s.config(t, "reboot,kill,reboot,exit7"))
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Boot != 4 || exit.Code != 7 {
		t.Fatalf("Supervise = %v, want boot 4 exiting with status 7", err)
	}
	if s.boots != 4 {
		t.Errorf("%d boots, want 4", s.boots)
	}
	waitFor(t, &s.console, "uart of boot 4")
	// The console, boot by boot: the banner, what the boot wrote on the
	// UART and on stderr (with CRLF, as a console shows a log), and how
	// it ended; a power cut says nothing.
	boots := strings.Split(s.console.String(), "\r\nsim-boot: boot ")[1:]
	if len(boots) != 4 {
		t.Fatalf("console shows %d boots, want 4:\n%q", len(boots), s.console.String())
	}
	for i, con := range boots {
		n := i + 1
		for _, want := range []string{
			fmt.Sprintf("%d, booting boardlinkd\r\n[    0.000000] ", n),
			fmt.Sprintf("uart of boot %d\n", n),
			fmt.Sprintf("boot %d is up\r\n", n),
		} {
			if !strings.Contains(con, want) {
				t.Errorf("boot %d: console lacks %q:\n%q", n, want, con)
			}
		}
		if got, want := strings.HasSuffix(con, "reboot: Restarting system\r\n"), n == 1 || n == 3; got != want {
			t.Errorf("boot %d: says it restarts: %v, want %v:\n%q", n, got, want, con)
		}
	}
	if logs := s.logs.String(); !strings.Contains(logs, "boot 4 is up\n") || strings.Contains(logs, "\r") {
		t.Errorf("stderr should have each boot's log as it was written:\n%q", logs)
	}
}

func TestSuperviseGivesUpOnBootsThatNeverComeUp(t *testing.T) {
	s := new(supervised)
	err := Supervise(context.Background(), s.config(t, "early"))
	if err == nil || errors.As(err, new(*ExitError)) || !strings.Contains(err.Error(), "before the agent was up") {
		t.Fatalf("Supervise = %v, want it to give up", err)
	}
	if s.boots != DefaultMaxFailedBoots {
		t.Errorf("%d boots, want %d", s.boots, DefaultMaxFailedBoots)
	}
	// A boot that came up starts the count again.
	s = new(supervised)
	err = Supervise(context.Background(), s.config(t, "early,early,reboot,early,early,exit7"))
	if exit, ok := errors.AsType[*ExitError](err); !ok || exit.Boot != 6 {
		t.Fatalf("Supervise = %v, want boot 6 to exit", err)
	}
}

func TestSuperviseStopsTheBootWhenCanceled(t *testing.T) {
	s := new(supervised)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Supervise(ctx, s.config(t, "serve")) }()
	waitFor(t, &s.logs, "boot 1 is up")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Supervise = %v, want a clean stop", err)
	}
	waitFor(t, &s.console, "reboot: Power down\r\n")
}

func TestSuperviseKillsABootThatDoesNotStop(t *testing.T) {
	s := new(supervised)
	cfg := s.config(t, "deaf")
	cfg.StopTimeout = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Supervise(ctx, cfg) }()
	waitFor(t, &s.logs, "boot 1 is up")
	cancel()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "did not stop") {
		t.Fatalf("Supervise = %v, want the boot killed", err)
	}
}

func TestSuperviseRelaysHostInputToTheBoot(t *testing.T) {
	s := new(supervised)
	done := make(chan error, 1)
	go func() { done <- Supervise(context.Background(), s.config(t, "echo")) }()
	waitFor(t, &s.console, "uart of boot 1\n")
	if _, err := s.host.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Supervise = %v; a boot that exits 0 powers the board off", err)
	}
	waitFor(t, &s.console, "echo: ping\n")
}

func TestUARTAttachReplacesTheHost(t *testing.T) {
	var u UART
	u.Write([]byte("nobody listens")) // dropped, without blocking
	first, firstHost := net.Pipe()
	firstDone := u.Attach(first)
	second, secondHost := net.Pipe()
	u.Attach(second)
	<-firstDone
	if _, err := firstHost.Read(make([]byte, 1)); err == nil {
		t.Error("the replaced host is still connected")
	}
	// Between boots the host's input is read and dropped.
	if _, err := secondHost.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	go u.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(secondHost, buf); err != nil || string(buf) != "hello" {
		t.Errorf("host read %q, %v", buf, err)
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := secondHost.Read(buf); err == nil {
		t.Error("Close left the host connected")
	}
}
