// Package discovery finds boards with no configuration: the agent
// advertises itself over mDNS (service _boardlink._tcp, instance name = the
// board id, TXT keys id, model, proto, caps, ver (the agent's version),
// boot, slot and sver (the booted slot and its image version), fp, tls and
// l.KEY per label; never a secret), hosts browse and see boards added,
// updated (a new boot id, another slot) and removed; and boards on USB
// serial ports are found by listening for the agent's beacon, without
// writing a byte to a port that may hold a login shell. Interfaces says
// which network interfaces mDNS runs on, and why others are left out.
//
// The mDNS library stays behind this package's own small types (Record,
// Event); see docs/discovery.md for the choice of library.
package discovery
