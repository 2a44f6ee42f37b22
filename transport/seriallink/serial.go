package seriallink

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"go.bug.st/serial"
)

// portReadTimeout bounds a blocking Read on a serial port, so a reader
// notices Close even on drivers where closing does not interrupt a read.
const portReadTimeout = 100 * time.Millisecond

// OpenPort opens a serial device in raw mode, 8N1, at baud, with a read
// timeout: Read returns (0, nil) when no data came in time, which an
// Endpoint treats as "no data yet".
func OpenPort(dev string, baud int) (io.ReadWriteCloser, error) {
	p, err := serial.Open(dev, &serial.Mode{
		BaudRate: baud,
		DataBits: 8,
		Parity:   serial.NoParity,
		StopBits: serial.OneStopBit,
	})
	if err != nil {
		return nil, fmt.Errorf("seriallink: open %s: %w", dev, err)
	}
	if err := p.SetReadTimeout(portReadTimeout); err != nil {
		p.Close()
		return nil, fmt.Errorf("seriallink: open %s: %w", dev, err)
	}
	return p, nil
}

// OpenLine opens the byte stream named by addr:
//
//	tcp://HOST:PORT   a TCP serial server (ser2net, QEMU -serial tcp:...)
//	unix:///PATH      a unix socket (QEMU -chardev socket,path=...)
//	/dev/ttyUSB0      anything else is a serial device, opened at baud
func OpenLine(ctx context.Context, addr string, baud int) (io.ReadWriteCloser, error) {
	var d net.Dialer
	switch {
	case strings.HasPrefix(addr, "tcp://"):
		return dial(ctx, &d, "tcp", strings.TrimPrefix(addr, "tcp://"))
	case strings.HasPrefix(addr, "unix://"):
		return dial(ctx, &d, "unix", strings.TrimPrefix(addr, "unix://"))
	}
	return OpenPort(addr, baud)
}

func dial(ctx context.Context, d *net.Dialer, network, addr string) (io.ReadWriteCloser, error) {
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("seriallink: %w", err)
	}
	return c, nil
}
