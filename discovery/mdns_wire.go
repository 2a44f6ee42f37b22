package discovery

// The DNS side of mDNS (RFC 6762) and DNS-SD (RFC 6763) for our one
// service type: names, the records a board publishes, packing them into
// packets, and reading what others send. Messages are encoded and decoded
// by github.com/miekg/dns; everything taken from a packet is checked here.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

const (
	mdnsPort    = 5353
	serviceName = "_boardlink._tcp.local."
	typeEnum    = "_services._dns-sd._udp.local."
	// hbSuffix names a board's heartbeat record: INSTANCE._boardlink-hb.local.
	// Outside the service type, so that no DNS-SD browser takes it for an
	// instance (python-zeroconf reports any TXT under the type as an
	// update of a service of that name); other stacks ignore it.
	hbSuffix = "._boardlink-hb.local."

	// RFC 6762 §10: records naming a host (SRV, A, AAAA) live 120 s, the
	// others 75 minutes; legacy unicast answers at most 10 s (§6.7).
	ttlHost   = 120
	ttlOther  = 4500
	ttlLegacy = 10

	classCacheFlush = 1 << 15 // RFC 6762 §10.2, in a record's class
	qClassUnicast   = 1 << 15 // RFC 6762 §5.4, in a question's class

	// maxPacket keeps a packet in one Ethernet frame (1500 - IPv6 40 - UDP 8,
	// with room to spare); RFC 6762 §17 allows more, fragmented.
	maxPacket = 1400
)

var (
	group4 = netip.MustParseAddr("224.0.0.251")
	group6 = netip.MustParseAddr("ff02::fb")
)

// escapeLabel writes s as one DNS label in presentation format, as
// miekg/dns reads names: dots and backslashes escaped, anything else
// outside printable ASCII as \DDD.
func escapeLabel(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.' || c == '\\' || c == '"' || c == '(' || c == ')' || c == ';' || c == '@' || c == '$':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c <= ' ' || c >= 0x7f:
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// unescapeLabel reads one label in presentation format back to its bytes;
// ok is false for a malformed escape or an unescaped dot (several labels).
func unescapeLabel(s string) (string, bool) { return unescape(s, true) }

// unescapeTXT reads a TXT string as miekg/dns presents it.
func unescapeTXT(s string) string {
	out, _ := unescape(s, false)
	return out
}

func unescape(s string, label bool) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.' && label:
			return "", false
		case c != '\\':
			b.WriteByte(c)
		case i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]):
			n, _ := strconv.Atoi(s[i+1 : i+4])
			if n > 255 {
				return "", false
			}
			b.WriteByte(byte(n))
			i += 3
		case i+1 < len(s):
			b.WriteByte(s[i+1])
			i++
		default:
			return "", false
		}
	}
	return b.String(), true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// instanceOf returns the instance name of INSTANCE+suffix (suffix starts
// with a dot; the instance is one label, unescaped); ok is false for any
// other name.
func instanceOf(name, suffix string) (string, bool) {
	if len(name) <= len(suffix) || !strings.EqualFold(name[len(name)-len(suffix):], suffix) {
		return "", false
	}
	label := name[:len(name)-len(suffix)]
	if n := len(label) - len(strings.TrimRight(label, "\\")); n%2 == 1 {
		return "", false // the dot before suffix is escaped: part of a longer label
	}
	return unescapeLabel(label)
}

const instSuffix = "." + serviceName

func instancePath(id string) string { return escapeLabel(id) + instSuffix }
func hbPath(id string) string       { return escapeLabel(id) + hbSuffix }

// sameName compares DNS names, which are case-insensitive.
func sameName(a, b string) bool { return strings.EqualFold(a, b) }

func header(name string, t uint16, flush bool, ttl uint32) dns.RR_Header {
	class := uint16(dns.ClassINET)
	if flush {
		class |= classCacheFlush
	}
	return dns.RR_Header{Name: name, Rrtype: t, Class: class, Ttl: ttl}
}

