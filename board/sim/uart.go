package sim

import (
	"bytes"
	"io"
	"net"
	"sync"
	"time"
)

// drainTimeout bounds how long what a finished boot wrote is still relayed:
// only a process that inherited the boot's end could hold it open longer.
const drainTimeout = time.Second

// UART is a sim board's serial line. Like a real board's UART it outlives
// boots: the host stays attached across reboots and sees the bootloader's
// banners between the agent's sessions. The host side is whatever Attach
// was given last (an open serial port, a connection to a unix socket);
// Supervise plugs each boot's end in while it runs. The zero value is a
// line with nothing attached.
type UART struct {
	wmu sync.Mutex // keeps each Write to the host whole

	mu    sync.Mutex
	host  io.ReadWriteCloser // nil: nobody attached
	board io.Writer          // the running boot's end; nil between boots
	wg    sync.WaitGroup     // host readers
}

// Attach makes line the host side, closing the one attached before. What
// the host writes goes to the running boot and is lost between boots, as
// on a real line. The returned channel is closed once line has failed or
// was replaced; Close of line must unblock a pending Read.
func (u *UART) Attach(line io.ReadWriteCloser) <-chan struct{} {
	u.mu.Lock()
	old := u.host
	u.host = line
	u.wg.Add(1)
	u.mu.Unlock()
	if old != nil {
		old.Close()
	}
	done := make(chan struct{})
	go func() {
		defer u.wg.Done()
		defer close(done)
		u.readHost(line)
	}()
	return done
}

// readHost relays the host's bytes to the running boot until line fails.
func (u *UART) readHost(line io.ReadWriteCloser) {
	buf := make([]byte, 32<<10)
	for {
		n, err := line.Read(buf) // a port's read timeout returns 0, nil
		if n > 0 {
			u.mu.Lock()
			board := u.board
			u.mu.Unlock()
			if board != nil {
				board.Write(buf[:n]) // a boot that just ended drops it, like a reset UART
			}
		}
		if err != nil {
			break
		}
	}
	u.mu.Lock()
	if u.host == line {
		u.host = nil
	}
	u.mu.Unlock()
	line.Close()
}

// Write sends p to the host, or drops it when nobody is attached. It never
// fails: a board does not notice that nobody listens.
func (u *UART) Write(p []byte) (int, error) {
	u.wmu.Lock()
	defer u.wmu.Unlock()
	u.mu.Lock()
	host := u.host
	u.mu.Unlock()
	if host != nil {
		host.Write(p) // a failed host is detached by its reader
	}
	return len(p), nil
}

// Close detaches and closes the host side and waits for its reader.
func (u *UART) Close() error {
	u.mu.Lock()
	host := u.host
	u.host = nil
	u.mu.Unlock()
	var err error
	if host != nil {
		err = host.Close()
	}
	u.wg.Wait()
	return err
}

// plug connects a boot's end of the line until the returned unplug, which
// relays what the boot wrote before it ended and then disconnects it.
func (u *UART) plug(c net.Conn) (unplug func()) {
	u.mu.Lock()
	u.board = c
	u.mu.Unlock()
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		io.Copy(u, c)
	}()
	return func() {
		c.SetReadDeadline(time.Now().Add(drainTimeout))
		<-copied
		u.mu.Lock()
		u.board = nil
		u.mu.Unlock()
		c.Close()
	}
}

// consoleWriter writes text to a serial console, where lines end in CRLF
// (what a tty's onlcr does for a kernel console).
type consoleWriter struct{ w io.Writer }

func (c consoleWriter) Write(p []byte) (int, error) {
	if _, err := c.w.Write(bytes.ReplaceAll(p, []byte("\n"), []byte("\r\n"))); err != nil {
		return 0, err
	}
	return len(p), nil
}
