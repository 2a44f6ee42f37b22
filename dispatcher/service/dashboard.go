package service

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/proto"
)

// DashboardConfig configures the web dashboard at /.
type DashboardConfig struct {
	// PublicRead lets a visitor who has not signed in read the boards,
	// leases and rollouts (a lab's board wall). Consoles, command logs
	// and every action still need a signed-in user. Default false: every
	// page needs sign-in, as the inventory names addresses and holders.
	PublicRead bool `yaml:"public_read"`
}

//go:embed web
var webFS embed.FS

// The dashboard's bounds.
const (
	// maxLivePerUser bounds the live streams (SSE) one user (or, not
	// signed in, one remote address) holds at once; maxLive all of them.
	maxLivePerUser = 8
	maxLive        = 256
	// liveTick is how often a live page is rendered again without a
	// change of a board's state or a lease (last seen, the audit log,
	// rollouts, which the store does not announce); liveCoalesce how long
	// a burst of changes is gathered into one render, at least (ten times
	// the last render's time if more).
	liveTick     = 2 * time.Second
	liveCoalesce = 200 * time.Millisecond
	// liveMaxAge ends a live stream, which the browser opens again: the
	// new one checks the sign-in anew.
	liveMaxAge = 10 * time.Minute
	// consoleWindow and consoleTail: how far back, and how much at most,
	// of a console a board's page shows.
	consoleWindow = 30 * time.Minute
	consoleTail   = 64 << 10
	// maxForm bounds a form's body.
	maxForm = 64 << 10
	// Lists: the ended leases, the rollouts, the audit entries shown.
	endedLeases  = 20
	rolloutsShow = 100
	auditShow    = 30
)

// cookieName holds the signed-in user's token (base64url), HttpOnly and
// SameSite=Strict.
const cookieName = "boardlink_token"

// dashboard is the web UI: server-rendered pages, each with live regions
// a small script refreshes from a stream of Server-Sent Events.
type dashboard struct {
	s     *Service
	cfg   DashboardConfig
	pages map[string]*template.Template
	// csrfKey makes each session's form token: an HMAC of its token's hash.
	csrfKey []byte
	origin  *http.CrossOriginProtection
	mux     *http.ServeMux
	board   *dashView // the board page's, which a power form renders again

	mu    sync.Mutex
	live  map[string]int // open live streams by user
	nLive int

	signins  *signinLimit
	sessions sessions // live streams by sign-in, which signing out ends
}

// Dashboard is the web dashboard, which Handler serves at /.
func (s *Service) Dashboard(cfg DashboardConfig) http.Handler {
	d := &dashboard{s: s, cfg: cfg, pages: map[string]*template.Template{}, csrfKey: make([]byte, 32),
		origin: http.NewCrossOriginProtection(), mux: http.NewServeMux(), live: map[string]int{},
		signins: newSigninLimit()}
	rand.Read(d.csrfKey)
	// seg: an id as one segment of a path (a static board's id is any text).
	funcs := template.FuncMap{"ago": ago, "utc": utc, "percent": percent, "size": size, "seg": url.PathEscape,
		"powerActions": func() []string { return []string{"on", "off", "cycle"} }}
	for _, name := range []string{"boards", "board", "leases", "rollouts", "rollout", "signin", "message"} {
		d.pages[name] = template.Must(template.New(name).Funcs(funcs).ParseFS(webFS, "web/layout.html", "web/"+name+".html"))
	}
	static, _ := fs.Sub(webFS, "web/static")
	d.mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	for _, v := range d.views() {
		if v.tmpl == "board" {
			d.board = v
		}
		d.mux.HandleFunc("GET "+v.path, func(w http.ResponseWriter, r *http.Request) { d.page(w, r, v) })
		d.mux.HandleFunc("GET /live"+v.path, func(w http.ResponseWriter, r *http.Request) { d.stream(w, r, v) })
	}
	d.mux.HandleFunc("GET /live/boards/{id}/console", d.consoleStream)
	d.mux.HandleFunc("POST /boards/{id}/power", d.power)
	d.mux.HandleFunc("POST /rollouts/{id}/stop", d.rolloutAction)
	d.mux.HandleFunc("POST /rollouts/{id}/parts/{owner}/retry", d.rolloutAction)
	d.mux.HandleFunc("GET /signin", d.signinForm)
	d.mux.HandleFunc("POST /signin", d.signin)
	d.mux.HandleFunc("POST /signout", d.signout)
	d.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		d.message(w, r, http.StatusNotFound, "Not found", "No page at "+r.URL.Path+".")
	})
	return d
}

