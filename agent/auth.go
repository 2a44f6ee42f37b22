package agent

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/internal/atomicfile"
	"github.com/boardlink/boardlink/proto"
)

// Token is one of the secrets a host may prove it knows. Name says which
// in the log (a file and a line, never the value).
type Token struct {
	Name  string
	Value string
}

// AuthConfig says who may use the agent. A session is served only once
// its host proved a pairing (a key in PairedFile) or a token, or when
// NoAuth is set.
type AuthConfig struct {
	// Key is the board's identity: it signs every session and the TLS
	// certificate of wss://. Required.
	Key ed25519.PrivateKey
	// Tokens are accepted as proofs (session.auth's MAC, the Bearer
	// header of the upgrade, or, from earlier clients, session.hello's
	// token field).
	Tokens []Token
	// PairedFile holds the keys of the hosts paired with this board.
	PairedFile string
	// Pairing lets hosts pair with pair.*; the code comes from CodeFile
	// (written by `boardlinkd pair`) or is made on request and shown.
	Pairing  bool
	CodeFile string
	// ShowCode shows a code made on request where the board's operator
	// looks (the log already has it): a console, say. Nil: the log only.
	ShowCode func(line string)
	// NoAuth serves every session without a proof. It is for a board on
	// a bench nobody else can reach; the agent warns at every start.
	NoAuth bool
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// Pairing's bounds: a code is valid for codeTTL and pairingAttempts
// exchanges, and a new code is made at most every codeInterval, so that
// guessing 40 bits online is out of reach.
const (
	codeTTL         = 5 * time.Minute
	codeInterval    = 30 * time.Second
	pairingAttempts = 3
	// maxAuthFailures is how many failed proofs one connection may make
	// before it is closed.
	maxAuthFailures = 3
	pairedFormat    = 1
	codeFormat      = 1
)

// authority decides who may use the agent: it proves the board's key,
// checks the host's proofs, paces failures and runs pairings.
type authority struct {
	cfg   AuthConfig
	pub   ed25519.PublicKey
	fp    auth.Fingerprint
	board func() string // the board's id, for messages
	log   *slog.Logger
	now   func() time.Time
	fails *penalties

	mu       sync.Mutex
	pending  *pairing  // the one pairing under way
	lastCode time.Time // when the last code was made on request
}

func newAuthority(cfg AuthConfig, board func() string, log *slog.Logger) *authority {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	a := &authority{cfg: cfg, board: board, log: log, now: now, fails: newPenalties(now)}
	if cfg.Key != nil {
		a.pub = cfg.Key.Public().(ed25519.PublicKey)
		a.fp = auth.FingerprintOf(a.pub)
	}
	return a
}

// methods lists the ways session.auth accepts here.
func (a *authority) methods() []string {
	var m []string
	if a.cfg.NoAuth {
		m = append(m, proto.AuthNoAuth)
	}
	if a.cfg.PairedFile != "" {
		m = append(m, proto.AuthKey)
	}
	if len(a.cfg.Tokens) > 0 {
		m = append(m, proto.AuthToken)
	}
	return m
}

// challenge is the board's half of a session: its key, a nonce and its
// signature over both nonces.
func (a *authority) challenge(hostNonce []byte) (*proto.AuthChallenge, auth.Session) {
	s := auth.Session{HostNonce: hostNonce, BoardNonce: auth.NewNonce(), Board: a.fp}
	return &proto.AuthChallenge{Key: a.pub, Nonce: s.BoardNonce, Proof: s.BoardProof(a.cfg.Key), Methods: a.methods()}, s
}

// lockedOut is the refusal of an attempt during a lockout; it unwraps to
// the protocol's error.
type lockedOut struct {
	wait time.Duration
	err  *proto.Error
}

func (e *lockedOut) Error() string { return e.err.Error() }
func (e *lockedOut) Unwrap() error { return e.err }

func errLocked(wait time.Duration) error {
	return &lockedOut{wait: wait, err: proto.Errorf(proto.ReasonUnauthorized,
		"too many failed attempts from this address: retry in %s", wait.Round(100*time.Millisecond))}
}

// refused records a failed proof from src and logs it: each failure in a
// row is logged, with the attempts refused unexamined since the last one.
func (a *authority) refused(src, what string, err error) error {
	fails, lockout, refused := a.fails.fail(source(src))
	a.log.Warn("authentication failed", "peer", src, "proof", what, "failures_in_a_row", fails,
		"locked_out", lockout, "refused_while_locked_out", refused, "err", err)
	return proto.Errorf(proto.ReasonUnauthorized, "%s refused", what)
}

// verify checks session.auth's proofs; it returns how the host was
// authenticated, for the log.
func (a *authority) verify(src string, s auth.Session, p proto.AuthParams) (proto.AuthResult, error) {
	if wait := a.fails.locked(source(src)); wait > 0 {
		return proto.AuthResult{}, errLocked(wait)
	}
	var errs []error
	if p.Key != nil {
		host, err := a.checkHost(s, p)
		if err == nil {
			a.fails.succeed(source(src))
			return proto.AuthResult{Method: proto.AuthKey, Host: host}, nil
		}
		errs = append(errs, err)
	}
	if p.TokenProof != nil {
		i, err := s.VerifyToken(a.tokenValues(), p.TokenProof)
		if err == nil {
			a.fails.succeed(source(src))
			return proto.AuthResult{Method: proto.AuthToken, Host: a.cfg.Tokens[i].Name}, nil
		}
		errs = append(errs, err)
	}
	what := "the host key"
	switch {
	case p.Key != nil && p.TokenProof != nil:
		what = "the host key and the token"
	case p.Key == nil:
		what = "the token"
	}
	return proto.AuthResult{}, a.refused(src, what, errors.Join(errs...))
}

func (a *authority) tokenValues() []string {
	v := make([]string, len(a.cfg.Tokens))
	for i, t := range a.cfg.Tokens {
		v[i] = t.Value
	}
	return v
}

// checkHost verifies a paired host's signature.
func (a *authority) checkHost(s auth.Session, p proto.AuthParams) (string, error) {
	pub, err := auth.KeyFromBytes(p.Key)
	if err != nil {
		return "", err
	}
	host, ok := a.paired(auth.FingerprintOf(pub))
	if !ok {
		return "", fmt.Errorf("host key %s is not paired with this board", auth.FingerprintOf(pub))
	}
	if err := s.VerifyHost(pub, p.Proof); err != nil {
		return "", err
	}
	return host.Name, nil
}

// plainToken checks a token sent as it is (the Bearer header, or the
// hello of a client older than protocol 4), in constant time against
// every token, and returns its name.
func (a *authority) plainToken(src, tok, what string) (string, error) {
	if wait := a.fails.locked(source(src)); wait > 0 {
		return "", errLocked(wait)
	}
	got := sha256.Sum256([]byte(tok))
	found := -1
	for i, t := range a.cfg.Tokens {
		want := sha256.Sum256([]byte(t.Value))
		if subtle.ConstantTimeCompare(got[:], want[:]) == 1 && found < 0 {
			found = i
		}
	}
	if found < 0 {
		return "", a.refused(src, what, errors.New("no token of this board matches"))
	}
	a.fails.succeed(source(src))
	return a.cfg.Tokens[found].Name, nil
}

// PairedHost is a host that paired with the board.
type PairedHost struct {
	Name  string           `json:"name"`
	Key   []byte           `json:"key"`
	FP    auth.Fingerprint `json:"fingerprint"`
	Added time.Time        `json:"added"`
	From  string           `json:"from,omitempty"` // the address it paired from
}

// ReadPaired reads the paired hosts in path; a missing file holds none.
func ReadPaired(path string) ([]PairedHost, error) {
	var hosts []PairedHost
	err := atomicfile.ReadJSON(path, pairedFormat, &hosts)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return hosts, err
}

// WritePaired replaces the paired hosts in path.
func WritePaired(path string, hosts []PairedHost) error {
	return atomicfile.WriteJSON(path, pairedFormat, hosts)
}

// paired looks a host key up in the paired file, read at every use so
// that `boardlinkd pair --remove` takes effect at once.
func (a *authority) paired(fp auth.Fingerprint) (PairedHost, bool) {
	if a.cfg.PairedFile == "" {
		return PairedHost{}, false
	}
	hosts, err := ReadPaired(a.cfg.PairedFile)
	if err != nil {
		a.log.Error("paired hosts", "err", err)
		return PairedHost{}, false
	}
	i := slices.IndexFunc(hosts, func(h PairedHost) bool { return h.FP.Equal(fp) })
	if i < 0 {
		return PairedHost{}, false
	}
	return hosts[i], true
}

// PairingCode is a code left by `boardlinkd pair` for the agent to use.
type PairingCode struct {
	Code    string    `json:"code"`
	Expires time.Time `json:"expires"`
}

// WritePairingCode makes a code valid for ttl and leaves it in path (mode
// 0600) for the agent; it returns the code.
func WritePairingCode(path string, ttl time.Duration, now time.Time) (string, error) {
	code := auth.NewCode()
	err := atomicfile.WriteJSONPerm(path, codeFormat, PairingCode{Code: code, Expires: now.Add(ttl)}, 0o600)
	return code, err
}

// pairing is a pairing under way.
type pairing struct {
	owner    *session // only the session that began it may go on
	src      string
	name     string
	hostKey  ed25519.PublicKey
	code     string
	fromFile bool
	shown    string // where the code is to be read
	expires  time.Time
	attempts int
	keys     *auth.Keys // after the exchange
	sess     auth.Session
}

// pairBegin starts a pairing for the session's host.
func (a *authority) pairBegin(s *session, p proto.PairBeginParams) (proto.PairBeginResult, error) {
	if !a.cfg.Pairing || a.cfg.PairedFile == "" {
		return proto.PairBeginResult{}, proto.Errorf(proto.ReasonMethodNotFound, "pairing is off on this board (pairing: false)")
	}
	if s.authSess.HostNonce == nil {
		return proto.PairBeginResult{}, proto.Errorf(proto.ReasonInvalidRequest, "session.hello with a nonce must come first")
	}
	if wait := a.fails.locked(source(s.peer.Addr)); wait > 0 {
		return proto.PairBeginResult{}, errLocked(wait)
	}
	hostKey, err := auth.KeyFromBytes(p.Key)
	if err != nil {
		return proto.PairBeginResult{}, proto.InvalidField("key", "len", "%v", err)
	}
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if q := a.pending; q != nil && now.Before(q.expires) && q.attempts > 0 {
		if !q.hostKey.Equal(hostKey) {
			return proto.PairBeginResult{}, proto.Errorf(proto.ReasonBusy,
				"another pairing is under way (host %q from %s): retry in %s", q.name, q.src, q.expires.Sub(now).Round(time.Second))
		}
		// The same host again (a mistyped code, an interrupted CLI): the
		// code already shown goes on, with the attempts it has left.
		q.owner, q.sess, q.src, q.keys = s, s.authSess, s.peer.Addr, nil
		return proto.PairBeginResult{ExpiresMs: q.expires.Sub(now).Milliseconds(), Attempts: q.attempts, Shown: q.shown}, nil
	}
	q := &pairing{owner: s, src: s.peer.Addr, name: p.Name, hostKey: hostKey, attempts: pairingAttempts, sess: s.authSess,
		shown: "the board's console and log"}
	if c, ok := a.codeFromFile(now); ok {
		q.code, q.expires, q.fromFile = c.Code, c.Expires, true
		q.shown = "the output of boardlinkd pair on the board"
	} else {
		if wait := a.lastCode.Add(codeInterval).Sub(now); wait > 0 {
			return proto.PairBeginResult{}, proto.Errorf(proto.ReasonBusy, "a pairing code was made %s ago: retry in %s",
				now.Sub(a.lastCode).Round(time.Second), wait.Round(time.Second))
		}
		a.lastCode = now
		q.code, q.expires = auth.NewCode(), now.Add(codeTTL)
		line := fmt.Sprintf("boardlink: pairing code for host %q (%s) from %s: %s (valid %s; type it into boardlink pair)",
			p.Name, auth.FingerprintOf(hostKey), s.peer.Addr, q.code, codeTTL)
		a.log.Warn(line)
		if a.cfg.ShowCode != nil {
			a.cfg.ShowCode(line)
		}
	}
	a.pending = q
	a.log.Info("pairing requested", "peer", s.peer.Addr, "host", p.Name, "host_key", auth.FingerprintOf(hostKey), "code_from", q.shown)
	return proto.PairBeginResult{ExpiresMs: q.expires.Sub(now).Milliseconds(), Attempts: q.attempts, Shown: q.shown}, nil
}

// codeFromFile returns the code `boardlinkd pair` left, if it is valid.
func (a *authority) codeFromFile(now time.Time) (PairingCode, bool) {
	if a.cfg.CodeFile == "" {
		return PairingCode{}, false
	}
	var c PairingCode
	if err := atomicfile.ReadJSON(a.cfg.CodeFile, codeFormat, &c); err != nil {
		return c, false
	}
	return c, now.Before(c.Expires) && auth.ValidCode(c.Code)
}

// pendingFor returns the session's pairing, or why there is none.
// An exchange needs an attempt left; a confirmation only the exchange it
// confirms (which used the attempt), so the last attempt can succeed.
func (a *authority) pendingFor(s *session, exchange bool) (*pairing, error) {
	q := a.pending
	if q == nil || q.owner != s {
		return nil, proto.Errorf(proto.ReasonInvalidRequest, "no pairing under way on this connection: pair.begin first")
	}
	if !a.now().Before(q.expires) || (exchange && q.attempts <= 0) {
		a.endPairingLocked(q)
		return nil, proto.Errorf(proto.ReasonUnauthorized, "the pairing code expired or was used up: pair.begin for a new one")
	}
	return q, nil
}

// pairExchange runs the board's side of SPAKE2; each exchange uses one
// attempt of the code.
func (a *authority) pairExchange(s *session, p proto.PairExchangeParams) (proto.PairExchangeResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	q, err := a.pendingFor(s, true)
	if err != nil {
		return proto.PairExchangeResult{}, err
	}
	q.attempts--
	pake := auth.NewPAKE(auth.RoleBoard, q.code, auth.FingerprintOf(q.hostKey), a.fp, q.sess.Context())
	keys, err := pake.Finish(p.Message)
	if err != nil {
		return proto.PairExchangeResult{}, proto.InvalidField("message", "pake", "%v", err)
	}
	q.keys = &keys
	return proto.PairExchangeResult{Message: pake.Message(), Confirm: keys.Mine}, nil
}

// pairConfirm stores the pairing if the host's confirmation checks out.
func (a *authority) pairConfirm(s *session, p proto.PairConfirmParams) (PairedHost, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	q, err := a.pendingFor(s, false)
	if err != nil {
		return PairedHost{}, err
	}
	if q.keys == nil {
		return PairedHost{}, proto.Errorf(proto.ReasonInvalidRequest, "pair.exchange must come before pair.confirm")
	}
	if err := q.keys.Check(p.Confirm); err != nil {
		q.keys = nil
		if q.attempts <= 0 {
			a.endPairingLocked(q)
		}
		return PairedHost{}, a.refused(q.src, "the pairing code", err)
	}
	host := PairedHost{Name: q.name, Key: q.hostKey, FP: auth.FingerprintOf(q.hostKey), Added: a.now().UTC(), From: q.src}
	hosts, err := ReadPaired(a.cfg.PairedFile)
	if err != nil {
		return PairedHost{}, fmt.Errorf("paired hosts: %w", err)
	}
	hosts = slices.DeleteFunc(hosts, func(h PairedHost) bool { return h.FP.Equal(host.FP) })
	if err := WritePaired(a.cfg.PairedFile, append(hosts, host)); err != nil {
		return PairedHost{}, err
	}
	a.endPairingLocked(q)
	a.fails.succeed(source(q.src))
	a.log.Info("paired", "host", host.Name, "host_key", host.FP, "peer", q.src)
	return host, nil
}

// endPairingLocked ends q, and uses up a code from the code file.
func (a *authority) endPairingLocked(q *pairing) {
	if a.pending == q {
		a.pending = nil
	}
	if q.fromFile {
		_ = removeIfSame(a.cfg.CodeFile, q.code)
	}
}

// pairing reports whether s has a pairing under way: a person is typing
// a code, which takes longer than a handshake.
func (a *authority) pairing(s *session) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	q := a.pending
	return q != nil && q.owner == s && a.now().Before(q.expires)
}

// endSession detaches a closing session from its pairing: the same host
// may take it up again until its code expires.
func (a *authority) endSession(s *session) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if q := a.pending; q != nil && q.owner == s {
		q.owner, q.keys = nil, nil
	}
}

// removeIfSame removes the code file if it still holds code (a newer one
// from boardlinkd pair stays).
func removeIfSame(path, code string) error {
	var c PairingCode
	if err := atomicfile.ReadJSON(path, codeFormat, &c); err != nil || c.Code != code {
		return err
	}
	return os.Remove(path)
}
