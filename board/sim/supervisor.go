package sim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

// ExitReboot is the exit status with which a boot asks its supervisor to
// reboot the board. It is EX_TEMPFAIL of sysexits.h ("try again"), which a
// Go program does not exit with by accident (errors and panics exit 1 or 2).
const ExitReboot = 75

// The environment a supervisor hands to each boot (see TakeHandoff).
const (
	// EnvBoot marks a process as a boot of a supervised sim board and
	// holds its number, 1 for the first boot since power-on.
	EnvBoot = "BOARDLINKD_SIM_BOOT"
	// EnvUpFD is the inherited descriptor a boot writes to once it is up.
	EnvUpFD = "BOARDLINKD_SIM_UP_FD"
	// EnvUARTFD is the inherited descriptor of the boot's end of the
	// board's serial line (a stream socket); unset without a line.
	EnvUARTFD = "BOARDLINKD_UART_FD"
	// EnvSlot is the slot the bootloader booted, A or B; unset when the
	// supervisor is no A/B bootloader (SupervisorConfig.Dir unset). It is
	// recorded in bootenv.json too.
	EnvSlot = "BOARDLINKD_SIM_SLOT"
)

// Defaults for zero SupervisorConfig fields.
const (
	DefaultBootDelay      = 300 * time.Millisecond
	DefaultStopTimeout    = 20 * time.Second
	DefaultMaxFailedBoots = 3
)

// SupervisorConfig configures Supervise.
type SupervisorConfig struct {
	// Boot is the per-boot hook, the bootloader's choice: it returns the
	// command that runs boot n (1 for the first since power-on), not yet
	// started. Supervise adds the handoff (EnvBoot, EnvSlot and its
	// descriptors to Env and ExtraFiles), a parent-death SIGKILL and, with
	// a UART, a copy of Stderr to the console. An error powers the board
	// off.
	Boot func(n int) (*exec.Cmd, error)
	// Dir is the board's state dir. When set, Supervise is also the
	// board's A/B bootloader: before each boot it reads Dir/bootenv.json
	// and chooses the slot (a pending trial once; after a trial boot that
	// ended without Commit, the active slot again, the trial cleared),
	// writes its choice there before the boot starts, prints it on the
	// console and hands it to the boot in EnvSlot. An unreadable boot
	// environment powers the board off.
	Dir string
	// UART is the board's serial line; nil for none. The bootloader's
	// banners and the boots' stderr (their log, as a kernel console
	// shows it) are written to it, and each boot gets its own end.
	UART *UART
	// BootDelay is the pause between the end of a boot and the next.
	BootDelay time.Duration
	// StopTimeout is how long a boot may take to stop after SIGTERM when
	// ctx ends; then it gets SIGKILL.
	StopTimeout time.Duration
	// MaxFailedBoots boots in a row that end (by reboot or power cut)
	// before they are up make Supervise fail rather than boot forever.
	MaxFailedBoots int
	// Logger receives a line per boot and per end; nil discards them.
	Logger *slog.Logger
}