func (d *dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Scripts and styles from the service only: nothing inline, nothing
	// from elsewhere, no framing.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "+
		"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	d.mux.ServeHTTP(w, r)
}

// viewer is who is looking: the user whose token the cookie holds.
type viewer struct {
	user     user
	signedIn bool
	token    string
}

func (d *dashboard) viewer(r *http.Request) viewer {
	c, err := r.Cookie(cookieName)
	if err != nil || len(c.Value) > base64.RawURLEncoding.EncodedLen(maxToken) {
		return viewer{}
	}
	raw, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil {
		return viewer{}
	}
	return d.viewerOf(string(raw))
}

// maxToken bounds a token the dashboard takes.
const maxToken = 4096

// viewerOf is the user whose token tok is, checked as the API checks it.
func (d *dashboard) viewerOf(tok string) viewer {
	if tok == "" {
		return viewer{}
	}
	u, ok := d.s.authenticate(&http.Request{Header: http.Header{"Authorization": {"Bearer " + tok}}})
	if !ok {
		return viewer{}
	}
	return viewer{user: u, signedIn: true, token: tok}
}

// csrf is v's form token.
func (d *dashboard) csrf(v viewer) string {
	if !v.signedIn {
		return ""
	}
	h := sha256.Sum256([]byte(v.token))
	m := hmac.New(sha256.New, d.csrfKey)
	m.Write(h[:])
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// errCSRF refuses a form post from another site or without its token.
var errCSRF = errors.New("the form is not from this dashboard (or is from before the service restarted): reload the page and try again")

// checkPost reads a form and refuses it unless it comes from this origin
// (Sec-Fetch-Site or Origin) and, for a signed-in user, carries their form
// token.
func (d *dashboard) checkPost(w http.ResponseWriter, r *http.Request, v viewer) error {
	if err := d.origin.Check(r); err != nil {
		return errCSRF
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		return fmt.Errorf("the form: %w", err)
	}
	if v.signedIn && subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(d.csrf(v))) != 1 {
		return errCSRF
	}
	return nil
}

// pageData is what every page's template gets.
type pageData struct {
	Title  string
	User   string
	CSRF   string
	Live   string // the page's live stream, if any
	Path   string
	Notice string
	Error  string
	Data   any
}

