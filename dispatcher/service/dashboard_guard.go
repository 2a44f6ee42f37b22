package service

import (
	"context"
	"crypto/sha256"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Failed sign-ins are limited, so that the dashboard's form is no oracle
// for guessing tokens: per remote address, and over all addresses
// together (a wrong token names no user, so the bound per user is the
// one over all: a guesser cannot tell whose token it tried). Past a bound
// every sign-in from there is answered 429 with Retry-After until the
// oldest failure of the window ages out, the right token included.
const (
	signinWindow     = time.Minute
	signinPerAddress = 5
	signinOverall    = 50
	// signinKeys bounds the addresses remembered; past it the oldest
	// go first.
	signinKeys = 4096
)

// signinLimit remembers the failed sign-ins of the last window, by key.
type signinLimit struct {
	now func() time.Time

	mu    sync.Mutex
	fails map[string][]time.Time // oldest first
}

func newSigninLimit() *signinLimit {
	return &signinLimit{now: time.Now, fails: map[string][]time.Time{}}
}

// signinKeysOf are the bounds a sign-in from r counts against, with
// their limits.
func signinKeysOf(r *http.Request) map[string]int {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return map[string]int{"addr:" + host: signinPerAddress, "all": signinOverall}
}

// wait is how long a sign-in from r must wait, 0 if it may try now.
func (l *signinLimit) wait(r *http.Request) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	var wait time.Duration
	for key, limit := range signinKeysOf(r) {
		fs := l.prune(key, now)
		if len(fs) >= limit {
			wait = max(wait, fs[len(fs)-limit].Add(signinWindow).Sub(now))
		}
	}
	return wait
}

// failed records a failed sign-in from r.
func (l *signinLimit) failed(r *http.Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if len(l.fails) >= signinKeys {
		l.evict(now)
	}
	for key, limit := range signinKeysOf(r) {
		fs := append(l.prune(key, now), now)
		if len(fs) > limit {
			fs = fs[len(fs)-limit:] // only the last limit count
		}
		l.fails[key] = fs
	}
}

// prune drops key's failures older than the window.
func (l *signinLimit) prune(key string, now time.Time) []time.Time {
	fs := l.fails[key]
	i := 0
	for i < len(fs) && now.Sub(fs[i]) >= signinWindow {
		i++
	}
	if fs = fs[i:]; len(fs) == 0 {
		delete(l.fails, key)
		return nil
	}
	l.fails[key] = fs
	return fs
}

// evict drops the keys whose last failure is oldest, down to half the
// bound.
func (l *signinLimit) evict(now time.Time) {
	for key := range l.fails {
		l.prune(key, now)
	}
	for len(l.fails) > signinKeys/2 {
		var oldest string
		var at time.Time
		for key, fs := range l.fails {
			if last := fs[len(fs)-1]; oldest == "" || last.Before(at) {
				oldest, at = key, last
			}
		}
		delete(l.fails, oldest)
	}
}

// limited answers a sign-in that must wait 429 with Retry-After.
func limited(w http.ResponseWriter, wait time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
	http.Error(w, "too many failed sign-ins: try again later", http.StatusTooManyRequests)
}

// sessions are the live streams open under each sign-in (by its token's
// hash), so that signing out ends them at once.
type sessions struct {
	mu      sync.Mutex
	next    uint64
	streams map[[32]byte]map[uint64]context.CancelFunc
}

// add registers a stream of v's sign-in, which cancel ends; remove
// forgets it.
func (s *sessions) add(v viewer, cancel context.CancelFunc) (remove func()) {
	if !v.signedIn {
		return func() {}
	}
	key := sha256.Sum256([]byte(v.token))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams == nil {
		s.streams = map[[32]byte]map[uint64]context.CancelFunc{}
	}
	if s.streams[key] == nil {
		s.streams[key] = map[uint64]context.CancelFunc{}
	}
	s.next++
	n := s.next
	s.streams[key][n] = cancel
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.streams[key], n)
		if len(s.streams[key]) == 0 {
			delete(s.streams, key)
		}
	}
}

// end ends every stream of v's sign-in and returns how many.
func (s *sessions) end(v viewer) int {
	if !v.signedIn {
		return 0
	}
	key := sha256.Sum256([]byte(v.token))
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.streams[key])
	for _, cancel := range s.streams[key] {
		cancel()
	}
	delete(s.streams, key)
	return n
}
