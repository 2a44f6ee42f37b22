package power

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/boardlink/boardlink/proto"
)

// Action is what a Driver does to a board's power.
type Action string

// The actions every driver knows.
const (
	On    Action = "on"
	Off   Action = "off"
	Cycle Action = "cycle" // off then on; a reset where the driver has one
)

// ParseAction reads an action as a person types it (on, off, cycle).
func ParseAction(s string) (Action, error) {
	switch a := Action(s); a {
	case On, Off, Cycle:
		return a, nil
	}
	return "", fmt.Errorf("%w %q: want on, off or cycle", ErrUnknownAction, s)
}

// Errors callers branch on with errors.Is.
var (
	// ErrNoPower: the board has no power control (driver none).
	ErrNoPower = errors.New("the board has no power control")
	// ErrUnknownAction: an action other than on, off and cycle.
	ErrUnknownAction = errors.New("unknown power action")
	// ErrNotRunning: a QEMU board is off and its driver has no command to
	// start it.
	ErrNotRunning = errors.New("QEMU is not running and no start command is configured")
)

// Driver switches one board's power. Do returns once the action is done:
// the command exited, QEMU answered (or exited, for off). It does not
// wait for the board's agent: that is Recover's job, or the caller's.
type Driver interface {
	// Name is the driver's kind: "command", "qemu" or "none".
	Name() string
	Do(ctx context.Context, a Action) error
}

// Driver kinds, as Config.Driver names them.
const (
	DriverCommand = "command"
	DriverQEMU    = "qemu"
	DriverNone    = "none"
)

// DefaultTimeout bounds one action when Config.Timeout is zero.
const DefaultTimeout = 60 * time.Second

// Config chooses and configures a board's driver, as the service's YAML
// configuration gives it per board:
//
//	power:
//	  driver: command
//	  on: [uhubctl, -l, 1-1, -p, "2", -a, "on"]
//	  off: [uhubctl, -l, 1-1, -p, "2", -a, "off"]
//	  timeout: 20s
//
//	power:
//	  driver: qemu
//	  qmp: /run/lab/board7/qmp.sock
//	  start: [qemu-system-x86_64, -machine, q35, ...]
type Config struct {
	// Driver is command, qemu or none ("" is none).
	Driver string `yaml:"driver" json:"driver" validate:"omitempty,oneof=command qemu none"`
	// On and Off are the command driver's commands (argv, no shell);
	// Cycle is its power cycle, Off then On when empty.
	On    []string `yaml:"on" json:"on" validate:"required_if=Driver command,omitempty,argv,max=64,dive,max=4096"`
	Off   []string `yaml:"off" json:"off" validate:"required_if=Driver command,omitempty,argv,max=64,dive,max=4096"`
	Cycle []string `yaml:"cycle" json:"cycle" validate:"omitempty,argv,max=64,dive,max=4096"`
	// Timeout bounds each action (each command, or a QMP exchange and
	// what it waits for); DefaultTimeout when zero.
	Timeout time.Duration `yaml:"timeout" json:"timeout" validate:"min=0"`
	// QMP is the qemu driver's monitor socket (QEMU's -qmp unix:PATH,server=on).
	QMP string `yaml:"qmp" json:"qmp" validate:"required_if=Driver qemu,max=107"`
	// Start, for the qemu driver, is the command line that starts QEMU
	// when it is not running (after off, or a crash); without it on
	// fails with ErrNotRunning.
	Start []string `yaml:"start" json:"start" validate:"omitempty,argv,max=1024,dive,max=4096"`
}

// New builds the driver cfg names. It only checks cfg: nothing runs and
// nothing is dialed until Do.
func New(cfg Config) (Driver, error) {
	if err := proto.Validate(cfg); err != nil {
		return nil, fmt.Errorf("power: %w", err)
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	switch cfg.Driver {
	case DriverCommand:
		return &commandDriver{on: cfg.On, off: cfg.Off, cycle: cfg.Cycle, timeout: timeout}, nil
	case DriverQEMU:
		return &qemuDriver{socket: cfg.QMP, start: cfg.Start, timeout: timeout}, nil
	}
	return noneDriver{}, nil
}

// noneDriver is a board without power control.
type noneDriver struct{}

func (noneDriver) Name() string { return DriverNone }

func (noneDriver) Do(_ context.Context, a Action) error {
	if _, err := ParseAction(string(a)); err != nil {
		return err
	}
	return fmt.Errorf("power %s: %w", a, ErrNoPower)
}
