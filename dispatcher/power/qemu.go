package power

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// qmpLineMax bounds one QMP message read from the monitor.
const qmpLineMax = 1 << 20

// pollEvery is how often the driver looks again for QEMU's socket while
// QEMU starts or exits.
const pollEvery = 20 * time.Millisecond

// QMPError is an error QEMU answered a command with.
type QMPError struct {
	Command, Class, Desc string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// qemuDriver controls a QEMU board through its QMP socket.
type qemuDriver struct {
	socket  string
	start   []string
	timeout time.Duration
}

func (d *qemuDriver) Name() string { return DriverQEMU }

func (d *qemuDriver) Do(ctx context.Context, a Action) error {
	if _, err := ParseAction(string(a)); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	err := d.do(ctx, a)
	if err != nil {
		return fmt.Errorf("power %s (qemu %s): %w", a, d.socket, err)
	}
	return nil
}

func (d *qemuDriver) do(ctx context.Context, a Action) error {
	m, err := dialQMP(ctx, d.socket)
	if errors.Is(err, errNoQEMU) {
		switch a {
		case Off:
			return nil // off already
		case On, Cycle: // a cycle of a board that is off turns it on
			return d.startQEMU(ctx)
		}
	}
	if err != nil {
		return err
	}
	defer m.Close()
	switch a {
	case Cycle:
		return m.run(ctx, "system_reset")
	case Off:
		if err := m.run(ctx, "quit"); err != nil && !errors.Is(err, errQuit) {
			return err
		}
		return d.waitGone(ctx)
	}
	return nil // on, and running
}

// startQEMU runs the start command as a daemon of its own session (it
// outlives this process, as a board keeps its power), and waits until its
// monitor answers.
func (d *qemuDriver) startQEMU(ctx context.Context) error {
	if len(d.start) == 0 {
		return ErrNotRunning
	}
	os.Remove(d.socket) // a stale socket of a QEMU that died
	cmd := exec.Command(d.start[0], d.start[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start QEMU: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it, whenever it exits
	for {
		m, err := dialQMP(ctx, d.socket)
		if err == nil {
			m.Close()
			return nil
		}
		if !errors.Is(err, errNoQEMU) {
			return err
		}
		select {
		case err := <-exited:
			return fmt.Errorf("QEMU exited as it started: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("QEMU started, its monitor did not answer: %w", ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

// waitGone waits until nothing answers on the socket: QEMU exited.
func (d *qemuDriver) waitGone(ctx context.Context) error {
	for {
		var dl net.Dialer
		c, err := dl.DialContext(ctx, "unix", d.socket)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("QEMU did not exit after quit: %w", ctx.Err())
			}
			return nil
		}
		c.Close()
		select {
		case <-ctx.Done():
			return fmt.Errorf("QEMU did not exit after quit: %w", ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

var (
	// errNoQEMU: nothing listens on the socket.
	errNoQEMU = errors.New("QEMU is not running")
	// errQuit: the monitor closed after quit before it answered.
	errQuit = errors.New("QEMU exited before it answered")
)

// qmp is a QMP session, in command mode.
type qmp struct {
	conn net.Conn
	r    *bufio.Reader
}

// dialQMP connects to the monitor, reads its greeting and leaves
// capabilities negotiation. Nothing listening is errNoQEMU.
func dialQMP(ctx context.Context, socket string) (*qmp, error) {
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "unix", socket)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w: %w", errNoQEMU, err)
		}
		return nil, err
	}
	m := &qmp{conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
	if _, err := m.read(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	if err := m.run(ctx, "qmp_capabilities"); err != nil {
		conn.Close()
		return nil, err
	}
	return m, nil
}

func (m *qmp) Close() error { return m.conn.Close() }

// qmpMessage is any message from the monitor: a greeting, an event, an
// answer.
type qmpMessage struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

// read reads one message, bounded in size, until ctx ends.
func (m *qmp) read(ctx context.Context) (qmpMessage, error) {
	stop := context.AfterFunc(ctx, func() { _ = m.conn.SetReadDeadline(time.Now()) })
	defer stop()
	var line []byte
	for {
		part, isPrefix, err := m.r.ReadLine()
		line = append(line, part...)
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return qmpMessage{}, err
		}
		if len(line) > qmpLineMax {
			return qmpMessage{}, fmt.Errorf("qmp: a message longer than %d bytes", qmpLineMax)
		}
		if !isPrefix {
			break
		}
	}
	var msg qmpMessage
	if err := json.Unmarshal(line, &msg); err != nil {
		return qmpMessage{}, fmt.Errorf("qmp: %w", err)
	}
	return msg, nil
}

// run executes command and waits for its answer, passing over events.
func (m *qmp) run(ctx context.Context, command string) error {
	if _, err := fmt.Fprintf(m.conn, "{\"execute\": %q}\n", command); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	for {
		msg, err := m.read(ctx)
		if err != nil {
			if command == "quit" && ctx.Err() == nil {
				return errQuit
			}
			return fmt.Errorf("qmp %s: %w", command, err)
		}
		switch {
		case msg.Error != nil:
			return &QMPError{Command: command, Class: msg.Error.Class, Desc: msg.Error.Desc}
		case msg.Return != nil:
			return nil
		}
	}
}