// render writes page name, complete, or an error page if it fails.
func (d *dashboard) render(w http.ResponseWriter, status int, name string, p pageData) {
	var buf bytes.Buffer
	if err := d.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		d.s.log.Error("dashboard: render", "page", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func (d *dashboard) message(w http.ResponseWriter, r *http.Request, status int, title, text string) {
	v := d.viewer(r)
	d.render(w, status, "message", pageData{Title: title, User: v.user.name, CSRF: d.csrf(v), Path: r.URL.EscapedPath(), Error: text})
}

// dashView is a page with live regions: its data, loaded anew for every
// render, and the fragments (each the id of its element) a live stream
// refreshes.
type dashView struct {
	path  string
	tmpl  string
	title func(*http.Request) string
	frags []string
	load  func(context.Context, *http.Request, viewer) (any, error)
}

func (d *dashboard) views() []*dashView {
	fixed := func(s string) func(*http.Request) string { return func(*http.Request) string { return s } }
	return []*dashView{
		{path: "/{$}", tmpl: "boards", title: fixed("Boards"), frags: []string{"boards-summary", "boards-pager", "boards-rows"},
			load: d.loadBoards},
		{path: "/boards/{id}", tmpl: "board", title: func(r *http.Request) string { return "Board " + r.PathValue("id") },
			frags: []string{"board-state", "board-log"}, load: d.loadBoard},
		{path: "/leases", tmpl: "leases", title: fixed("Leases"), frags: []string{"leases-rows"},
			load: d.loadLeases},
		{path: "/rollouts", tmpl: "rollouts", title: fixed("Rollouts"), frags: []string{"rollouts-rows"},
			load: d.loadRollouts},
		{path: "/rollouts/{id}", tmpl: "rollout", title: func(r *http.Request) string { return "Rollout " + r.PathValue("id") },
			frags: []string{"rollout-summary", "rollout-pager", "rollout-rows"}, load: d.loadRollout},
	}
}

// mayRead reports whether v may read the pages (a board's commands and
// console are for those signed in only: loadBoard and consoleStream).
func (d *dashboard) mayRead(v viewer) bool {
	return v.signedIn || d.cfg.PublicRead
}

func (d *dashboard) page(w http.ResponseWriter, r *http.Request, vw *dashView) {
	v := d.viewer(r)
	if !d.mayRead(v) {
		http.Redirect(w, r, "/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		return
	}
	notice := ""
	if a := r.URL.Query().Get("power"); a == "on" || a == "off" || a == "cycle" {
		notice = "Power " + a + ": done."
	}
	d.renderView(w, r, vw, v, r.URL.EscapedPath(), http.StatusOK, notice, "")
}

// renderView renders view vw of the page at at (its escaped path).
func (d *dashboard) renderView(w http.ResponseWriter, r *http.Request, vw *dashView, v viewer, at string, status int, notice, errText string) {
	data, err := vw.load(r.Context(), r, v)
	if err != nil {
		e := apiError(err)
		d.message(w, r, e.Status, vw.title(r), e.Message)
		return
	}
	// The live stream follows the page's query (its filter and page).
	live := "/live" + at
	if q := r.URL.RawQuery; q != "" && r.Method == http.MethodGet {
		live += "?" + q
	}
	d.render(w, status, vw.tmpl, pageData{Title: vw.title(r), User: v.user.name, CSRF: d.csrf(v),
		Live: live, Path: at, Notice: notice, Error: errText, Data: data})
}

func (d *dashboard) loadBoards(ctx context.Context, r *http.Request, v viewer) (any, error) {
	return d.s.dashboardBoards(r.URL.Query())
}

// boardData is a board's page's.
type boardData struct {
	Board    Board
	SignedIn bool
	// MayPower: the viewer may switch its power (it has a driver, and no
	// lease holds it but the viewer's).
	MayPower bool
	Commands []store.AuditEntry // its commands run through the service
	Events   []store.AuditEntry // everything the audit log has of it
	Console  string             // its console's tail
}

func (d *dashboard) loadBoard(ctx context.Context, r *http.Request, v viewer) (any, error) {
	b, err := d.boardView(ctx, r.PathValue("id"), v)
	if err != nil {
		return nil, err
	}
	data := boardData{Board: b, SignedIn: v.signedIn,
		MayPower: v.signedIn && b.Power && (b.Lease == "" || b.Holder == v.user.name)}
	if !v.signedIn {
		return data, nil
	}
	if data.Commands, err = d.s.Audit(ctx, store.AuditFilter{Board: b.ID, Action: "board.exec", Limit: auditShow}); err != nil {
		return nil, err
	}
	if data.Events, err = d.s.Audit(ctx, store.AuditFilter{Board: b.ID, Limit: auditShow}); err != nil {
		return nil, err
	}
	// The page shows the console's tail once; its live stream is its own.
	// Another's board's console that its owner does not give costs the
	// console, not the page.
	if b.Console && !strings.HasPrefix(r.URL.Path, "/live/") {
		data.Console, err = d.recentConsole(ctx, v, b.ID)
		if err != nil && (errors.Is(err, ErrOffline) || b.Owner != d.s.owner) {
			data.Console = "(" + err.Error() + ")"
		} else if err != nil {
			return nil, err
		}
	}
	return data, nil
}

func (d *dashboard) loadLeases(ctx context.Context, r *http.Request, v viewer) (any, error) {
	return d.s.Leases(ctx, endedLeases)
}

// rolloutRow is a rollout of the list, with how many boards are done.
type rolloutRow struct {
	store.Rollout
	Done int
}

func (d *dashboard) loadRollouts(ctx context.Context, r *http.Request, v viewer) (any, error) {
	rs, err := d.s.st.Rollouts(ctx, rolloutsShow)
	if err != nil {
		return nil, err
	}
	out := make([]rolloutRow, len(rs))
	for i, ro := range rs {
		out[i] = rolloutRow{ro, ro.Boards - ro.Summary[store.SummaryPending] - ro.Summary[store.SummaryRunning]}
	}
	return out, nil
}

// loadRollout reads one page of the rollout's boards, its state as the
// API shows it: with its parts on the other services, theirs too.
func (d *dashboard) loadRollout(ctx context.Context, r *http.Request, v viewer) (any, error) {
	data, err := rolloutPage(ctx, d.s.st, r.PathValue("id"), r.URL.Query())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, &APIError{Status: http.StatusNotFound, Reason: string(proto.ReasonNotFound), Message: "no rollout " + r.PathValue("id")}
	case errors.Is(err, store.ErrAmbiguous):
		return nil, &FieldError{"id", err.Error()}
	case err != nil:
		return nil, err
	}
	st, err := d.s.withParts(ctx, RolloutStatus{Rollout: data.Rollout})
	if err != nil {
		return nil, err
	}
	data.Rollout.State, data.Rollout.Updated, data.Parts = st.State, st.Updated, st.Parts
	data.MayStop = v.signedIn && stoppable(st) && st.Stop == ""
	data.MayRetry = v.signedIn && st.Stop == ""
	return data, nil
}

// rolloutAction stops a rollout, or tries one of its parts again, from
// its page's buttons, as the API's POST /rollouts/{id}/stop and
// /rollouts/{id}/parts/{owner}/retry do (and recorded the same way).
func (d *dashboard) rolloutAction(w http.ResponseWriter, r *http.Request) {
	v := d.viewer(r)
	if !v.signedIn {
		d.message(w, r, http.StatusUnauthorized, "Sign in", "Sign in to stop a rollout or try a part again.")
		return
	}
	if err := d.checkPost(w, r, v); err != nil {
		d.s.log.Warn("dashboard: form refused", "path", r.URL.Path, "user", v.user.name, "err", err)
		d.message(w, r, http.StatusForbidden, "Refused", err.Error())
		return
	}
	id, owner := r.PathValue("id"), r.PathValue("owner")
	action, detail := "rollout.stop", "rollout "+id
	var (
		st  RolloutStatus
		err error
	)
	if owner == "" {
		st, err = d.s.StopRollout(r.Context(), v.user, id)
	} else {
		action, detail = "rollout.retry_part", fmt.Sprintf("rollout %s: its part on %s", id, owner)
		st, err = d.s.RetryPart(r.Context(), v.user, id, owner)
	}
	d.s.journal.audit(store.AuditEntry{User: v.user.name, Action: action, Result: result(err), Detail: detail + " (dashboard)"})
	if err != nil {
		e := apiError(err)
		d.message(w, r, e.Status, "Rollout "+id, e.Message)
		return
	}
	http.Redirect(w, r, "/rollouts/"+url.PathEscape(st.ID), http.StatusSeeOther)
}

// recentConsole is the end of board id's recent console text.
func (d *dashboard) recentConsole(ctx context.Context, v viewer, id string) (string, error) {
	var buf tailBuffer
	if err := d.console(ctx, v, id, time.Now().Add(-consoleWindow), false, &buf); err != nil {
		return "", err
	}
	return string(buf.b), nil
}

// tail is the end of a console's text the dashboard shows.
func tail(b []byte) []byte {
	if len(b) > consoleTail {
		return b[len(b)-consoleTail:]
	}
	return b
}

// power switches a board's power from its page's buttons, as the API's
// POST /boards/{id}/power does (and recorded the same way), on any board
// of the inventory (dashboard_peer.go).
func (d *dashboard) power(w http.ResponseWriter, r *http.Request) {
	v := d.viewer(r)
	if !v.signedIn {
		d.message(w, r, http.StatusUnauthorized, "Sign in", "Sign in to switch a board's power.")
		return
	}
	if err := d.checkPost(w, r, v); err != nil {
		d.s.log.Warn("dashboard: form refused", "path", r.URL.Path, "user", v.user.name, "err", err)
		d.message(w, r, http.StatusForbidden, "Refused", err.Error())
		return
	}
	id, action := r.PathValue("id"), r.PostForm.Get("action")
	if action != "on" && action != "off" && action != "cycle" {
		d.message(w, r, http.StatusBadRequest, "Power", "action must be on, off or cycle")
		return
	}
	b, err := d.s.Board(id)
	if err == nil {
		lease := ""
		if b.Holder == v.user.name {
			lease = b.Lease
		}
		err = d.powerBoard(r.Context(), v, id, lease, action)
	}
	if err != nil {
		e := apiError(err)
		d.renderView(w, r, d.board, v, "/boards/"+url.PathEscape(id), e.Status, "", "power "+action+": "+e.Message)
		return
	}
	http.Redirect(w, r, "/boards/"+url.PathEscape(id)+"?power="+action, http.StatusSeeOther)
}

func (d *dashboard) signinForm(w http.ResponseWriter, r *http.Request) {
	d.render(w, http.StatusOK, "signin", pageData{Title: "Sign in", Path: r.URL.Path, Data: safeNext(r.URL.Query().Get("next"))})
}

// signin takes a user's API token once and keeps it in a cookie the
// page's scripts cannot read and other sites' requests do not carry.
func (d *dashboard) signin(w http.ResponseWriter, r *http.Request) {
	if err := d.checkPost(w, r, viewer{}); err != nil {
		d.message(w, r, http.StatusForbidden, "Refused", err.Error())
		return
	}
	if wait := d.signins.wait(r); wait > 0 {
		d.s.log.Warn("dashboard: sign-in refused: too many failed ones", "from", r.RemoteAddr, "retry_after", wait)
		limited(w, wait)
		return
	}
	next := safeNext(r.PostForm.Get("next"))
	tok := strings.TrimSpace(r.PostForm.Get("token"))
	v := viewer{}
	if len(tok) <= maxToken {
		v = d.viewerOf(tok)
	}
	if !v.signedIn {
		d.signins.failed(r)
		d.s.log.Warn("dashboard: sign-in refused", "from", r.RemoteAddr)
		d.render(w, http.StatusUnauthorized, "signin", pageData{Title: "Sign in", Path: r.URL.Path,
			Error: "No user has that token.", Data: next})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: base64.RawURLEncoding.EncodeToString([]byte(tok)), Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	d.s.journal.audit(store.AuditEntry{User: v.user.name, Action: "dashboard.signin", Result: "ok", Detail: r.RemoteAddr})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (d *dashboard) signout(w http.ResponseWriter, r *http.Request) {
	v := d.viewer(r)
	if err := d.checkPost(w, r, v); err != nil {
		d.message(w, r, http.StatusForbidden, "Refused", err.Error())
		return
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	if n := d.sessions.end(v); n > 0 {
		d.s.log.Info("dashboard: signed out, live streams ended", "user", v.user.name, "streams", n)
	}
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
}

// safeNext is where to go after signing in: a path of this site only,
// and its query (a page's filter).
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/"
	}
	p, q, _ := strings.Cut(next, "?")
	next = path.Clean(p)
	if v, err := url.ParseQuery(q); err == nil && len(v) > 0 {
		next += "?" + v.Encode()
	}
	return next
}

// ago says how long ago t was, coarsely.
func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Second:
		return "now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.UTC().Format("2006-01-02")
}

func utc(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// size is a byte count for people: 1.5 MiB.
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func percent(n, of int) int {
	if of <= 0 {
		return 0
	}
	return 100 * n / of
}