func (c SupervisorConfig) withDefaults() SupervisorConfig {
	if c.BootDelay <= 0 {
		c.BootDelay = DefaultBootDelay
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.MaxFailedBoots <= 0 {
		c.MaxFailedBoots = DefaultMaxFailedBoots
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// ExitError ends Supervise when a boot failed: it exited with a status
// other than 0 or ExitReboot, or died of a signal other than SIGKILL. The
// board stays off rather than crash-looping.
type ExitError struct {
	Boot int
	Code int // the exit status; 128+N for a boot killed by signal N
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("sim: boot %d exited with status %d", e.Boot, e.Code)
}

// Supervise is a sim board's bootloader. It powers the board on and runs
// boot after boot: the next one starts BootDelay after a boot exits with
// ExitReboot or dies of SIGKILL (a power cut or a watchdog). When ctx ends
// it stops the running boot (SIGTERM, SIGKILL after StopTimeout) and
// returns nil if it stopped cleanly; a boot that exits 0 by itself powers
// the board off too. A boot that exits otherwise ends it with an
// *ExitError.
func Supervise(ctx context.Context, cfg SupervisorConfig) error {
	cfg = cfg.withDefaults()
	console := io.Discard
	if cfg.UART != nil {
		console = consoleWriter{cfg.UART}
	}
	failed := 0
	for n := 1; ctx.Err() == nil; n++ {
		end, err := runBoot(ctx, cfg, n, console)
		if err != nil {
			return err
		}
		switch {
		case ctx.Err() != nil || end.code() == 0: // stopped by us, or by itself
			fmt.Fprint(console, "reboot: Power down\n")
			return end.stopped(n, cfg.StopTimeout)
		case end.reboot():
			cfg.Logger.Info("sim: reboot", "boot", n)
			fmt.Fprint(console, "reboot: Restarting system\n")
		case end.powerCut():
			cfg.Logger.Warn("sim: power cut (the boot was killed)", "boot", n)
		default:
			return &ExitError{Boot: n, Code: end.code()}
		}
		if end.up {
			failed = 0
		} else if failed++; failed >= cfg.MaxFailedBoots {
			return fmt.Errorf("sim: %d boots in a row ended before the agent was up; powering off", failed)
		}
		select {
		case <-ctx.Done():
		case <-time.After(cfg.BootDelay):
		}
	}
	return nil
}

// bootEnd is how a boot ended.
type bootEnd struct {
	status syscall.WaitStatus
	up     bool // it said it was up before it ended
	killed bool // by Supervise, for not stopping in time
}

func (e bootEnd) reboot() bool { return e.status.Exited() && e.status.ExitStatus() == ExitReboot }

func (e bootEnd) powerCut() bool {
	return e.status.Signaled() && e.status.Signal() == syscall.SIGKILL
}

func (e bootEnd) code() int {
	if e.status.Signaled() {
		return 128 + int(e.status.Signal())
	}
	return e.status.ExitStatus()
}

// stopped judges a boot that stopped for good: a clean exit, or a reboot
// that was under way when Supervise asked it to stop, is a clean power-off.
func (e bootEnd) stopped(n int, timeout time.Duration) error {
	switch {
	case e.killed:
		return fmt.Errorf("sim: boot %d did not stop within %v and was killed", n, timeout)
	case e.code() == 0 || e.reboot():
		return nil
	}
	return &ExitError{Boot: n, Code: e.code()}
}

// runBoot starts boot n and waits for it to end, stopping it if ctx ends.
func runBoot(ctx context.Context, cfg SupervisorConfig, n int, console io.Writer) (bootEnd, error) {
	cmd, err := cfg.Boot(n)
	if err != nil {
		return bootEnd{}, fmt.Errorf("sim: boot %d: %w", n, err)
	}
	var slot bootDecision
	if cfg.Dir != "" {
		// The decision is durable before the boot starts: a power cut
		// from here on finds the trial marked as booted.
		if slot, err = bootSlot(cfg.Dir); err != nil {
			return bootEnd{}, fmt.Errorf("sim: boot %d: %w", n, err)
		}
	}
	upR, upW, err := os.Pipe()
	if err != nil {
		return bootEnd{}, fmt.Errorf("sim: boot %d: %w", n, err)
	}
	defer upR.Close()
	handoff := []*os.File{upW}
	fd := 3 + len(cmd.ExtraFiles)
	env := []string{EnvBoot + "=" + strconv.Itoa(n), EnvUpFD + "=" + strconv.Itoa(fd)}
	if slot.Slot != "" {
		env = append(env, EnvSlot+"="+slot.Slot)
	}
	if cfg.UART != nil {
		board, child, err := socketPair()
		if err != nil {
			upW.Close()
			return bootEnd{}, fmt.Errorf("sim: boot %d: uart: %w", n, err)
		}
		defer cfg.UART.plug(board)()
		handoff = append(handoff, child)
		env = append(env, EnvUARTFD+"="+strconv.Itoa(fd+1))
		cmd.Stderr = teeTo(cmd.Stderr, console)
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, handoff...)
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, env...)
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL // the supervisor's death is a power cut
	cmd.WaitDelay = drainTimeout                // a leaked stderr must not hold Wait

	fmt.Fprintf(console, "\nsim-boot: boot %d, booting boardlinkd\n", n)
	if slot.FellBack != "" {
		cfg.Logger.Warn("sim: trial boot not committed: falling back", "boot", n, "trial", slot.FellBack, "slot", slot.Slot)
		fmt.Fprintf(console, "sim-boot: trial of slot %s was not committed: falling back to %s\n", slot.FellBack, slot.Slot)
	}
	if slot.Slot != "" {
		trial := ""
		if slot.Trial {
			trial = " (trial, once)"
		}
		fmt.Fprintf(console, "sim-boot: booting slot %s%s\n", slot.Slot, trial)
	}
	fmt.Fprint(console, "[    0.000000] sim: starting the agent\n")

	started, exited := make(chan error, 1), make(chan struct{})
	go func() {
		// Pdeathsig fires when the thread that forked the boot ends, not
		// the process (golang/go#27505), and the runtime ends a thread whose
		// goroutine exits while locked to it. Holding this thread for the
		// boot's life keeps every other goroutine off it.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(exited)
	}()
	err = <-started
	for _, f := range handoff {
		f.Close() // the boot has its own copies
	}
	if err != nil {
		return bootEnd{}, fmt.Errorf("sim: boot %d: %w", n, err)
	}
	if slot.Slot != "" {
		cfg.Logger.Info("sim: boot", "boot", n, "pid", cmd.Process.Pid, "slot", slot.Slot, "trial", slot.Trial)
	} else {
		cfg.Logger.Info("sim: boot", "boot", n, "pid", cmd.Process.Pid)
	}
	up := make(chan bool, 1)
	go func() {
		var b [1]byte
		k, _ := upR.Read(b[:])
		up <- k > 0
	}()

	var end bootEnd
	select {
	case <-exited:
	case <-ctx.Done():
		cmd.Process.Signal(syscall.SIGTERM)
		timer := time.NewTimer(cfg.StopTimeout)
		defer timer.Stop()
		select {
		case <-exited:
		case <-timer.C:
			cmd.Process.Kill()
			end.killed = true
			<-exited
		}
	}
	end.status = cmd.ProcessState.Sys().(syscall.WaitStatus)
	upR.SetReadDeadline(time.Now().Add(drainTimeout))
	end.up = <-up
	return end, nil
}

// teeTo adds console to a command's stderr.
func teeTo(stderr, console io.Writer) io.Writer {
	if stderr == nil {
		return console
	}
	return io.MultiWriter(stderr, console)
}

// socketPair returns the supervisor's end of a new stream socket pair and
// the boot's end, to be inherited.
func socketPair() (net.Conn, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	child := os.NewFile(uintptr(fds[1]), "uart-boot")
	f := os.NewFile(uintptr(fds[0]), "uart-board")
	defer f.Close()
	c, err := net.FileConn(f) // its own non-blocking descriptor, so Close ends a Read
	if err != nil {
		child.Close()
		return nil, nil, err
	}
	return c, child, nil
}
