package discovery

// The sockets mDNS runs on: one per address family, bound to the mDNS
// group and port and joined on the chosen interfaces, and, for a
// browser, one on an ephemeral port for the questions it asks one board
// (legacy unicast, RFC 6762 §6.7: answered straight back to it).
//
// Sends carry no deadline: an agent on a busy CPU may run a send long
// after it was decided, and a UDP send does not block unless the socket
// buffer is full, which resolves itself.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

type family int

const (
	v4 family = 4
	v6 family = 6
)

func (f family) String() string { return "IPv" + string(rune('0'+f)) }

func familyOf(a netip.Addr) family {
	if a.Unmap().Is4() {
		return v4
	}
	return v6
}

// packet is one datagram received.
type packet struct {
	data    []byte
	src     netip.AddrPort
	ifindex int
	fam     family
	legacy  bool // on the ephemeral-port socket: a legacy unicast answer
}

// readBuffer is asked of the kernel for each socket: a browser gets every
// board's answer to a query within about 100 ms.
const readBuffer = 1 << 20

// famConn is one family's socket.
type famConn struct {
	fam    family
	p4     *ipv4.PacketConn
	p6     *ipv6.PacketConn
	uc     *net.UDPConn
	joined map[int]bool
}

func listenFam(fam family, port int) (*famConn, error) {
	c := &famConn{fam: fam, joined: map[int]bool{}}
	var err error
	switch {
	case fam == v4 && port == mdnsPort:
		c.uc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: group4.AsSlice(), Port: port})
	case fam == v4:
		c.uc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero, Port: port})
	case port == mdnsPort:
		c.uc, err = net.ListenUDP("udp6", &net.UDPAddr{IP: group6.AsSlice(), Port: port})
	default:
		c.uc, err = net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6unspecified, Port: port})
	}
	if err != nil {
		return nil, err
	}
	_ = c.uc.SetReadBuffer(readBuffer)
	if fam == v4 {
		c.p4 = ipv4.NewPacketConn(c.uc)
		err = errors.Join(c.p4.SetControlMessage(ipv4.FlagInterface, true), c.p4.SetMulticastTTL(255), c.p4.SetMulticastLoopback(true))
	} else {
		c.p6 = ipv6.NewPacketConn(c.uc)
		err = errors.Join(c.p6.SetControlMessage(ipv6.FlagInterface, true), c.p6.SetMulticastHopLimit(255), c.p6.SetMulticastLoopback(true))
	}
	if err != nil {
		c.uc.Close()
		return nil, err
	}
	return c, nil
}

// join makes the socket a member of the group on exactly ifis.
func (c *famConn) join(ifis []net.Interface) {
	want := map[int]bool{}
	for _, ifi := range ifis {
		want[ifi.Index] = true
		if c.joined[ifi.Index] {
			continue
		}
		var err error
		if c.fam == v4 {
			err = c.p4.JoinGroup(&ifi, &net.UDPAddr{IP: group4.AsSlice()})
		} else {
			err = c.p6.JoinGroup(&ifi, &net.UDPAddr{IP: group6.AsSlice()})
		}
		c.joined[ifi.Index] = err == nil
	}
	for idx := range c.joined {
		if !want[idx] {
			if ifi, err := net.InterfaceByIndex(idx); err == nil {
				if c.fam == v4 {
					_ = c.p4.LeaveGroup(ifi, &net.UDPAddr{IP: group4.AsSlice()})
				} else {
					_ = c.p6.LeaveGroup(ifi, &net.UDPAddr{IP: group6.AsSlice()})
				}
			}
			delete(c.joined, idx)
		}
	}
}

