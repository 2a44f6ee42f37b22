package qemuboard

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/boardlink/boardlink/transport/seriallink"
)

// Board is one QEMU machine booting a Disk. Its serial ports are unix
// sockets QEMU listens on (QEMU serves one client at a time): ttyS0, the
// kernel console, is logged to ConsoleLog across every boot and every run
// of QEMU; ttyS1 is there for the agent; ttyS2 has a plain shell. QMP, on
// a socket of its own, controls the power.
type Board struct {
	Assets *Assets
	Disk   *Disk
	Dir    string // sockets and the console log

	mu  sync.Mutex
	cur *qemuRun // the last run of QEMU; nil before Start
}

// qemuRun is one run of QEMU, from Start to its exit.
type qemuRun struct {
	proc *os.Process
	done chan struct{} // closed when QEMU exits
	err  error         // how it exited, once done is closed
}

// NewBoard makes a board of disk, its sockets and logs in dir (a unix
// socket's path is limited to 107 bytes: keep dir short).
func NewBoard(a *Assets, d *Disk, dir string) *Board {
	return &Board{Assets: a, Disk: d, Dir: dir}
}

func (b *Board) socket(name string) string { return filepath.Join(b.Dir, name+".sock") }

// ConsoleLog is the file that keeps everything written on ttyS0.
func (b *Board) ConsoleLog() string { return filepath.Join(b.Dir, "console.log") }

// AgentAddr is the address of the agent's serial line for boardlink:
// unix:// and the socket of the port the spec names (on a ShellOnly
// board, the port with the shell).
func (b *Board) AgentAddr() string { return "unix://" + b.socket(b.Disk.Spec.Serial) }

// ShellReady is the text /init writes to the console (ttyS0) when the
// shell of a Spec.ShellOnly board is on its port.
func (b *Board) ShellReady() string {
	return "boardlink-init: a shell on " + b.Disk.Spec.Serial + ", no agent"
}

// ShellSocket is the unix socket of ttyS2, where /init runs a plain
// shell with no agent: what a lab types into today, for comparison.
func (b *Board) ShellSocket() string { return b.socket("ttyS2") }

// Command is QEMU's command line: TCG, no network and no display, OVMF
// with the board's own variables, the disk on virtio-blk. Not NVMe: the
// kernel drives QEMU's NVMe queues through shadow doorbells, and under TCG
// with one CPU some boots stalled there: the kernel's "nvme nvme0: I/O …
// timeout, aborting" every 30 s, resets that did not help, the board never
// up. virtio-blk takes a request as the guest writes its notification.
func (b *Board) Command() []string {
	return []string{"qemu-system-x86_64",
		"-name", "boardlink-" + b.Disk.Spec.ID,
		"-machine", "q35", "-accel", "tcg", "-m", "512", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-nic", "none",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + b.Assets.OVMFCode,
		"-drive", "if=pflash,format=raw,unit=1,file=" + b.Disk.OVMFVars,
		"-drive", "if=none,id=disk,format=raw,file=" + b.Disk.Image,
		"-device", "virtio-blk-pci,drive=disk,serial=boardlink0",
		"-chardev", "socket,id=ttyS0,server=on,wait=off,path=" + b.socket("ttyS0") +
			",logfile=" + b.ConsoleLog() + ",logappend=on",
		"-serial", "chardev:ttyS0",
		"-chardev", "socket,id=ttyS1,server=on,wait=off,path=" + b.socket("ttyS1"),
		"-serial", "chardev:ttyS1",
		"-chardev", "socket,id=ttyS2,server=on,wait=off,path=" + b.socket("ttyS2"),
		"-serial", "chardev:ttyS2",
		"-qmp", "unix:" + b.socket("qmp") + ",server=on,wait=off",
	}
}

