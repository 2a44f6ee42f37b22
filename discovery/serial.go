package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"go.bug.st/serial/enumerator"

	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport/seriallink"
)

// DefaultProbeWait is how long a port is listened to for a beacon: a
// little over two beacon intervals of an idle agent.
const DefaultProbeWait = 2500 * time.Millisecond

// SerialConfig configures a scan of serial ports.
type SerialConfig struct {
	// Ports are probed in addition to the USB serial ports the system
	// enumerates (a pty, a UART that is not on USB).
	Ports []string
	// NoUSB skips enumerating USB serial ports.
	NoUSB bool
	Baud  int           // default 115200
	Wait  time.Duration // per port; default DefaultProbeWait
	// Open opens a port for listening; default seriallink.OpenPort. Tests
	// replace it to count what is written.
	Open   func(dev string, baud int) (io.ReadWriteCloser, error)
	Logger *slog.Logger
}

func (c SerialConfig) withDefaults() SerialConfig {
	if c.Baud <= 0 {
		c.Baud = 115200
	}
	if c.Wait <= 0 {
		c.Wait = DefaultProbeWait
	}
	if c.Open == nil {
		c.Open = seriallink.OpenPort
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// ErrNoBeacon is returned by ProbePort when no agent announced itself on
// the port in time: it may hold a login shell, a boot loader, or nothing.
var ErrNoBeacon = errors.New("no boardlink beacon heard")

// ProbePort listens to one port for an agent's beacon, writing nothing,
// and returns the board it announced, addressed as serial://PORT?baud=N.
func ProbePort(ctx context.Context, dev string, cfg SerialConfig) (Record, error) {
	cfg = cfg.withDefaults()
	port, err := cfg.Open(dev, cfg.Baud)
	if err != nil {
		return Record{}, err
	}
	defer port.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.Wait)
	defer cancel()
	payload, err := seriallink.Probe(ctx, port)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return Record{}, fmt.Errorf("%s: %w", dev, ErrNoBeacon)
		}
		return Record{}, fmt.Errorf("%s: %w", dev, err)
	}
	var b proto.Beacon
	if err := json.Unmarshal(payload, &b); err != nil || b.ID == "" {
		return Record{}, fmt.Errorf("%s: unreadable beacon %q", dev, payload)
	}
	return Record{
		ID: b.ID, Model: b.Model, Protocol: b.Protocol, Capabilities: b.Capabilities,
		Version: b.Version, BootID: b.BootID, Slot: b.Slot, SlotVersion: b.SlotVersion, Labels: b.Labels, FP: b.Fingerprint,
		Address: fmt.Sprintf("serial://%s?baud=%d", dev, cfg.Baud),
		Source:  "serial", USB: &USBInfo{Port: dev}, Seen: time.Now(),
	}, nil
}

// ScanSerial probes the USB serial ports (and cfg.Ports) at once and
// returns the boards found. Ports without an agent are left as they were:
// nothing is written to them.
func ScanSerial(ctx context.Context, cfg SerialConfig) ([]Record, error) {
	cfg = cfg.withDefaults()
	ports := map[string]*USBInfo{}
	for _, p := range cfg.Ports {
		ports[p] = &USBInfo{Port: p}
	}
	if !cfg.NoUSB {
		list, err := enumerator.GetDetailedPortsList()
		if err != nil {
			return nil, fmt.Errorf("enumerate serial ports: %w", err)
		}
		for _, p := range list {
			if p.IsUSB {
				ports[p.Name] = &USBInfo{Port: p.Name, VID: p.VID, PID: p.PID, SerialNumber: p.SerialNumber, Product: p.Product}
			}
		}
	}
	var (
		mu    sync.Mutex
		found []Record
		wg    sync.WaitGroup
	)
	for dev, usb := range ports {
		wg.Go(func() {
			r, err := ProbePort(ctx, dev, cfg)
			if err != nil {
				cfg.Logger.Debug("serial probe", "port", dev, "err", err)
				return
			}
			r.USB = usb
			mu.Lock()
			found = append(found, r)
			mu.Unlock()
		})
	}
	wg.Wait()
	return found, nil
}
