package service

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"time"
)

// PeerUserHeader names the user a service forwards a request for; the
// service that receives it believes it only with the peer token.
const PeerUserHeader = "Boardlink-Peer-User"

// peerUser is the user a request forwarded by another service sharing
// the database acts for: it bears the peer token, and names the user. A
// user of this service's config keeps their rights; another is a plain
// user.
func (s *Service) peerUser(r *http.Request) (user, bool) {
	var zero [sha256.Size]byte
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	name := r.Header.Get(PeerUserHeader)
	if !ok || s.peerHash == zero || name == "" || len(name) > 64 {
		return user{}, false
	}
	h := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	if subtle.ConstantTimeCompare(h[:], s.peerHash[:]) != 1 {
		return user{}, false
	}
	for _, u := range s.users {
		if u.name == name {
			u.peer = true
			return u, true
		}
	}
	return user{name: name, peer: true}, true
}

// ownerURL is where board id's owner is reached, if another service
// owns it ("": this service serves the board), or why it cannot be (its
// owner vanished, advertises no URL, or this service has no peer token).
// The URL comes only from the database's record of that service, never
// from a request.
func (s *Service) ownerURL(id string) (owner string, target *url.URL, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.boards[id]
	if b == nil || b.owner == "" || b.owner == s.owner {
		return "", nil, nil
	}
	if !b.ownerGone.IsZero() {
		return b.owner, nil, fmt.Errorf("board %s: %w: its owner %s vanished at %s", id, ErrOffline, b.owner,
			b.ownerGone.UTC().Format(time.RFC3339))
	}
	target, err = s.peerURLLocked(b.owner)
	if err != nil {
		return b.owner, nil, fmt.Errorf("board %s: %w", id, err)
	}
	return b.owner, target, nil
}

// forwarder is the proxy to board id's owner, if another service owns it
// (nil: this service serves the request).
func (s *Service) forwarder(id string, u user) (http.Handler, error) {
	owner, target, err := s.ownerURL(id)
	if target == nil {
		return nil, err
	}
	tok := s.peerToken
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = target.Host
			pr.Out.Header.Set("Authorization", "Bearer "+tok)
			pr.Out.Header.Set(PeerUserHeader, u.name)
		},
		Transport:     s.peerTransport,
		FlushInterval: -1, // exec output and consoles stream
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			writeError(w, apiError(unreachable(id, owner, err)))
		},
	}, nil
}

// unreachable is the error of a request forwarded to board id's owner
// that got no answer from it.
func unreachable(id, owner string, err error) error {
	return fmt.Errorf("board %s: %w: its owner %s: %w", id, ErrOffline, owner, err)
}

// ownerClient is a client of board id's owner acting for u, if another
// service owns it (nil: this service serves the board), with the owner's
// name; an error says why the owner cannot be asked.
func (s *Service) ownerClient(id string, u user) (*Client, string, error) {
	owner, target, err := s.ownerURL(id)
	if target == nil {
		return nil, owner, err
	}
	return s.clientAt(target, u), owner, nil
}

// peerTransport is the transport of forwarded requests: https checked
// against the roots of caFile ("": the system's).
func peerTransport(caFile string) (http.RoundTripper, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		raw, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%w: peer_ca_file: %w", ErrBadConfig, err)
		}
		tr.TLSClientConfig.RootCAs = x509.NewCertPool()
		if !tr.TLSClientConfig.RootCAs.AppendCertsFromPEM(raw) {
			return nil, fmt.Errorf("%w: peer_ca_file: %s holds no PEM certificate", ErrBadConfig, caFile)
		}
	}
	return tr, nil
}

// peerURLLocked is where service owner is reached, from the database's
// record of it, if this service may send it the peer token: https, or
// plain http on loopback only (the token never crosses in the clear).
func (s *Service) peerURLLocked(owner string) (*url.URL, error) {
	in := s.instances[owner]
	if in.URL == "" {
		return nil, fmt.Errorf("%w: its owner %s advertises no URL", ErrOffline, owner)
	}
	if s.peerToken == "" {
		return nil, fmt.Errorf("%w: it is %s's, and this service has no peer_token_file to reach it", ErrOffline, owner)
	}
	u, err := url.Parse(in.URL)
	if err != nil || u.Host == "" || u.Scheme != "https" && (u.Scheme != "http" || !loopbackHost(u.Hostname())) {
		return nil, fmt.Errorf("%w: owner %s's URL %q is no https:// URL (nor http:// on loopback) (%v)", ErrOffline, owner, in.URL, err)
	}
	return u, nil
}

// peerClient is a client of service owner's API acting for u, with the
// peer token.
func (s *Service) peerClient(owner string, u user) (*Client, error) {
	s.mu.Lock()
	target, err := s.peerURLLocked(owner)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return s.clientAt(target, u), nil
}

// clientAt is a client of the service at target acting for u, with the
// peer token.
func (s *Service) clientAt(target *url.URL, u user) *Client {
	return &Client{base: strings.TrimSuffix(target.String(), "/"), token: s.peerToken,
		http: &http.Client{Transport: s.peerTransport}, peerUser: u.name}
}
