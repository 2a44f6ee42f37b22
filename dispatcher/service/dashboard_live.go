package service

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// The dashboard's live streams are Server-Sent Events: a page's stream
// sends its live regions rendered anew (by the page's own templates) each
// time they change, a console's stream its text as it comes. Each stream
// holds a slot of its user's bound, and ends with the service.

// liveSlot takes one live stream of v's bound (a user, or the remote
// address of a visitor who has not signed in); release gives it back.
func (d *dashboard) liveSlot(r *http.Request, v viewer) (release func(), ok bool) {
	key := "user:" + v.user.name
	if !v.signedIn {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		key = "addr:" + host
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.nLive >= maxLive || d.live[key] >= maxLivePerUser {
		return nil, false
	}
	d.live[key]++
	d.nLive++
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.live[key]--; d.live[key] == 0 {
			delete(d.live, key)
		}
		d.nLive--
	}, true
}

// sse writes one stream's events.
type sse struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

// event sends one event; data is JSON, so it holds no newline.
func (e *sse) event(name string, data []byte) error {
	if _, err := io.WriteString(e.w, "event: "+name+"\ndata: "); err != nil {
		return err
	}
	if _, err := e.w.Write(append(data, '\n', '\n')); err != nil {
		return err
	}
	return e.rc.Flush()
}

// open starts a stream for v, or refuses it: with its answer to refused,
// the error of a check before it (a board that does not exist), or past
// v's bound (429, which a browser's EventSource does not retry). done
// ends it.
func (d *dashboard) open(w http.ResponseWriter, r *http.Request, v viewer, refused error) (es *sse, ctx context.Context, done func(), ok bool) {
	if refused != nil {
		e := apiError(refused)
		http.Error(w, e.Message, e.Status)
		return nil, nil, nil, false
	}
	release, ok := d.liveSlot(r, v)
	if !ok {
		w.Header().Set("Retry-After", "10")
		http.Error(w, "too many live streams", http.StatusTooManyRequests)
		return nil, nil, nil, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), liveMaxAge)
	forget := d.sessions.add(v, cancel)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no") // a proxy in front must not hold the events back
	w.WriteHeader(http.StatusOK)
	es = &sse{w: w, rc: http.NewResponseController(w)}
	// The browser opens an ended stream again after 3s.
	_, _ = io.WriteString(w, "retry: 3000\n\n")
	_ = es.rc.Flush()
	return es, ctx, func() { forget(); cancel(); release() }, true
}

// fragment is a live region rendered anew: the id of its element and its
// inner HTML.
type fragment struct {
	ID   string `json:"id"`
	HTML string `json:"html"`
}

// stream sends view vw's live regions whenever they change: at once when
// a board's state or a lease changes, else every liveTick.
func (d *dashboard) stream(w http.ResponseWriter, r *http.Request, vw *dashView) {
	v := d.viewer(r)
	if !d.mayRead(v) {
		http.Error(w, "sign in first", http.StatusUnauthorized)
		return
	}
	// A page that does not exist is refused before the stream starts.
	_, err := vw.load(r.Context(), r, v)
	es, ctx, done, ok := d.open(w, r, v, err)
	if !ok {
		return
	}
	defer done()
	tick := time.NewTicker(liveTick)
	defer tick.Stop()
	sent := map[string]string{}
	for {
		start := time.Now()
		d.s.mu.Lock()
		changed := d.s.changed
		d.s.mu.Unlock()
		frags, err := d.liveRound(ctx, r, v, vw, sent)
		if err != nil {
			if ctx.Err() == nil {
				d.s.log.Warn("dashboard: live view", "path", r.URL.Path, "err", err)
			}
			return
		}
		for _, f := range frags {
			msg, err := json.Marshal(f)
			if err != nil || es.event("fragment", msg) != nil {
				return
			}
		}
		cost := time.Since(start)
		select {
		case <-ctx.Done():
			return
		case <-d.s.closing:
			return
		case <-changed:
		case <-tick.C:
		}
		// A burst of changes (a lease granted many boards) is one render,
		// and a page costly to render (thousands of boards) takes at most
		// a tenth of the time of its stream.
		t := time.NewTimer(max(liveCoalesce, 10*cost))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-d.s.closing:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// liveRound renders view vw's live regions for v again and returns those
// that differ from what sent holds (the last sent of each), which it
// updates.
func (d *dashboard) liveRound(ctx context.Context, r *http.Request, v viewer, vw *dashView, sent map[string]string) ([]fragment, error) {
	data, err := vw.load(ctx, r, v)
	if err != nil {
		return nil, err
	}
	p := pageData{User: v.user.name, CSRF: d.csrf(v), Data: data}
	var out []fragment
	var buf bytes.Buffer
	for _, id := range vw.frags {
		buf.Reset()
		if err := d.pages[vw.tmpl].ExecuteTemplate(&buf, id, p); err != nil {
			return nil, fmt.Errorf("render fragment %s: %w", id, err)
		}
		if sent[id] == string(buf.Bytes()) { // compared without a copy
			continue
		}
		sent[id] = buf.String()
		out = append(out, fragment{ID: id, HTML: sent[id]})
	}
	return out, nil
}

// consoleStream sends a board's console: a reset, its recent tail (what
// the page shows), then its text as it comes.
func (d *dashboard) consoleStream(w http.ResponseWriter, r *http.Request) {
	v := d.viewer(r)
	if !v.signedIn {
		http.Error(w, "sign in first", http.StatusUnauthorized)
		return
	}
	b, err := d.s.Board(r.PathValue("id"))
	if err == nil && !b.Console {
		err = ErrNoConsole
	}
	if err == nil { // an owner that vanished refuses the stream before it starts
		_, _, err = d.s.ownerClient(b.ID, v.user)
	}
	es, ctx, done, ok := d.open(w, r, v, err)
	if !ok {
		return
	}
	defer done()
	if es.event("reset", []byte(`""`)) != nil {
		return
	}
	err = d.console(ctx, v, b.ID, time.Now().Add(-consoleWindow), true, &consoleEvents{es: es})
	if err != nil && ctx.Err() == nil {
		d.s.log.Warn("dashboard: console stream", "board", b.ID, "err", err)
	}
}

// consoleEvents writes console text as events, each a JSON string (bytes
// that are not UTF-8 become U+FFFD); the first, the recent record, only
// its tail.
type consoleEvents struct {
	es      *sse
	started bool
}

func (c *consoleEvents) Write(p []byte) (int, error) {
	q := p
	if !c.started {
		q, c.started = tail(p), true
	}
	msg, err := json.Marshal(string(q))
	if err != nil {
		return 0, err
	}
	if err := c.es.event("text", msg); err != nil {
		return 0, err
	}
	return len(p), nil
}