// hbInfo is what a board's heartbeat record says: it multicasts the
// record at least every Every, and, while Reboot is set, that it is
// rebooting and will be back within Reboot.
type hbInfo struct {
	Every  time.Duration
	Reboot time.Duration
}

// Bounds on what a heartbeat record may claim: shorter or longer values
// from the network are refused, so that no record can make a browser
// query in a loop or keep a board forever.
const (
	minHeartbeat = 500 * time.Millisecond
	maxHeartbeat = 10 * time.Minute
	maxReboot    = 30 * time.Minute
)

func (h hbInfo) txt() []string {
	txt := []string{"hb=" + strconv.FormatInt(h.Every.Milliseconds(), 10)}
	if h.Reboot > 0 {
		txt = append(txt, "reboot="+strconv.FormatInt(h.Reboot.Milliseconds(), 10))
	}
	return txt
}

// parseHB reads a heartbeat record; unknown keys are ignored.
func parseHB(txt []string) (hbInfo, error) {
	var h hbInfo
	ms := func(v string, lo, hi time.Duration) (time.Duration, error) {
		n, err := strconv.ParseInt(v, 10, 64)
		d := time.Duration(n) * time.Millisecond
		if err != nil || d < lo || d > hi {
			return 0, fmt.Errorf("heartbeat value %q out of range [%v, %v]", v, lo, hi)
		}
		return d, nil
	}
	for _, kv := range txt {
		k, v, _ := strings.Cut(kv, "=")
		var err error
		switch k {
		case "hb":
			h.Every, err = ms(v, minHeartbeat, maxHeartbeat)
		case "reboot":
			h.Reboot, err = ms(v, time.Millisecond, maxReboot)
		}
		if err != nil {
			return hbInfo{}, err
		}
	}
	if h.Every == 0 {
		return hbInfo{}, fmt.Errorf("heartbeat record without hb")
	}
	return h, nil
}

// newMsg is an mDNS response (RFC 6762 §18): authoritative, no questions,
// compressed names.
func newResponse() *dns.Msg {
	m := new(dns.Msg)
	m.Response, m.Authoritative, m.Compress = true, true, true
	return m
}

// rrGroup is records that belong together in one packet (a board's
// answer with its SRV, TXT and addresses), so that a browser never gets a
// board without its address.
type rrGroup struct {
	answers, extras []dns.RR
}

