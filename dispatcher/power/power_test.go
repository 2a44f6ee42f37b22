package power_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/internal/proctest"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// TestNew: New checks the configuration and makes the driver it names,
// without running anything.
func TestNew(t *testing.T) {
	for _, tc := range []struct {
		cfg       power.Config
		name, bad string // the driver's name, or a field the error names
	}{
		{power.Config{}, power.DriverNone, ""},
		{power.Config{Driver: "none"}, power.DriverNone, ""},
		{power.Config{Driver: "command", On: []string{"relay", "1", "on"}, Off: []string{"relay", "1", "off"}}, power.DriverCommand, ""},
		{power.Config{Driver: "command", On: []string{"relay", "on"}}, "", "off"},
		{power.Config{Driver: "command", On: []string{""}, Off: []string{"x"}}, "", "on"},
		{power.Config{Driver: "qemu", QMP: "/run/b1/qmp.sock"}, power.DriverQEMU, ""},
		{power.Config{Driver: "qemu"}, "", "qmp"},
		{power.Config{Driver: "qemu", QMP: "/" + strings.Repeat("s", 200)}, "", "qmp"},
		{power.Config{Driver: "pdu"}, "", "driver"},
		{power.Config{Timeout: -time.Second}, "", "timeout"},
	} {
		d, err := power.New(tc.cfg)
		if tc.bad != "" {
			var pe *proto.Error
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("New(%+v): %v, want an error naming %s", tc.cfg, err, tc.bad)
			}
			continue
		}
		if err != nil || d.Name() != tc.name {
			t.Errorf("New(%+v): %v %v, want %s", tc.cfg, d, err, tc.name)
		}
	}
}

// TestNone: a board without power control refuses every action with
// ErrNoPower, and an unknown action with ErrUnknownAction.
func TestNone(t *testing.T) {
	d, err := power.New(power.Config{Driver: "none"})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []power.Action{power.On, power.Off, power.Cycle} {
		if err := d.Do(context.Background(), a); !errors.Is(err, power.ErrNoPower) {
			t.Errorf("%s: %v", a, err)
		}
	}
	if err := d.Do(context.Background(), "reset"); !errors.Is(err, power.ErrUnknownAction) {
		t.Errorf("reset: %v", err)
	}
	if _, err := power.ParseAction("cycle"); err != nil {
		t.Error(err)
	}
	if _, err := power.ParseAction("toggle"); !errors.Is(err, power.ErrUnknownAction) {
		t.Errorf("toggle: %v", err)
	}
}

func commandDriver(t *testing.T, cfg power.Config) power.Driver {
	t.Helper()
	cfg.Driver = power.DriverCommand
	d, err := power.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestCommandFails: a command that fails is a *CommandError with its
// output (what a PDU's tool says) and its exit status.
func TestCommandFails(t *testing.T) {
	d := commandDriver(t, power.Config{On: []string{"sh", "-c", "echo switching port 3; echo relay jammed >&2; exit 3"},
		Off: []string{"true"}})
	err := d.Do(context.Background(), power.On)
	var ce *power.CommandError
	if !errors.As(err, &ce) || ce.Action != power.On || !strings.Contains(ce.Output, "relay jammed") ||
		!strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "switching port 3") {
		t.Fatalf("a failing command: %v", err)
	}
	if err := d.Do(context.Background(), power.Off); err != nil {
		t.Fatalf("a command that exits 0: %v", err)
	}
	d = commandDriver(t, power.Config{On: []string{"/nonexistent/relay"}, Off: []string{"true"}})
	if err := d.Do(context.Background(), power.On); !errors.As(err, &ce) {
		t.Fatalf("a command that does not exist: %v", err)
	}
}

// TestCommandTimeout: a command that hangs is killed at its timeout with
// its whole process group, and the error says so.
func TestCommandTimeout(t *testing.T) {
	d := commandDriver(t, power.Config{On: []string{"true"},
		Off:     []string{"sh", "-c", "sleep 600 & echo $!; wait"},
		Timeout: 200 * time.Millisecond})
	err := d.Do(context.Background(), power.Off)
	var ce *power.CommandError
	if !errors.As(err, &ce) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a hanging command: %v", err)
	}
	pid, perr := strconv.Atoi(strings.TrimSpace(ce.Output))
	if perr != nil {
		t.Fatalf("the command's output %q: %v", ce.Output, perr)
	}
	testenv.Eventually(t, "the command's background child to be killed", func() bool { return proctest.Gone(pid) })
}

// TestCommandCycle: without a cycle command, a cycle is off then on; a
// failed off stops it before on.
func TestCommandCycle(t *testing.T) {
	dir := t.TempDir()
	log := dir + "/log"
	d := commandDriver(t, power.Config{On: []string{"sh", "-c", "echo on >>" + log}, Off: []string{"sh", "-c", "echo off >>" + log}})
	if err := d.Do(context.Background(), power.Cycle); err != nil {
		t.Fatal(err)
	}
	d = commandDriver(t, power.Config{On: []string{"sh", "-c", "echo on >>" + log}, Off: []string{"false"}})
	if err := d.Do(context.Background(), power.Cycle); err == nil {
		t.Fatal("a cycle whose off fails: no error")
	}
	d = commandDriver(t, power.Config{On: []string{"false"}, Off: []string{"false"}, Cycle: []string{"sh", "-c", "echo cycle >>" + log}})
	if err := d.Do(context.Background(), power.Cycle); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, log); got != "off\non\ncycle\n" {
		t.Fatalf("the commands ran: %q", got)
	}
}

// TestConfigYAML: a board's power as the service's YAML gives it.
func TestConfigYAML(t *testing.T) {
	var cfg power.Config
	err := yaml.Unmarshal([]byte(`
driver: command
on: [uhubctl, -l, 1-1, -p, "2", -a, "on"]
off: [uhubctl, -l, 1-1, -p, "2", -a, "off"]
timeout: 20s
`), &cfg)
	if err != nil || cfg.Timeout != 20*time.Second || len(cfg.On) != 7 || cfg.Off[6] != "off" {
		t.Fatalf("%+v %v", cfg, err)
	}
	if d, err := power.New(cfg); err != nil || d.Name() != power.DriverCommand {
		t.Fatalf("%v %v", d, err)
	}
}
