package service

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/proto"
)

// LeaseHeader names the lease an action on a board is taken under.
const LeaseHeader = "Boardlink-Lease"

// maxBody bounds a request's body.
const maxBody = 1 << 20

// maxLongPoll bounds how long GET /leases/{id} waits for a change.
const maxLongPoll = 60 * time.Second

// APIError is the body of every error response: {"error": {...}}.
type APIError struct {
	Status  int                `json:"status"`
	Reason  string             `json:"reason"`
	Message string             `json:"message"`
	Fields  []proto.FieldError `json:"fields,omitempty"`
	// Leased names the lease that holds the board, on a refusal.
	Leased *LeasedError `json:"leased,omitempty"`
}

func (e *APIError) Error() string {
	msg := e.Message
	for _, f := range e.Fields {
		msg += "; " + f.Field + ": " + f.Message
	}
	return msg
}

// API error reasons, besides proto's invalid_params, not_found and
// unauthorized.
const (
	ReasonLeased        = "leased"
	ReasonForbidden     = "forbidden"
	ReasonLeaseEnded    = "lease_ended"
	ReasonUnsatisfiable = "unsatisfiable"
	ReasonBusy          = "busy"
	ReasonState         = "state"
	ReasonOffline       = "offline"
	ReasonUnsupported   = "unsupported"
	ReasonInternal      = "internal"
)

// apiError maps an error to its response.
func apiError(err error) *APIError {
	var (
		ae *APIError
		pe *proto.Error
		fe *FieldError
		le *LeasedError
		se *StateError
		re *RolloutStateError
	)
	e := &APIError{Status: http.StatusInternalServerError, Reason: ReasonInternal, Message: err.Error()}
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &pe) && pe.Data != nil && pe.Data.Reason == proto.ReasonInvalidParams:
		e.Status, e.Reason, e.Fields = http.StatusBadRequest, string(proto.ReasonInvalidParams), pe.Data.Fields
	case errors.As(err, &pe):
		// The board refused: its own reason (not_found for a command it
		// cannot find, busy...), behind a 502.
		e.Status, e.Reason = http.StatusBadGateway, string(pe.Reason())
	case errors.As(err, &fe):
		e.Status, e.Reason = http.StatusBadRequest, string(proto.ReasonInvalidParams)
		e.Fields = []proto.FieldError{{Field: fe.Field, Rule: "bounds", Message: fe.Message}}
	case errors.As(err, &le):
		e.Status, e.Reason, e.Leased = http.StatusConflict, ReasonLeased, le
	case errors.As(err, &se), errors.As(err, &re):
		e.Status, e.Reason = http.StatusConflict, ReasonState
	case errors.Is(err, ErrNoSuchLease), errors.Is(err, ErrNoSuchBoard), errors.Is(err, ErrNoConsole):
		e.Status, e.Reason = http.StatusNotFound, string(proto.ReasonNotFound)
	case errors.Is(err, ErrNotHolder):
		e.Status, e.Reason = http.StatusForbidden, ReasonForbidden
	case errors.Is(err, ErrLeaseEnded):
		e.Status, e.Reason = http.StatusGone, ReasonLeaseEnded
	case errors.Is(err, ErrUnsatisfiable):
		e.Status, e.Reason = http.StatusConflict, ReasonUnsatisfiable
	case errors.Is(err, ErrElsewhere):
		e.Status, e.Reason = http.StatusConflict, ReasonState
	case errors.Is(err, ErrNotAvailable):
		e.Status, e.Reason = http.StatusConflict, ReasonBusy
	case errors.Is(err, ErrTooManyLeases), errors.Is(err, ErrTooManyUploads):
		e.Status, e.Reason = http.StatusTooManyRequests, ReasonBusy
	case errors.Is(err, ErrOffline):
		e.Status, e.Reason = http.StatusServiceUnavailable, ReasonOffline
	case errors.Is(err, dispatcher.ErrPartialDiffers):
		e.Status, e.Reason = http.StatusConflict, ReasonState
	case errors.Is(err, power.ErrNoPower):
		e.Status, e.Reason = http.StatusConflict, ReasonUnsupported
	}
	return e
}

// call is one request: who made it, and what the audit log records of it.
type call struct {
	user   user
	action string // "" for reads, which are not recorded
	board  string
	lease  string
	detail string
}

// route is one endpoint of the API.
type route struct {
	method, path string
	action       string // its audit action; "" for a read
	handle       func(*Service, http.ResponseWriter, *http.Request, *call) error
}