// readLoop delivers datagrams to out until the socket is closed.
func (c *famConn) readLoop(legacy bool, out func(packet)) {
	buf := make([]byte, 9000) // RFC 6762 §17: the largest mDNS packet
	for {
		var (
			n       int
			ifindex int
			src     net.Addr
			err     error
		)
		if c.fam == v4 {
			var cm *ipv4.ControlMessage
			n, cm, src, err = c.p4.ReadFrom(buf)
			if cm != nil {
				ifindex = cm.IfIndex
			}
		} else {
			var cm *ipv6.ControlMessage
			n, cm, src, err = c.p6.ReadFrom(buf)
			if cm != nil {
				ifindex = cm.IfIndex
			}
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // a transient error (ICMP unreachable for an earlier send, say)
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		ap := ua.AddrPort()
		out(packet{data: append([]byte(nil), buf[:n]...), src: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ifindex: ifindex, fam: c.fam, legacy: legacy})
	}
}

// send writes b to dst (the group when dst is invalid) out of interface
// ifindex.
func (c *famConn) send(ifindex int, b []byte, dst netip.AddrPort) error {
	if !dst.IsValid() {
		g := group4
		if c.fam == v6 {
			g = group6
		}
		dst = netip.AddrPortFrom(g, mdnsPort)
	}
	ua := net.UDPAddrFromAddrPort(dst)
	if c.fam == v6 && dst.Addr().IsLinkLocalUnicast() {
		if ifi, err := net.InterfaceByIndex(ifindex); err == nil {
			ua.Zone = ifi.Name
		}
	}
	var err error
	if c.fam == v4 {
		_, err = c.p4.WriteTo(b, &ipv4.ControlMessage{IfIndex: ifindex}, ua)
	} else {
		_, err = c.p6.WriteTo(b, &ipv6.ControlMessage{IfIndex: ifindex}, ua)
	}
	return err
}

func (c *famConn) close() error { return c.uc.Close() }

// sockets is a set of per-family sockets on one port.
type sockets struct {
	mu    sync.Mutex
	conns map[family]*famConn
}

// openSockets opens the families network names ("udp": both, falling
// back to the one that works; "udp4"; "udp6") on port (mdnsPort, or 0 for
// an ephemeral port).
func openSockets(network string, port int) (*sockets, error) {
	fams := map[string][]family{"udp": {v4, v6}, "udp4": {v4}, "udp6": {v6}}[network]
	if fams == nil {
		return nil, fmt.Errorf("mdns: network %q: want udp, udp4 or udp6", network)
	}
	s := &sockets{conns: map[family]*famConn{}}
	var errs []error
	for _, f := range fams {
		c, err := listenFam(f, port)
		if err != nil {
			errs = append(errs, fmt.Errorf("%v: %w", f, err))
			continue
		}
		s.conns[f] = c
	}
	if len(s.conns) == 0 {
		return nil, fmt.Errorf("mdns: open: %w", errors.Join(errs...))
	}
	return s, nil
}

func (s *sockets) has(f family) bool { return s != nil && s.conns[f] != nil }

func (s *sockets) join(ifis []net.Interface) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.join(ifis)
	}
}

func (s *sockets) send(f family, ifindex int, b []byte, dst netip.AddrPort) error {
	if !s.has(f) {
		return fmt.Errorf("mdns: no %v socket", f)
	}
	return s.conns[f].send(ifindex, b, dst)
}

// start runs a reader per family; each ends when close is called.
func (s *sockets) start(wg *sync.WaitGroup, legacy bool, out func(packet)) {
	for _, c := range s.conns {
		wg.Go(func() { c.readLoop(legacy, out) })
	}
}

func (s *sockets) close() error {
	var errs []error
	for _, c := range s.conns {
		errs = append(errs, c.close())
	}
	return errors.Join(errs...)
}

// ifaceAddrs is an interface mDNS runs on, with its addresses by family.
type ifaceAddrs struct {
	net.Interface
	v4, v6 []netip.Addr // v6: global and ULA first, then link-local
}

func (i *ifaceAddrs) has(f family) bool {
	if f == v4 {
		return len(i.v4) > 0
	}
	return len(i.v6) > 0
}

// addrsOf reads ifi's usable unicast addresses.
func addrsOf(ifi net.Interface) ifaceAddrs {
	ia := ifaceAddrs{Interface: ifi}
	addrs, err := ifi.Addrs()
	if err != nil {
		return ia
	}
	var local []netip.Addr
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr().Unmap()
		switch {
		case ip.Is4():
			ia.v4 = append(ia.v4, ip)
		case ip.IsLinkLocalUnicast():
			local = append(local, ip)
		case ip.IsGlobalUnicast():
			ia.v6 = append(ia.v6, ip)
		}
	}
	ia.v6 = append(ia.v6, local...)
	return ia
}