// Start powers the board on: it starts QEMU, in a process group of its
// own, and returns once its sockets are there. QEMU is killed when ctx
// ends, and when this process dies (Pdeathsig, from a thread that lives
// as long as QEMU does); the caller kills it with Kill in every other case.
func (b *Board) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur != nil {
		select {
		case <-b.cur.done:
		default:
			return errors.New("qemuboard: the board is running already")
		}
	}
	argv := b.Command()
	path, err := lookTool(argv[0])
	if err != nil {
		return err
	}
	for _, s := range []string{"ttyS0", "ttyS1", "ttyS2", "qmp"} {
		os.Remove(b.socket(s))
	}
	qlog := filepath.Join(b.Dir, "qemu.log")
	stderr, err := os.OpenFile(qlog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	r := &qemuRun{done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that started QEMU ends: keep it
		// until QEMU is gone.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer stderr.Close()
		cmd := exec.Command(path, argv[1:]...)
		cmd.Stdout, cmd.Stderr = stderr, stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			started <- fmt.Errorf("qemuboard: %w", err)
			return
		}
		r.proc = cmd.Process
		started <- nil
		r.err = cmd.Wait()
		close(r.done)
	}()
	if err := <-started; err != nil {
		return err
	}
	b.cur = r
	stop := context.AfterFunc(ctx, r.kill)
	go func() {
		<-r.done
		stop()
	}()
	// QEMU creates its sockets before it runs the machine.
	for _, s := range []string{"ttyS0", "ttyS1", "ttyS2", "qmp"} {
		for {
			if _, err := os.Stat(b.socket(s)); err == nil {
				break
			}
			select {
			case <-r.done:
				log, _ := os.ReadFile(qlog)
				return fmt.Errorf("qemuboard: qemu exited at start: %v: %s", r.err, log)
			case <-ctx.Done():
				r.kill()
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
}

// kill sends SIGKILL to QEMU's process group and waits until QEMU is gone.
// Once it has exited, it does nothing: its process group id may belong
// to another process by then.
func (r *qemuRun) kill() {
	select {
	case <-r.done:
		return
	default:
	}
	_ = syscall.Kill(-r.proc.Pid, syscall.SIGKILL)
	<-r.done
}

// Done is closed when QEMU has exited (nil before Start).
func (b *Board) Done() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur == nil {
		return nil
	}
	return b.cur.done
}

// Kill cuts the power: SIGKILL to QEMU's process group, and waits until
// it is gone. Whatever the guest had not written to its disk is lost, as
// on a power cut. Killing a board that is off does nothing.
func (b *Board) Kill() {
	b.mu.Lock()
	r := b.cur
	b.mu.Unlock()
	if r != nil {
		r.kill()
	}
}

// QMP runs one QMP command (system_reset, quit, ...) and returns its
// "return" value.
func (b *Board) QMP(ctx context.Context, command string) (json.RawMessage, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", b.socket("qmp"))
	if err != nil {
		return nil, fmt.Errorf("qemuboard: qmp: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	r := bufio.NewReader(conn)
	// The greeting, then capabilities negotiation, then the command. Events
	// may come between: each answer is the first line with return or error.
	if _, err := r.ReadBytes('\n'); err != nil {
		return nil, fmt.Errorf("qemuboard: qmp greeting: %w", err)
	}
	var ret json.RawMessage
	for _, c := range []string{"qmp_capabilities", command} {
		if _, err := fmt.Fprintf(conn, `{"execute": %q}`+"\n", c); err != nil {
			return nil, fmt.Errorf("qemuboard: qmp %s: %w", c, err)
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				if c == "quit" && len(bytes.TrimSpace(line)) == 0 {
					return nil, nil // QEMU may exit before it answers
				}
				return nil, fmt.Errorf("qemuboard: qmp %s: %w", c, err)
			}
			var msg struct {
				Return json.RawMessage `json:"return"`
				Error  *struct {
					Class string `json:"class"`
					Desc  string `json:"desc"`
				} `json:"error"`
			}
			if err := json.Unmarshal(line, &msg); err != nil {
				return nil, fmt.Errorf("qemuboard: qmp %s: %w: %q", c, err, line)
			}
			if msg.Error != nil {
				return nil, fmt.Errorf("qemuboard: qmp %s: %s: %s", c, msg.Error.Class, msg.Error.Desc)
			}
			if msg.Return != nil {
				ret = msg.Return
				break
			}
		}
	}
	return ret, nil
}

// Console returns what ttyS0 carried so far, every boot of every run.
func (b *Board) Console() []byte {
	out, _ := os.ReadFile(b.ConsoleLog())
	return out
}

// Tail is the last lines of a console (or of a part of it), where a
// failed boot says why: what a test logs, since whole consoles get cut.
func Tail(console []byte, lines int) string {
	ls := strings.Split(string(console), "\n")
	return strings.Join(ls[max(0, len(ls)-lines):], "\n")
}

// WaitConsole waits until text appears on ttyS0 at or after offset from,
// and returns the offset just past it. It fails when QEMU exits first, or
// when ctx ends.
func (b *Board) WaitConsole(ctx context.Context, from int, text string) (int, error) {
	done := b.Done()
	for {
		log := b.Console()
		if from <= len(log) {
			if i := bytes.Index(log[from:], []byte(text)); i >= 0 {
				return from + i + len(text), nil
			}
		}
		select {
		case <-done:
			return 0, fmt.Errorf("qemuboard: QEMU exited before %q appeared on the console", text)
		case <-ctx.Done():
			return 0, fmt.Errorf("qemuboard: waiting for %q on the console: %w", text, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// WaitBeacon connects to the agent's line and returns the first beacon it
// hears, without writing a byte; the line is free again when it returns.
func (b *Board) WaitBeacon(ctx context.Context) ([]byte, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", b.socket(b.Disk.Spec.Serial))
	if err != nil {
		return nil, fmt.Errorf("qemuboard: %w", err)
	}
	defer conn.Close()
	beacon, err := seriallink.Probe(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("qemuboard: waiting for a beacon on %s: %w", b.Disk.Spec.Serial, err)
	}
	return beacon, nil
}
