package dispatcher_test

import (
	"context"
	"errors"
	"testing"

	"github.com/boardlink/boardlink/dispatcher"
)

// TestParseAddress: HOST:PORT and HOST are WebSocket addresses (wss://,
// port 7207 by default), a word of letters, digits, '-' and '_' is a board
// id, and a malformed address is refused before anything is dialed.
func TestParseAddress(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      error
	}{
		{"10.0.0.5:7300", "wss://10.0.0.5:7300", nil},
		{"10.0.0.5", "wss://10.0.0.5:7207", nil},
		{"board1.lab.example", "wss://board1.lab.example:7207", nil},
		{"localhost:7207", "wss://localhost:7207", nil},
		{"[::1]:7208", "wss://[::1]:7208", nil},
		{"[::1]", "wss://[::1]:7207", nil},
		{"fe80::1", "wss://[fe80::1]:7207", nil},
		{"ws://127.0.0.1:7207", "ws://127.0.0.1:7207", nil},
		{"wss://127.0.0.1", "wss://127.0.0.1:7207", nil},
		{"tcp://ser2net:3001", "tcp://ser2net:3001", nil},
		{"unix:///tmp/qemu.sock", "unix:///tmp/qemu.sock", nil},
		{"serial:///dev/ttyUSB0?baud=115200", "serial:///dev/ttyUSB0?baud=115200", nil},
		{"lab-007", "", dispatcher.ErrNeedsDiscovery},
		{"sim_a1", "", dispatcher.ErrNeedsDiscovery},
		{"ws://", "", dispatcher.ErrBadAddress},
		{"wss://:7207", "", dispatcher.ErrBadAddress},
		{"ws://127.0.0.1:99999", "", dispatcher.ErrBadAddress},
		{"127.0.0.1:0", "", dispatcher.ErrBadAddress},
		{"127.0.0.1:", "", dispatcher.ErrBadAddress},
		{"127.0.0.1:http", "", dispatcher.ErrBadAddress},
		{"tcp://ser2net", "", dispatcher.ErrBadAddress},
		{"unix://", "", dispatcher.ErrBadAddress},
		{"gopher://x", "", dispatcher.ErrBadAddress},
		{"user@host", "", dispatcher.ErrBadAddress},
	} {
		got, err := dispatcher.ParseAddress(tc.in)
		if got != tc.want || !errors.Is(err, tc.err) || (err == nil) != (tc.err == nil) {
			t.Errorf("ParseAddress(%q) = %q, %v; want %q, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// TestDialBadAddressAtOnce: Dial refuses a malformed address before
// dialing or discovering anything, even with a Resolver.
func TestDialBadAddressAtOnce(t *testing.T) {
	r := &dispatcher.Resolver{NoMDNS: true, NoSerial: true}
	for _, addr := range []string{"ws://", "ws://127.0.0.1:99999", "127.0.0.1:70000"} {
		if _, err := dispatcher.Dial(context.Background(), addr, dispatcher.DialOptions{Resolver: r}); !errors.Is(err, dispatcher.ErrBadAddress) {
			t.Errorf("Dial(%q): %v, want ErrBadAddress", addr, err)
		}
	}
}
