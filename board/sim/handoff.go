package sim

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Handoff is what a supervisor hands to a boot.
type Handoff struct {
	Boot int      // 1 for the first boot since power-on
	UART net.Conn // the boot's end of the serial line; nil without one
	// Slot is the slot the bootloader booted (EnvSlot); "" when the
	// supervisor is no A/B bootloader (SupervisorConfig.Dir unset).
	Slot string
	up   *os.File
}

// TakeHandoff returns the handoff of a supervised boot, or nil in any
// other process. It clears the handoff from the environment and marks its
// descriptors close-on-exec, so the commands the boot runs inherit neither.
func TakeHandoff() (*Handoff, error) {
	v, ok := os.LookupEnv(EnvBoot)
	if !ok {
		return nil, nil
	}
	upFD, uartFD, slot := os.Getenv(EnvUpFD), os.Getenv(EnvUARTFD), os.Getenv(EnvSlot)
	for _, k := range []string{EnvBoot, EnvUpFD, EnvUARTFD, EnvSlot} {
		os.Unsetenv(k)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return nil, fmt.Errorf("sim: %s=%q is not a boot number", EnvBoot, v)
	}
	if slot != "" && !validSlot(slot) {
		return nil, fmt.Errorf("sim: %s=%q is not a slot (A or B)", EnvSlot, slot)
	}
	h := &Handoff{Boot: n, Slot: slot}
	if h.up, err = inherited(EnvUpFD, upFD); err != nil {
		return nil, err
	}
	if uartFD == "" {
		return h, nil
	}
	f, err := inherited(EnvUARTFD, uartFD)
	if err != nil {
		h.up.Close()
		return nil, err
	}
	defer f.Close()
	if h.UART, err = net.FileConn(f); err != nil {
		h.up.Close()
		return nil, fmt.Errorf("sim: %s: %w", EnvUARTFD, err)
	}
	return h, nil
}

// inherited returns the descriptor named by the variable env = v.
func inherited(env, v string) (*os.File, error) {
	fd, err := strconv.Atoi(v)
	if err == nil && fd > 2 {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
	} else {
		err = errors.New("not a descriptor")
	}
	if err != nil {
		return nil, fmt.Errorf("sim: %s=%q: %w", env, v, err)
	}
	return os.NewFile(uintptr(fd), env), nil
}

// Up tells the supervisor that the boot is up (its agent serves), which
// resets the count of failed boots. Only the first call matters.
func (h *Handoff) Up() {
	if h.up == nil {
		return
	}
	h.up.Write([]byte{1})
	h.up.Close()
	h.up = nil
}
