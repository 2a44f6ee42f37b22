package service

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/proto"
)

// Client is the typed client of the service's API. It is safe for
// concurrent use.
type Client struct {
	base     string
	token    string
	http     *http.Client
	progress func(sent, total int64) // of uploads; nil: none
	peerUser string                  // a service's client for this user (PeerUserHeader)
}

// maxResponse bounds a JSON response read by the client; maxFrame one
// line of an exec's output.
const (
	maxResponse = 64 << 20
	maxFrame    = 1 << 20
)

// ErrBadServer is wrapped by the error of a server URL that cannot be
// used.
var ErrBadServer = errors.New("bad server URL")

// NewClient returns a client of the service at server that authenticates
// with token: https://HOST:PORT, whose certificate roots verifies (nil:
// the system's), or http:// on a loopback address only, since the token
// would otherwise cross the network in the clear.
func NewClient(server, token string, roots *x509.CertPool) (*Client, error) {
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w %q: want https://HOST:PORT (or http:// on loopback)", ErrBadServer, server)
	}
	if u.Scheme == "http" && !loopbackHost(u.Hostname()) {
		return nil, fmt.Errorf("%w %q: plain http would send the token in the clear: use https://", ErrBadServer, server)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return &Client{base: strings.TrimSuffix(u.String(), "/"), token: token, http: &http.Client{Transport: tr}}, nil
}

// DialWith makes the client's connections with dial (from another
// network namespace, say); call it before the client's first request.
func (c *Client) DialWith(dial func(ctx context.Context, network, addr string) (net.Conn, error)) {
	c.http.Transport.(*http.Transport).DialContext = dial
}

// loopbackHost reports whether host (a name or an address) is this
// machine's loopback.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// LoopbackListen reports whether addr (HOST:PORT) listens on loopback
// only: the one place the API may be served without TLS.
func LoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	return err == nil && loopbackHost(host)
}

// do sends a request with a JSON body (nil: none) and returns the
// response of a 2xx status; any other is its *APIError.
func (c *Client) do(ctx context.Context, method, path, lease string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		j, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.send(req, lease)
}