// routes are every endpoint; docs/openapi.yaml lists the same (a test
// checks it).
var routes = []route{
	{"GET", "/api/v1/boards", "", (*Service).hBoards},
	{"GET", "/api/v1/boards/{id}", "", (*Service).hBoard},
	{"POST", "/api/v1/boards/{id}/maintenance", "board.maintenance", (*Service).hMaintenance},
	{"POST", "/api/v1/boards/{id}/release-quarantine", "board.release_quarantine", (*Service).hReleaseQuarantine},
	{"POST", "/api/v1/boards/{id}/power", "board.power", (*Service).hPower},
	{"POST", "/api/v1/boards/{id}/exec", "board.exec", (*Service).hExec},
	{"GET", "/api/v1/boards/{id}/exec/stream", "board.exec", (*Service).hExecStream},
	{"GET", "/api/v1/boards/{id}/console", "board.console", (*Service).hConsole},
	{"POST", "/api/v1/boards/{id}/files", "board.push", (*Service).hPush},
	{"GET", "/api/v1/boards/{id}/files", "board.pull", (*Service).hPull},
	{"POST", "/api/v1/boards/{id}/files/tree", "board.push", (*Service).hPushTree},
	{"GET", "/api/v1/boards/{id}/files/tree", "board.pull", (*Service).hPullTree},
	{"POST", "/api/v1/boards/{id}/reboot", "board.reboot", (*Service).hReboot},
	{"POST", "/api/v1/boards/{id}/ota", "board.ota", (*Service).hOTA},
	{"POST", "/api/v1/rollouts", "rollout.start", (*Service).hStartRollout},
	{"GET", "/api/v1/rollouts", "", (*Service).hRollouts},
	{"GET", "/api/v1/rollouts/{id}", "", (*Service).hRollout},
	{"POST", "/api/v1/rollouts/{id}/stop", "rollout.stop", (*Service).hStopRollout},
	{"POST", "/api/v1/rollouts/{id}/parts/{owner}/retry", "rollout.retry_part", (*Service).hRetryPart},
	{"POST", "/api/v1/leases", "lease.acquire", (*Service).hAcquire},
	{"GET", "/api/v1/leases", "", (*Service).hLeases},
	{"GET", "/api/v1/leases/{id}", "", (*Service).hLease},
	{"POST", "/api/v1/leases/{id}/renew", "lease.renew", (*Service).hRenew},
	{"DELETE", "/api/v1/leases/{id}", "lease.release", (*Service).hRelease},
	{"GET", "/api/v1/audit", "", (*Service).hAudit},
	{"GET", "/metrics", "", (*Service).hMetrics},
}

// Handler is the HTTP API.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range routes {
		mux.HandleFunc(rt.method+" "+rt.path, func(w http.ResponseWriter, r *http.Request) {
			s.serve(w, r, rt)
		})
	}
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &APIError{Status: http.StatusNotFound, Reason: string(proto.ReasonNotFound),
			Message: "no such endpoint: " + r.Method + " " + r.URL.Path})
	})
	mux.Handle("/", s.Dashboard(s.cfg.Dashboard))
	return mux
}

