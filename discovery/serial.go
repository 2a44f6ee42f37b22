package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
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
	// Open opens a port for listening, once nobody else holds it; by
	// default exclusively (TIOCEXCL), without becoming this process's
	// terminal, raw 8N1. Tests wrap it to count what is written.
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
		c.Open = openTTY
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// ErrNoBeacon is returned by ProbePort when no agent announced itself on
// the port in time: it may hold a login shell, a boot loader, or nothing.
var ErrNoBeacon = errors.New("no boardlink beacon heard")

// ErrPortBusy is wrapped by PortBusyError.
var ErrPortBusy = errors.New("serial port in use")

// PortBusyError: the probe left a port alone because another process
// holds it (its lock file, or an open descriptor).
type PortBusyError struct {
	Port   string
	Reason string // "open in pid 4242 (picocom)", "locked by pid 17 (minicom) (/run/lock/LCK..ttyUSB0)"
}

func (e *PortBusyError) Error() string { return fmt.Sprintf("%s: skipped: %s", e.Port, e.Reason) }

// Unwrap makes it an ErrPortBusy.
func (e *PortBusyError) Unwrap() error { return ErrPortBusy }

// SkippedPort is a port a scan did not listen to, and why.
type SkippedPort struct {
	Port   string `json:"port"`
	Reason string `json:"reason"`
}

// ProbePort listens to one port for an agent's beacon, writing nothing,
// and returns the board it announced, addressed as serial://PORT?baud=N.
// A port another process holds (a uucp lock file, an open descriptor) is
// not opened: the error is a *PortBusyError. While it listens, the probe
// holds the port's lock file and its exclusive mode.
func ProbePort(ctx context.Context, dev string, cfg SerialConfig) (Record, error) {
	cfg = cfg.withDefaults()
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	if why := portBusy(dev); why != "" {
		return Record{}, &PortBusyError{Port: dev, Reason: why}
	}
	unlock, why := lockPort(dev)
	if why != "" {
		return Record{}, &PortBusyError{Port: dev, Reason: why}
	}
	defer unlock()
	// Someone may have opened it between the look and the lock.
	if why := openedElsewhere(dev); why != "" {
		return Record{}, &PortBusyError{Port: dev, Reason: why}
	}
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
	if err := CheckID(b.ID); err != nil {
		return Record{}, fmt.Errorf("%s: beacon: %w", dev, err)
	}
	return Record{
		ID: b.ID, Model: b.Model, Protocol: b.Protocol, Capabilities: b.Capabilities,
		Version: b.Version, BootID: b.BootID, Slot: b.Slot, SlotVersion: b.SlotVersion, Labels: b.Labels, FP: b.Fingerprint,
		Address: fmt.Sprintf("serial://%s?baud=%d", dev, cfg.Baud),
		Source:  "serial", USB: &USBInfo{Port: dev}, Seen: time.Now(),
	}, nil
}

// ScanSerial probes the USB serial ports (and cfg.Ports) at once and
// returns the boards found, and the ports it left alone because another
// process holds them. Ports without an agent are left as they were:
// nothing is written to them.
func ScanSerial(ctx context.Context, cfg SerialConfig) ([]Record, []SkippedPort, error) {
	cfg = cfg.withDefaults()
	ports := map[string]*USBInfo{}
	for _, p := range cfg.Ports {
		ports[p] = &USBInfo{Port: p}
	}
	if !cfg.NoUSB {
		list, err := enumerator.GetDetailedPortsList()
		if err != nil {
			return nil, nil, fmt.Errorf("enumerate serial ports: %w", err)
		}
		for _, p := range list {
			if p.IsUSB {
				ports[p.Name] = &USBInfo{Port: p.Name, VID: p.VID, PID: p.PID, SerialNumber: p.SerialNumber, Product: p.Product}
			}
		}
	}
	var (
		mu      sync.Mutex
		found   []Record
		skipped []SkippedPort
		wg      sync.WaitGroup
	)
	for dev, usb := range ports {
		wg.Go(func() {
			r, err := ProbePort(ctx, dev, cfg)
			var busy *PortBusyError
			if errors.As(err, &busy) {
				cfg.Logger.Info("serial probe: port skipped", "port", dev, "why", busy.Reason)
				mu.Lock()
				skipped = append(skipped, SkippedPort{Port: dev, Reason: busy.Reason})
				mu.Unlock()
				return
			}
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
	slices.SortFunc(skipped, func(a, b SkippedPort) int { return strings.Compare(a.Port, b.Port) })
	return found, skipped, nil
}