// packResponses packs groups into as few responses as fit maxPacket,
// keeping each group in one packet. prep sets up each message (an id and
// questions for a legacy unicast answer).
func packResponses(groups []rrGroup, prep func(*dns.Msg)) ([][]byte, error) {
	var out [][]byte
	var m *dns.Msg
	flush := func() error {
		if m == nil || len(m.Answer)+len(m.Extra) == 0 {
			return nil
		}
		b, err := m.Pack()
		if err != nil {
			return err
		}
		out = append(out, b)
		m = nil
		return nil
	}
	for _, g := range groups {
		if m == nil {
			m = newResponse()
			if prep != nil {
				prep(m)
			}
		}
		na, ne := len(m.Answer), len(m.Extra)
		m.Answer = append(m.Answer, g.answers...)
		m.Extra = append(m.Extra, g.extras...)
		if m.Len() > maxPacket && na+ne > 0 {
			m.Answer, m.Extra = m.Answer[:na], m.Extra[:ne]
			if err := flush(); err != nil {
				return nil, err
			}
			m = newResponse()
			if prep != nil {
				prep(m)
			}
			m.Answer = append(m.Answer, g.answers...)
			m.Extra = append(m.Extra, g.extras...)
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// packQuery packs questions and known answers (RFC 6762 §7.1) into one or
// more queries: the questions go in the first, known answers fill it and
// the next ones, every packet but the last with TC set (§7.2).
func packQuery(questions []dns.Question, known []dns.RR) ([][]byte, error) {
	var out [][]byte
	m := new(dns.Msg)
	m.Compress = true
	m.Question = questions
	for _, rr := range known {
		m.Answer = append(m.Answer, rr)
		if m.Len() > maxPacket && len(m.Answer) > 1 {
			m.Answer = m.Answer[:len(m.Answer)-1]
			m.Truncated = true
			b, err := m.Pack()
			if err != nil {
				return nil, err
			}
			out = append(out, b)
			m = new(dns.Msg)
			m.Compress = true
			m.Answer = []dns.RR{rr}
		}
	}
	b, err := m.Pack()
	if err != nil {
		return nil, err
	}
	return append(out, b), nil
}

// rrKey identifies a record by name, type and data, not TTL or class
// flags: what "the same record" means for known answers and rate limits.
func rrKey(rr dns.RR) string {
	h := *rr.Header()
	c := dns.Copy(rr)
	*c.Header() = dns.RR_Header{Name: strings.ToLower(h.Name), Rrtype: h.Rrtype, Class: dns.ClassINET}
	return c.String()
}

// known reports whether a known answer covers rr: the same record, with
// at least half of rr's TTL left (RFC 6762 §7.1).
func known(rr dns.RR, knowns map[string]uint32) bool {
	ttl, ok := knowns[rrKey(rr)]
	return ok && ttl >= rr.Header().Ttl/2
}

// knownSet indexes the answer section of a query.
func knownSet(rrs []dns.RR) map[string]uint32 {
	if len(rrs) == 0 {
		return nil
	}
	m := make(map[string]uint32, len(rrs))
	for _, rr := range rrs {
		m[rrKey(rr)] = rr.Header().Ttl
	}
	return m
}

// decode reads a packet. Only standard queries and responses with no
// error are taken (RFC 6762 §18.3, §18.11). A record miekg/dns refuses
// is skipped rather than the whole packet: python-zeroconf's NSEC
// records carry empty bitmap blocks, and the answers beside them are
// good.
func decode(b []byte) (*dns.Msg, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		if m, err = decodeLenient(b); err != nil {
			return nil, err
		}
	}
	if m.Opcode != dns.OpcodeQuery || m.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("opcode %d rcode %d", m.Opcode, m.Rcode)
	}
	return m, nil
}

// decodeLenient reads a packet record by record, skipping each record
// that does not unpack (its RDLENGTH says where the next begins).
func decodeLenient(b []byte) (*dns.Msg, error) {
	const hdrLen = 12
	if len(b) < hdrLen {
		return nil, errors.New("short packet")
	}
	hdr := append([]byte(nil), b[:hdrLen]...)
	clear(hdr[4:]) // no records: just the header
	m := new(dns.Msg)
	if err := m.Unpack(hdr); err != nil {
		return nil, err
	}
	count := func(i int) int { return int(binary.BigEndian.Uint16(b[4+2*i:])) }
	off := hdrLen
	for range count(0) {
		name, end, err := dns.UnpackDomainName(b, off)
		if err != nil || end+4 > len(b) {
			return nil, fmt.Errorf("question: %w", errors.Join(err, errors.New("truncated")))
		}
		m.Question = append(m.Question, dns.Question{Name: name, Qtype: binary.BigEndian.Uint16(b[end:]), Qclass: binary.BigEndian.Uint16(b[end+2:])})
		off = end + 4
	}
	for i, sec := range []*[]dns.RR{&m.Answer, &m.Ns, &m.Extra} {
		for range count(i + 1) {
			_, end, err := dns.UnpackDomainName(b, off)
			if err != nil || end+10 > len(b) {
				return m, nil // the rest is unreadable: keep what was read
			}
			next := end + 10 + int(binary.BigEndian.Uint16(b[end+8:]))
			if next > len(b) {
				return m, nil
			}
			if rr, _, err := dns.UnpackRR(b[:next], off); err == nil {
				*sec = append(*sec, rr)
			}
			off = next
		}
	}
	return m, nil
}