// serve authenticates a request, runs its handler and records it.
func (s *Service) serve(w http.ResponseWriter, r *http.Request, rt route) {
	u, ok := s.authenticate(r)
	peer := false
	if !ok {
		u, ok = s.peerUser(r)
		peer = ok
	}
	ok = ok || s.metrics.scrapeAllowed(r, rt.path)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="boardlink"`)
		writeError(w, &APIError{Status: http.StatusUnauthorized, Reason: string(proto.ReasonUnauthorized),
			Message: "a user's token is required: Authorization: Bearer TOKEN"})
		s.log.Warn("api: unauthorized", "method", r.Method, "path", r.URL.Path, "from", r.RemoteAddr)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.bodyLimit(rt))
	c := &call{user: u, action: rt.action, board: r.PathValue("id"), lease: r.Header.Get(LeaseHeader)}
	if strings.HasPrefix(rt.path, "/api/v1/leases/{id}") {
		c.board, c.lease = "", r.PathValue("id")
	}
	if strings.HasPrefix(rt.path, "/api/v1/rollouts/{id}") {
		c.board = "" // a rollout's id, in its detail
	}
	handle := rt.handle
	// An action on a board another service owns is that one's to do (and
	// to record, and to count against the user's uploads); a forwarded
	// request is never forwarded again, and one that cannot be is refused
	// and recorded here.
	if !peer && strings.HasPrefix(rt.path, "/api/v1/boards/{id}/") {
		fwd, ferr := s.forwarder(c.board, u)
		if fwd != nil {
			fwd.ServeHTTP(w, r)
			return
		}
		if ferr != nil {
			handle = func(*Service, http.ResponseWriter, *http.Request, *call) error { return ferr }
		}
	}
	release, err := s.uploads.take(u.name, s.bodyLimit(rt) > maxBody)
	if err == nil {
		err = handle(s, w, r, c)
		release()
	}
	if err != nil {
		writeError(w, apiError(err))
	}
	// A successful renewal is in the lease's row (renewed), not the log:
	// a holder renews every few seconds.
	if c.action == "" || c.action == "lease.renew" && err == nil {
		return
	}
	_, aerr := s.st.AddAudit(context.WithoutCancel(r.Context()), store.AuditEntry{User: u.name, Action: c.action,
		Board: c.board, Lease: c.lease, Result: result(err), Detail: c.detail})
	if aerr != nil {
		s.log.Error("api: audit not written", "err", aerr)
	}
}

// authenticate finds the user whose token the request bears, comparing
// the token's hash with every user's in constant time.
func (s *Service) authenticate(r *http.Request) (user, bool) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return user{}, false
	}
	h := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	var (
		found user
		match int
	)
	for _, u := range s.users {
		if subtle.ConstantTimeCompare(h[:], u.hash[:]) == 1 {
			found, match = u, 1
		}
	}
	return found, match == 1
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *APIError) {
	writeJSON(w, e.Status, map[string]*APIError{"error": e})
}

// decode reads a JSON body strictly into v and validates it; an empty
// body is {}.
func decode(r *http.Request, v any) error {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		return &APIError{Status: http.StatusRequestEntityTooLarge, Reason: string(proto.ReasonTooLarge), Message: err.Error()}
	}
	if perr := proto.DecodeParams(raw, v); perr != nil {
		return perr
	}
	return nil
}

// queryInt reads an integer query parameter (def when absent).
func queryInt(r *http.Request, name string, def, lo, hi int64) (int64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, &FieldError{name, fmt.Sprintf("must be an integer from %d to %d", lo, hi)}
	}
	return n, nil
}

// querySince reads a time query parameter: a duration back from now
// ("5m") or an RFC 3339 time.
func querySince(r *http.Request, name string) (time.Time, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return time.Now().Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, &FieldError{name, "must be a duration back from now (5m) or an RFC 3339 time"}
	}
	return t, nil
}

func (s *Service) hBoards(w http.ResponseWriter, r *http.Request, c *call) error {
	writeJSON(w, http.StatusOK, map[string]any{"boards": s.Boards()})
	return nil
}

func (s *Service) hBoard(w http.ResponseWriter, r *http.Request, c *call) error {
	b, err := s.Board(c.board)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, b)
	return nil
}

// MaintenanceRequest takes a board out of the lab (on) or puts it back.
type MaintenanceRequest struct {
	On     bool   `json:"on"`
	Reason string `json:"reason,omitempty" validate:"max=1024"`
}

func (s *Service) hMaintenance(w http.ResponseWriter, r *http.Request, c *call) error {
	var req MaintenanceRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	c.detail = fmt.Sprintf("on=%v %s", req.On, req.Reason)
	b, err := s.SetMaintenance(c.user, c.board, req.On, req.Reason)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, b)
	return nil
}

func (s *Service) hReleaseQuarantine(w http.ResponseWriter, r *http.Request, c *call) error {
	b, err := s.ReleaseQuarantine(c.user, c.board)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, b)
	return nil
}

// PowerRequest switches a board's power.
type PowerRequest struct {
	Action string `json:"action" validate:"required,oneof=on off cycle"`
}

func (s *Service) hPower(w http.ResponseWriter, r *http.Request, c *call) error {
	var req PowerRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	c.detail = req.Action
	if err := s.Power(r.Context(), c.user, c.board, c.lease, req.Action); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"board": c.board, "action": req.Action})
	return nil
}

// ExecFrame is one line of an exec's response (application/x-ndjson):
// output as it comes, then one last frame with the outcome or an error.
type ExecFrame struct {
	Stdout  []byte       `json:"stdout,omitempty"`
	Stderr  []byte       `json:"stderr,omitempty"`
	Outcome *ExecOutcome `json:"outcome,omitempty"`
	Error   *APIError    `json:"error,omitempty"`
}

// frameWriter writes output frames, one at a time, flushed.
type frameWriter struct {
	mu      sync.Mutex
	w       http.ResponseWriter
	enc     *json.Encoder
	started bool
}

func (f *frameWriter) frame(fr ExecFrame) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.started {
		f.w.Header().Set("Content-Type", "application/x-ndjson")
		f.w.WriteHeader(http.StatusOK)
		f.started = true
	}
	if err := f.enc.Encode(fr); err != nil {
		return err
	}
	return http.NewResponseController(f.w).Flush()
}

type streamWriter struct {
	f      *frameWriter
	stderr bool
}

func (s streamWriter) Write(p []byte) (int, error) {
	fr := ExecFrame{Stdout: p}
	if s.stderr {
		fr = ExecFrame{Stderr: p}
	}
	if err := s.f.frame(fr); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *Service) hExec(w http.ResponseWriter, r *http.Request, c *call) error {
	var req ExecRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	c.detail = argvDetail(req.Argv)
	f := &frameWriter{w: w, enc: json.NewEncoder(w)}
	out, err := s.Exec(r.Context(), c.user, c.board, c.lease, req, streamWriter{f: f}, streamWriter{f: f, stderr: true})
	if err != nil && !f.started {
		return err
	}
	if err != nil {
		_ = f.frame(ExecFrame{Error: apiError(err)})
		c.detail += "; " + err.Error()
		return nil
	}
	if out.Canceled != "" {
		c.detail += "; canceled: " + out.Canceled
	}
	_ = f.frame(ExecFrame{Outcome: &out})
	return nil
}

func (s *Service) hConsole(w http.ResponseWriter, r *http.Request, c *call) error {
	since, err := querySince(r, "since")
	if err != nil {
		return err
	}
	follow := r.URL.Query().Get("follow")
	if follow != "" && follow != "0" && follow != "1" {
		return &FieldError{"follow", "must be 0 or 1"}
	}
	c.detail = "since " + r.URL.Query().Get("since")
	if follow == "1" {
		c.detail += ", followed"
	}
	// Checked before the answer starts, so that a refusal is an error.
	if _, err := s.Board(c.board); err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := s.Console(r.Context(), c.board, since, false, &buf, nil); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	rc := http.NewResponseController(w)
	if follow != "1" {
		_, _ = w.Write(buf.Bytes())
		return nil
	}
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()
	_ = s.Console(r.Context(), c.board, since, true, w, func() { _ = rc.Flush() })
	return nil
}

func (s *Service) hAcquire(w http.ResponseWriter, r *http.Request, c *call) error {
	var req AcquireRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	l, err := s.Acquire(r.Context(), c.user.name, req)
	c.lease = l.ID
	c.detail = fmt.Sprintf("select %v boards %v count %d", req.Select, req.Boards, req.Count)
	if err != nil {
		return err
	}
	c.detail += "; " + l.State
	writeJSON(w, http.StatusCreated, l)
	return nil
}

func (s *Service) hLeases(w http.ResponseWriter, r *http.Request, c *call) error {
	ended, err := queryInt(r, "ended", 0, 0, 1000)
	if err != nil {
		return err
	}
	ls, err := s.Leases(r.Context(), int(ended))
	if err != nil {
		return err
	}
	if ls == nil {
		ls = []Lease{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"leases": ls})
	return nil
}

func (s *Service) hLease(w http.ResponseWriter, r *http.Request, c *call) error {
	wait, err := queryInt(r, "wait_ms", 0, 0, maxLongPoll.Milliseconds())
	if err != nil {
		return err
	}
	known, err := queryInt(r, "position", 0, 0, 1<<30)
	if err != nil {
		return err
	}
	l, err := s.GetLease(r.Context(), c.user, c.lease, int(known), time.Duration(wait)*time.Millisecond)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, l)
	return nil
}

func (s *Service) hRenew(w http.ResponseWriter, r *http.Request, c *call) error {
	var req RenewRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	l, err := s.Renew(r.Context(), c.user, c.lease, req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, l)
	return nil
}

func (s *Service) hRelease(w http.ResponseWriter, r *http.Request, c *call) error {
	l, err := s.Release(r.Context(), c.user, c.lease)
	if err != nil {
		return err
	}
	c.detail = fmt.Sprintf("boards %v", l.Boards)
	writeJSON(w, http.StatusOK, l)
	return nil
}

func (s *Service) hAudit(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	since, err := querySince(r, "since")
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 100, 1, 10000)
	if err != nil {
		return err
	}
	es, err := s.Audit(r.Context(), store.AuditFilter{User: q.Get("user"), Board: q.Get("board"),
		Lease: q.Get("lease"), Action: q.Get("action"), Since: since, Limit: int(limit)})
	if err != nil {
		return err
	}
	if es == nil {
		es = []store.AuditEntry{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": es})
	return nil
}