// send sends req, authenticated, under lease (or none), and returns the
// response of a 2xx status; any other is its *APIError.
func (c *Client) send(req *http.Request, lease string) (*http.Response, error) {
	method, path := req.Method, strings.TrimPrefix(req.URL.String(), c.base)
	req.Header.Set("Authorization", "Bearer "+c.token)
	if c.peerUser != "" {
		req.Header.Set(PeerUserHeader, c.peerUser)
	}
	if lease != "" {
		req.Header.Set(LeaseHeader, lease)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	var e struct {
		Error *APIError `json:"error"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxFrame))
	if json.Unmarshal(raw, &e) != nil || e.Error == nil {
		return nil, &APIError{Status: resp.StatusCode, Reason: ReasonInternal,
			Message: fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(raw))}
	}
	return nil, e.Error
}

// call is do with a JSON result decoded into out (nil: discarded).
func (c *Client) call(ctx context.Context, method, path, lease string, body, out any) error {
	resp, err := c.do(ctx, method, path, lease, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(out); err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	return nil
}

// Boards lists the inventory.
func (c *Client) Boards(ctx context.Context) ([]Board, error) {
	var out struct {
		Boards []Board `json:"boards"`
	}
	err := c.call(ctx, "GET", "/api/v1/boards", "", nil, &out)
	return out.Boards, err
}

// Board returns one board.
func (c *Client) Board(ctx context.Context, id string) (Board, error) {
	var b Board
	err := c.call(ctx, "GET", "/api/v1/boards/"+url.PathEscape(id), "", nil, &b)
	return b, err
}

// SetMaintenance takes a board out of the lab or puts it back.
func (c *Client) SetMaintenance(ctx context.Context, id string, r MaintenanceRequest) (Board, error) {
	var b Board
	err := c.call(ctx, "POST", "/api/v1/boards/"+url.PathEscape(id)+"/maintenance", "", r, &b)
	return b, err
}

// ReleaseQuarantine puts a quarantined board back.
func (c *Client) ReleaseQuarantine(ctx context.Context, id string) (Board, error) {
	var b Board
	err := c.call(ctx, "POST", "/api/v1/boards/"+url.PathEscape(id)+"/release-quarantine", "", nil, &b)
	return b, err
}

// Power switches a board's power ("on", "off", "cycle") under lease (or
// none).
func (c *Client) Power(ctx context.Context, id, lease, action string) error {
	return c.call(ctx, "POST", "/api/v1/boards/"+url.PathEscape(id)+"/power", lease, PowerRequest{Action: action}, nil)
}

// Exec runs a command on a board under lease (or none), copying its
// output to stdout and stderr (nil: discarded) as it comes.
func (c *Client) Exec(ctx context.Context, id, lease string, r ExecRequest, stdout, stderr io.Writer) (ExecOutcome, error) {
	resp, err := c.do(ctx, "POST", "/api/v1/boards/"+url.PathEscape(id)+"/exec", lease, r)
	if err != nil {
		return ExecOutcome{}, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxFrame)
	for sc.Scan() {
		var f ExecFrame
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return ExecOutcome{}, fmt.Errorf("exec: a bad frame: %w", err)
		}
		switch {
		case f.Error != nil:
			return ExecOutcome{}, f.Error
		case f.Outcome != nil:
			return *f.Outcome, nil
		}
		for _, o := range []struct {
			w io.Writer
			p []byte
		}{{stdout, f.Stdout}, {stderr, f.Stderr}} {
			if o.w != nil && len(o.p) > 0 {
				if _, err := o.w.Write(o.p); err != nil {
					return ExecOutcome{}, err
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return ExecOutcome{}, fmt.Errorf("exec: %w", err)
	}
	return ExecOutcome{}, fmt.Errorf("exec: the service ended the answer without the command's outcome: %w", io.ErrUnexpectedEOF)
}

// Console writes a board's recorded console text since since ("5m", or
// an RFC 3339 time; "" all kept) to w and, with follow, what comes after
// it, until ctx ends.
func (c *Client) Console(ctx context.Context, id, since string, follow bool, w io.Writer) error {
	q := url.Values{}
	if since != "" {
		q.Set("since", since)
	}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.do(ctx, "GET", "/api/v1/boards/"+url.PathEscape(id)+"/console?"+q.Encode(), "", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if follow && ctx.Err() != nil {
		return nil // the caller ended it
	}
	return err
}

// Acquire asks for a lease; it comes back active, or waiting in the queue
// (see WaitGranted).
func (c *Client) Acquire(ctx context.Context, r AcquireRequest) (Lease, error) {
	var l Lease
	err := c.call(ctx, "POST", "/api/v1/leases", "", r, &l)
	return l, err
}

// Lease returns a lease.
func (c *Client) Lease(ctx context.Context, id string) (Lease, error) {
	return c.poll(ctx, id, 0, 0)
}

// poll returns a lease once it is no longer waiting at position known (0:
// any), or after wait.
func (c *Client) poll(ctx context.Context, id string, known int, wait time.Duration) (Lease, error) {
	var l Lease
	path := "/api/v1/leases/" + url.PathEscape(id)
	if wait > 0 {
		path += "?wait_ms=" + strconv.FormatInt(wait.Milliseconds(), 10) + "&position=" + strconv.Itoa(known)
	}
	err := c.call(ctx, "GET", path, "", nil, &l)
	return l, err
}

// WaitGranted waits until lease l is granted or ends, calling progress
// with each change while it waits. Its polls keep the waiting lease in
// the queue: each is a renewal, at least every third of its TTL.
func (c *Client) WaitGranted(ctx context.Context, l Lease, progress func(Lease)) (Lease, error) {
	for l.State == store.LeaseWaiting {
		if progress != nil {
			progress(l)
		}
		var err error
		if l, err = c.poll(ctx, l.ID, l.Position, max(time.Duration(l.TTLMs)*time.Millisecond/3, time.Second)); err != nil {
			return l, err
		}
	}
	if l.State != store.LeaseActive {
		return l, fmt.Errorf("lease %s: %w: %s (%s)", l.ID, ErrLeaseEnded, l.State, l.EndReason)
	}
	return l, nil
}

// Renew renews a lease.
func (c *Client) Renew(ctx context.Context, id string) (Lease, error) {
	var l Lease
	err := c.call(ctx, "POST", "/api/v1/leases/"+url.PathEscape(id)+"/renew", "", RenewRequest{}, &l)
	return l, err
}

// Release ends a lease.
func (c *Client) Release(ctx context.Context, id string) (Lease, error) {
	var l Lease
	err := c.call(ctx, "DELETE", "/api/v1/leases/"+url.PathEscape(id), "", nil, &l)
	return l, err
}

// Leases lists the open leases and up to ended of the latest ended ones.
func (c *Client) Leases(ctx context.Context, ended int) ([]Lease, error) {
	var out struct {
		Leases []Lease `json:"leases"`
	}
	err := c.call(ctx, "GET", "/api/v1/leases?ended="+strconv.Itoa(ended), "", nil, &out)
	return out.Leases, err
}

// Audit returns the audit entries f matches, newest first.
func (c *Client) Audit(ctx context.Context, f store.AuditFilter) ([]store.AuditEntry, error) {
	q := url.Values{}
	for k, v := range map[string]string{"user": f.User, "board": f.Board, "lease": f.Lease, "action": f.Action} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.Format(time.RFC3339Nano))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out struct {
		Entries []store.AuditEntry `json:"entries"`
	}
	err := c.call(ctx, "GET", "/api/v1/audit?"+q.Encode(), "", nil, &out)
	return out.Entries, err
}

// WithUploadProgress returns a client like c whose uploads (Push, OTA,
// StartRollout) tell progress the file's bytes sent so far and its size.
func (c *Client) WithUploadProgress(progress func(sent, total int64)) *Client {
	c2 := *c
	c2.progress = progress
	return &c2
}

// upload posts spec and the file at local as an upload (multipart: the
// spec part, then the file part), streamed from the file as it is sent.
func (c *Client) upload(ctx context.Context, path, lease string, spec any, local string) (*http.Response, error) {
	f, err := os.Open(local)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return c.uploadFrom(ctx, path, lease, spec, filepath.Base(local), f, st.Size())
}

// uploadFrom is upload of the size bytes src yields, as the file name.
func (c *Client) uploadFrom(ctx context.Context, path, lease string, spec any, name string, src io.Reader, size int64) (*http.Response, error) {
	if c.progress != nil {
		src = &counting{r: src, total: size, progress: c.progress}
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := func() error {
			sw, err := mw.CreateFormField(UploadSpec)
			if err != nil {
				return err
			}
			if err := json.NewEncoder(sw).Encode(spec); err != nil {
				return err
			}
			fw, err := mw.CreateFormFile(UploadFile, name)
			if err != nil {
				return err
			}
			if _, err := io.Copy(fw, src); err != nil {
				return err
			}
			return mw.Close()
		}()
		pw.CloseWithError(err)
	}()
	req, err := http.NewRequestWithContext(ctx, "POST", c.base+path, pr)
	if err != nil {
		pr.Close()
		return nil, err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := c.send(req, lease)
	pr.CloseWithError(errors.New("the service answered")) // ends the copy if the service answered before reading it all
	return resp, err
}

// counting is a file's reader that tells progress how far it got.
type counting struct {
	r        io.Reader
	n, total int64
	progress func(sent, total int64)
}

func (c *counting) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.progress(c.n, c.total)
	return n, err
}

func boardPath(id, what string) string { return "/api/v1/boards/" + url.PathEscape(id) + "/" + what }

// Push pushes the local file to a board under lease (or none), as r says
// (r.Mode and r.ModTime: the file's own when zero). The file is hashed
// first: the service streams it on to the board, which checks it.
func (c *Client) Push(ctx context.Context, id, lease, local string, r PushRequest) (proto.FileResult, error) {
	st, err := os.Stat(local)
	if err != nil {
		return proto.FileResult{}, err
	}
	if r.Mode == 0 {
		r.Mode = uint32(st.Mode().Perm())
	}
	if r.ModTime.IsZero() {
		r.ModTime = st.ModTime()
	}
	if r.Size, r.SHA256, err = dispatcher.HashFile(ctx, local); err != nil {
		return proto.FileResult{}, err
	}
	resp, err := c.upload(ctx, boardPath(id, "files"), lease, r, local)
	if err != nil {
		return proto.FileResult{}, err
	}
	defer resp.Body.Close()
	var res proto.FileResult
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(&res); err != nil {
		return res, fmt.Errorf("push: reading the answer: %w", err)
	}
	return res, nil
}

// Pull copies the file remote from a board under lease (or none) to w,
// once its size, mode and mtime are known (given to start, which returns
// w). The bytes w got are checked against the board's sha256: a mismatch
// wraps dispatcher.ErrChecksum.
func (c *Client) Pull(ctx context.Context, id, lease, remote string, start func(proto.FileInfo) (io.Writer, error)) (proto.FileResult, error) {
	resp, err := c.do(ctx, "GET", boardPath(id, "files")+"?path="+url.QueryEscape(remote), lease, nil)
	if err != nil {
		return proto.FileResult{}, err
	}
	defer resp.Body.Close()
	var info proto.FileInfo
	if err := json.Unmarshal([]byte(resp.Header.Get(PullHeader)), &info); err != nil {
		return proto.FileResult{}, fmt.Errorf("pull: the service sent no %s: %w", PullHeader, err)
	}
	w, err := start(info)
	if err != nil {
		return proto.FileResult{}, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), resp.Body)
	if err != nil {
		return proto.FileResult{}, fmt.Errorf("pull: %w", err)
	}
	if e := resp.Trailer.Get(PullError); e != "" {
		ae := &APIError{}
		if err := json.Unmarshal([]byte(e), ae); err != nil {
			return proto.FileResult{}, fmt.Errorf("pull: a bad %s trailer: %w", PullError, err)
		}
		return proto.FileResult{}, ae
	}
	var res proto.FileResult
	if err := json.Unmarshal([]byte(resp.Trailer.Get(PullResult)), &res); err != nil {
		return res, fmt.Errorf("pull: the service ended the answer without the result: %w", io.ErrUnexpectedEOF)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != res.SHA256 || n != res.Size {
		return res, fmt.Errorf("%w: %s: received %d bytes hashing %s, the board sent %d hashing %s",
			dispatcher.ErrChecksum, remote, n, got, res.Size, res.SHA256)
	}
	return res, nil
}

// Reboot reboots a board under lease (or none); with r.Wait it returns
// once the board is back with a new boot id.
func (c *Client) Reboot(ctx context.Context, id, lease string, r RebootRequest) (dispatcher.Rebooted, error) {
	var out dispatcher.Rebooted
	err := c.call(ctx, "POST", boardPath(id, "reboot"), lease, r, &out)
	return out, err
}

// OTA updates a board under lease (or none) to the image file img,
// calling progress (if set) with each step: first OTAUpload steps while
// the image goes to the service. A rollback or a failure on the board is
// a *dispatcher.OTAError, as dispatcher.Client.Update returns it.
func (c *Client) OTA(ctx context.Context, id, lease, img string, r OTARequest, progress func(dispatcher.OTAProgress)) (dispatcher.OTAReport, error) {
	up := c
	if progress != nil {
		up = c.WithUploadProgress(func(n, total int64) { progress(dispatcher.OTAProgress{Phase: OTAUpload, Sent: n, ToSend: total}) })
	}
	resp, err := up.upload(ctx, boardPath(id, "ota"), lease, r, img)
	if err != nil {
		return dispatcher.OTAReport{}, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxFrame)
	for sc.Scan() {
		var f OTAFrame
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return dispatcher.OTAReport{}, fmt.Errorf("ota: a bad frame: %w", err)
		}
		if f.Step != nil {
			if progress != nil {
				progress(f.Step.Progress())
			}
			continue
		}
		var rep dispatcher.OTAReport
		if f.Report != nil {
			rep = *f.Report
		}
		switch {
		case f.Failure != nil:
			return rep, &dispatcher.OTAError{Result: f.Failure.Result, Phase: f.Failure.Phase, Reason: f.Failure.Reason, Halted: f.Failure.Halted}
		case f.Error != nil:
			return rep, f.Error
		}
		return rep, nil
	}
	if err := sc.Err(); err != nil {
		return dispatcher.OTAReport{}, fmt.Errorf("ota: %w", err)
	}
	return dispatcher.OTAReport{}, fmt.Errorf("ota: the service ended the answer without the update's end: %w", io.ErrUnexpectedEOF)
}

// StartRollout starts a rollout of the image file img in the service, as r
// says; it runs there, whatever becomes of this client.
func (c *Client) StartRollout(ctx context.Context, img string, r RolloutRequest) (RolloutStatus, error) {
	resp, err := c.upload(ctx, "/api/v1/rollouts", "", r, img)
	if err != nil {
		return RolloutStatus{}, err
	}
	defer resp.Body.Close()
	var st RolloutStatus
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(&st); err != nil {
		return st, fmt.Errorf("rollout: reading the answer: %w", err)
	}
	return st, nil
}

// Rollouts lists the newest limit rollouts, newest first.
func (c *Client) Rollouts(ctx context.Context, limit int) ([]store.Rollout, error) {
	var out struct {
		Rollouts []store.Rollout `json:"rollouts"`
	}
	err := c.call(ctx, "GET", "/api/v1/rollouts?limit="+strconv.Itoa(limit), "", nil, &out)
	return out.Rollouts, err
}

// Rollout returns a rollout with its boards.
func (c *Client) Rollout(ctx context.Context, id string) (RolloutStatus, error) {
	return c.WaitRollout(ctx, id, time.Time{}, 0)
}

// WaitRollout returns a rollout once it changed since updated (its Updated
// as last seen), once it is over, or after wait.
func (c *Client) WaitRollout(ctx context.Context, id string, updated time.Time, wait time.Duration) (RolloutStatus, error) {
	path := "/api/v1/rollouts/" + url.PathEscape(id)
	if wait > 0 {
		path += "?wait_ms=" + strconv.FormatInt(wait.Milliseconds(), 10) + "&updated=" + url.QueryEscape(updated.Format(time.RFC3339Nano))
	}
	var st RolloutStatus
	err := c.call(ctx, "GET", path, "", nil, &st)
	return st, err
}

// StopRollout stops a rollout (its id or a unique prefix) and returns its
// status at once: it reads running until the boards under way reached
// their safe points (boards that already switched to the new slot are not
// rolled back). A rollout stopped already is answered as it is; one over
// otherwise is refused with an *APIError of Status 409 (ReasonState).
func (c *Client) StopRollout(ctx context.Context, id string) (RolloutStatus, error) {
	var st RolloutStatus
	err := c.call(ctx, "POST", "/api/v1/rollouts/"+url.PathEscape(id)+"/stop", "", nil, &st)
	return st, err
}

// RetryPart tries again a rollout's part on service owner that was given
// up, and returns the rollout's status; a part in any other state is
// refused with an *APIError of Status 409 (ReasonState).
func (c *Client) RetryPart(ctx context.Context, id, owner string) (RolloutStatus, error) {
	var st RolloutStatus
	err := c.call(ctx, "POST", "/api/v1/rollouts/"+url.PathEscape(id)+"/parts/"+url.PathEscape(owner)+"/retry", "", nil, &st)
	return st, err
}
