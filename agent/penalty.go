package agent

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// penalties slow down whoever keeps failing to authenticate: after each
// failure in a row a source is locked out for a delay that doubles, up to
// maxPenalty, and attempts during a lockout are refused unexamined. A
// success forgets the source. The table is bounded: when full, the source
// whose lockout ended longest ago is forgotten first.
type penalties struct {
	now func() time.Time

	mu sync.Mutex
	m  map[string]*penalty
}

type penalty struct {
	fails   int       // failures in a row
	until   time.Time // locked out until
	refused int       // attempts refused during lockouts since the last report
}

const (
	basePenalty  = 250 * time.Millisecond
	maxPenalty   = 30 * time.Second
	maxPenalized = 4096
	// forgetAfter drops a source that has been quiet this long after its
	// lockout, so its next failure starts from the base delay again.
	forgetAfter = 10 * time.Minute
)

func newPenalties(now func() time.Time) *penalties {
	if now == nil {
		now = time.Now
	}
	return &penalties{now: now, m: map[string]*penalty{}}
}

// source names where an attempt came from: an IPv4 address, an IPv6 /64
// (one host owns a whole prefix), or a serial line's name.
func source(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return addr
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// locked reports how long src must still wait, counting the refusal.
func (p *penalties) locked(src string) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.m[src]
	if e == nil {
		return 0
	}
	wait := e.until.Sub(p.now())
	if wait > 0 {
		e.refused++
	}
	return max(wait, 0)
}

// fail records a failure of src and returns its failures in a row, the
// lockout it now serves, and the attempts refused unexamined since the
// last failure (for the log).
func (p *penalties) fail(src string) (fails int, lockout time.Duration, refused int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	e := p.m[src]
	if e != nil && now.Sub(e.until) > forgetAfter {
		e = nil
	}
	if e == nil {
		p.makeRoomLocked(now)
		e = &penalty{}
		p.m[src] = e
	}
	e.fails++
	lockout = basePenalty << min(e.fails-1, 16)
	lockout = min(lockout, maxPenalty)
	e.until = now.Add(lockout)
	refused, e.refused = e.refused, 0
	return e.fails, lockout, refused
}

// succeed forgets src's failures.
func (p *penalties) succeed(src string) {
	p.mu.Lock()
	delete(p.m, src)
	p.mu.Unlock()
}

func (p *penalties) makeRoomLocked(now time.Time) {
	if len(p.m) < maxPenalized {
		return
	}
	oldest, oldestUntil := "", now.Add(maxPenalty)
	for k, e := range p.m {
		if now.Sub(e.until) > forgetAfter {
			delete(p.m, k)
			continue
		}
		if e.until.Before(oldestUntil) {
			oldest, oldestUntil = k, e.until
		}
	}
	if len(p.m) >= maxPenalized {
		delete(p.m, oldest)
	}
}
