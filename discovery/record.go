package discovery

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/proto"
)

// Service is the DNS-SD service type boards advertise.
const Service = "_boardlink._tcp"

// Record is what discovery knows of one board: what it announced, and
// where to reach it.
type Record struct {
	ID           string            `json:"id"`
	Model        string            `json:"model"`
	Protocol     int               `json:"proto"`
	Capabilities []string          `json:"caps"`
	Version      string            `json:"ver"` // the agent's
	BootID       string            `json:"boot"`
	Slot         string            `json:"slot,omitempty"`
	SlotVersion  string            `json:"sver,omitempty"` // the booted slot's image version
	Labels       map[string]string `json:"labels,omitempty"`
	// FP is the board key's fingerprint, short form (auth.Fingerprint's
	// Short): a claim to check against the key the board proves, never
	// a proof. TLS says the port serves wss://.
	FP  string `json:"fp,omitempty"`
	TLS bool   `json:"tls,omitempty"`

	// Address is a URL the CLI dials: wss://HOST:PORT, ws://HOST:PORT or
	// serial:///dev/...
	Address string       `json:"address"`
	Addrs   []netip.Addr `json:"addrs,omitempty"` // mDNS only
	Port    int          `json:"port,omitempty"`  // mDNS only
	Source  string       `json:"source"`          // "mdns" or "serial"
	USB     *USBInfo     `json:"usb,omitempty"`   // serial only
	Seen    time.Time    `json:"seen"`            // last heard of
	// Conflict lists the addresses of every board announcing this id
	// (this one's included) when there are several: cloned boards, or
	// an impostor. Nothing should be sent to a board by this id then.
	Conflict []string `json:"conflict,omitempty"`
}

// USBInfo describes the USB serial port a board was found on.
type USBInfo struct {
	Port         string `json:"port"`
	VID          string `json:"vid,omitempty"`
	PID          string `json:"pid,omitempty"`
	SerialNumber string `json:"serial_number,omitempty"`
	Product      string `json:"product,omitempty"`
}

// Op is the kind of change an Event reports.
type Op string

// Ops.
const (
	Added   Op = "added"   // a board, with an address to reach it
	Updated Op = "updated" // new TXT (a new boot id), port or addresses
	Removed Op = "removed"
	// Conflict: another board announces an id already seen; Record is
	// the board as listed, its Conflict naming every address.
	Conflict Op = "conflict"
	// Refused: a record that claims to be a board was not believed
	// (Reason says why); Record has what it claimed.
	Refused Op = "refused"
)

// Event is one change in the set of boards seen.
type Event struct {
	Op     Op     `json:"op"`
	Record Record `json:"board"`
	Reason string `json:"reason,omitempty"` // Refused only
}

// Refusal is a record that claimed to be a board and was not believed:
// its instance name, the id its TXT claims, where it came from, and why.
type Refusal struct {
	Name   string     `json:"name"`
	ID     string     `json:"id,omitempty"`
	From   netip.Addr `json:"from"`
	Reason string     `json:"reason"`
}

// MaxIDLen is the longest board id: an mDNS instance name is one DNS
// label.
const MaxIDLen = 63

// ErrBadID is wrapped by CheckID's errors.
var ErrBadID = errors.New("invalid board id")

// CheckID enforces the agent's rule for a board id (board.Identity's):
// 1 to 63 bytes of ASCII letters, digits, '-', '_' and '.', so that it is
// one DNS label, a file name, and never looks like an address. Every id
// that comes from the network (mDNS, a serial beacon) is checked with it.
func CheckID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return fmt.Errorf("%w %q: must be 1 to %d bytes", ErrBadID, id, MaxIDLen)
	}
	if id == "." || id == ".." {
		return fmt.Errorf("%w %q: not a name", ErrBadID, id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%w %q: only letters, digits, '-', '_' and '.' are allowed", ErrBadID, id)
		}
	}
	return nil
}

// TXT encodes the announced part of r as DNS-SD TXT strings, sorted so
// that equal records encode equally.
func (r Record) TXT() []string {
	txt := []string{
		"id=" + r.ID,
		"model=" + r.Model,
		"proto=" + strconv.Itoa(r.Protocol),
		"caps=" + strings.Join(r.Capabilities, ","),
		"ver=" + r.Version,
		"boot=" + r.BootID,
	}
	if r.Slot != "" {
		txt = append(txt, "slot="+r.Slot)
	}
	if r.SlotVersion != "" {
		txt = append(txt, "sver="+r.SlotVersion)
	}
	if r.FP != "" {
		txt = append(txt, "fp="+r.FP)
	}
	if r.TLS {
		txt = append(txt, "tls=1")
	}
	for _, k := range slices.Sorted(maps.Keys(r.Labels)) {
		txt = append(txt, "l."+k+"="+r.Labels[k])
	}
	return txt
}

// ParseTXT decodes TXT strings into the announced fields of a Record.
// Unknown keys are ignored (a newer agent may announce more); a missing id
// or a malformed proto is an error.
func ParseTXT(txt []string) (Record, error) {
	var r Record
	for _, kv := range txt {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case k == "id":
			r.ID = v
		case k == "model":
			r.Model = v
		case k == "proto":
			n, err := strconv.Atoi(v)
			if err != nil {
				return r, fmt.Errorf("txt proto=%q: %w", v, err)
			}
			r.Protocol = n
		case k == "caps":
			if v != "" {
				r.Capabilities = strings.Split(v, ",")
			}
		case k == "ver":
			r.Version = v
		case k == "boot":
			r.BootID = v
		case k == "slot":
			r.Slot = v
		case k == "sver":
			r.SlotVersion = v
		case k == "fp":
			r.FP = v
		case k == "tls":
			r.TLS = v == "1"
		case strings.HasPrefix(k, "l.") && len(k) > 2:
			if r.Labels == nil {
				r.Labels = map[string]string{}
			}
			r.Labels[k[2:]] = v
		}
	}
	if r.ID == "" {
		return r, fmt.Errorf("txt has no id")
	}
	return r, nil
}

// SameAnnouncement reports whether a and b announce the same thing, so a
// browser can tell an update (new boot id, new slot) from a refresh.
func (r Record) SameAnnouncement(o Record) bool {
	return slices.Equal(r.TXT(), o.TXT()) && r.Address == o.Address
}

// RecordOf is the record an agent announces for itself: its board.info
// answer (info), the port of its WebSocket server and whether it serves
// TLS there. It carries nothing secret (never a token: the key's
// fingerprint is public), and names the booted slot and its image version
// when info has one.
func RecordOf(info proto.BoardInfo, port int, tls bool) Record {
	r := Record{ID: info.ID, Model: info.Model, Protocol: info.Protocol, Capabilities: info.Capabilities,
		Version: info.Agent, BootID: info.BootID, Labels: info.Labels, Port: port, TLS: tls}
	if fp, err := auth.ParseFingerprint(info.Fingerprint); err == nil {
		r.FP = fp.Short()
	}
	for _, s := range info.Slots {
		if s.Booted {
			r.Slot, r.SlotVersion = s.Name, s.Version
		}
	}
	return r
}
