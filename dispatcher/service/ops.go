package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/proto"
)

// DefaultMaxUpload bounds a file pushed or an image sent through the API
// unless Options.MaxUpload says otherwise.
const DefaultMaxUpload = 8 << 30

// Parts of an upload (multipart/form-data): the request's JSON first,
// then the file.
const (
	UploadSpec = "spec"
	UploadFile = "file"
)

// uploadSlack is what an upload's body holds besides its file: the spec
// part and the multipart framing.
const uploadSlack = maxBody + 64<<10

// bodyLimit bounds the body of a request to rt: an upload's file may be
// as large as Options.MaxUpload, any other body maxBody.
func (s *Service) bodyLimit(rt route) int64 {
	switch {
	case rt.method != "POST":
	case strings.HasSuffix(rt.path, "/files/tree"):
		return s.opts.MaxUpload + uploadSlack + MaxTreeEntries*treeEntrySlack
	case strings.HasSuffix(rt.path, "/files") || strings.HasSuffix(rt.path, "/ota") || rt.path == "/api/v1/rollouts":
		return s.opts.MaxUpload + uploadSlack
	}
	return maxBody
}

// treeEntrySlack is what a tree's tar holds per entry besides its bytes:
// a header, a PAX header with a long name, their padding.
const treeEntrySlack = 10 << 10

// dataDir is the directory beside the database that holds the service's
// files: spooled uploads, the images of rollouts.
func (s *Service) dataDir(name string) (string, error) {
	dir := filepath.Join(s.st.Dir(), name)
	return dir, os.MkdirAll(dir, 0o700)
}

// uploadPart reads an upload's spec part into spec (validated) and
// returns its file part, not read yet.
func uploadPart(r *http.Request, spec any) (*multipart.Part, error) {
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, &FieldError{"body", "want multipart/form-data: a part " + UploadSpec + " (JSON), then a part " + UploadFile}
	}
	p, err := mr.NextPart()
	if err != nil || p.FormName() != UploadSpec {
		return nil, &FieldError{"body", "the first part must be " + UploadSpec}
	}
	raw, err := io.ReadAll(io.LimitReader(p, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading the %s part: %w", UploadSpec, err)
	}
	if len(raw) > maxBody {
		return nil, tooLarge(fmt.Sprintf("the %s part is over %d bytes", UploadSpec, maxBody))
	}
	if perr := proto.DecodeParams(raw, spec); perr != nil {
		return nil, perr
	}
	if p, err = mr.NextPart(); err != nil || p.FormName() != UploadFile {
		return nil, &FieldError{"body", "the second part must be " + UploadFile}
	}
	return p, nil
}

// readUpload reads an upload: its spec part into spec (validated), and
// its file part into a new file of the spool directory, whose path it
// returns (the caller removes it). The file is copied as it comes, never
// held in memory, and refused beyond Options.MaxUpload.
func (s *Service) readUpload(r *http.Request, spec any) (string, error) {
	p, err := uploadPart(r, spec)
	if err != nil {
		return "", err
	}
	dir, err := s.dataDir("spool")
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, fmt.Sprintf("upload-%d-", os.Getpid()))
	if err != nil {
		return "", err
	}
	n, err := io.Copy(f, io.LimitReader(p, s.opts.MaxUpload+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = tooLarge(err.Error())
		}
	case n > s.opts.MaxUpload:
		err = tooLarge(fmt.Sprintf("the file is over the service's limit of %d bytes", s.opts.MaxUpload))
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// MaxUploadsPerUser bounds the uploads (pushes, trees, OTA images,
// rollout images) one user sends at once; one more is refused (busy).
const MaxUploadsPerUser = 4

// ErrTooManyUploads refuses an upload past MaxUploadsPerUser.
var ErrTooManyUploads = fmt.Errorf("%d uploads of this user are under way already: wait for one to end", MaxUploadsPerUser)

// uploadSlots counts the uploads under way by user.
type uploadSlots struct {
	mu  sync.Mutex
	per map[string]int
}

// take takes one of who's upload slots when upload says the request is
// one; release gives it back.
func (u *uploadSlots) take(who string, upload bool) (release func(), err error) {
	if !upload {
		return func() {}, nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.per[who] >= MaxUploadsPerUser {
		return nil, ErrTooManyUploads
	}
	if u.per == nil {
		u.per = map[string]int{}
	}
	u.per[who]++
	return func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.per[who]--; u.per[who] == 0 {
			delete(u.per, who)
		}
	}, nil
}

// cleanSpool removes what a service killed mid-upload left in spool/:
// each file whose maker, the process its name names, no longer runs.
// Another service's upload under way (one sharing the directory) stays.
func (s *Service) cleanSpool() {
	dir := filepath.Join(s.st.Dir(), "spool")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return // none yet
	}
	removed := 0
	for _, e := range ents {
		rest, _ := strings.CutPrefix(e.Name(), "upload-")
		pidText, _, _ := strings.Cut(rest, "-")
		if pid, err := strconv.Atoi(pidText); err == nil && pid > 0 && alive(pid) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			s.log.Warn("spool: leftover not removed", "file", e.Name(), "err", err)
			continue
		}
		removed++
	}
	if removed > 0 {
		s.log.Info("spool: removed the uploads a stopped service left", "files", removed)
	}
}

// alive reports whether process pid runs (signal 0 reaches it, or it is
// another user's).
func alive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

func tooLarge(msg string) *APIError {
	return &APIError{Status: http.StatusRequestEntityTooLarge, Reason: string(proto.ReasonTooLarge), Message: msg}
}

// session checks that who may act on board id under lease and returns the
// board and its address.
func (s *Service) session(ctx context.Context, who user, id, lease string) (*board, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.sessionLocked(ctx, who, id, lease)
	if err != nil {
		return nil, "", err
	}
	return b, b.address, nil
}

func (s *Service) sessionLocked(ctx context.Context, who user, id, lease string) (*board, error) {
	b := s.boards[id]
	if b == nil {
		return nil, fmt.Errorf("board %s: %w", id, ErrNoSuchBoard)
	}
	if err := s.accessLocked(ctx, who, b, lease); err != nil {
		return nil, err
	}
	if s.stopped {
		return nil, fmt.Errorf("board %s: %w", id, errServiceStopping)
	}
	return b, nil
}

// attach checks that who may act on board id under lease and returns its
// persistent connection, and a context that the lease's end (or the
// board being given to another lease, or the connection failing) cancels;
// done ends it.
func (s *Service) attach(ctx context.Context, who user, id, lease string) (*dispatcher.Client, context.Context, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.sessionLocked(ctx, who, id, lease)
	if err != nil {
		return nil, nil, nil, err
	}
	c := b.client
	if c == nil {
		return nil, nil, nil, fmt.Errorf("board %s: %w", id, ErrOffline)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	s.nextRun++
	n := s.nextRun
	if b.runs == nil {
		b.runs = map[uint64]*run{}
	}
	b.runs[n] = &run{lease: lease, cancel: cancel}
	return c, ctx, func() {
		s.mu.Lock()
		delete(b.runs, n)
		s.mu.Unlock()
		cancel(nil)
	}, nil
}

// dial opens a session of its own with b at addr, for work that lives
// through the board's reboots (the persistent connection ends with each
// boot); on a serial line, beside the persistent one through the mux.
func (s *Service) dial(ctx context.Context, b *board, addr string) (*dispatcher.Client, error) {
	opts, err := s.dialOptions(b, addr)
	if err != nil {
		return nil, err
	}
	return dispatcher.Dial(ctx, addr, opts)
}

// PushRequest is how a pushed file goes on the board. Path is where; a
// path that ends in "/" or names a directory on the board takes Name in
// it. Size and SHA256 are the file's: the service streams it to the
// board as it arrives, and the board checks it before it appears.
type PushRequest struct {
	Path    string    `json:"path" validate:"required,max=4096,excludes=\x00"`
	Size    int64     `json:"size" validate:"min=0"`
	SHA256  string    `json:"sha256" validate:"required,len=64,hexadecimal,lowercase"`
	Name    string    `json:"name,omitempty" validate:"omitempty,max=255,excludes=/,excludes=\x00"`
	Mode    uint32    `json:"mode,omitempty" validate:"max=4095"`
	ModTime time.Time `json:"mtime,omitzero"`
	Parents bool      `json:"parents,omitempty"`
}

// Push pushes the r.Size bytes body yields (an upload, as it arrives) to
// board id as r says, over the board's connection, resuming what the
// board kept of an earlier cut push of the same bytes.
func (s *Service) Push(ctx context.Context, who user, id, lease string, body io.Reader, r PushRequest) (proto.FileResult, error) {
	c, ctx, done, err := s.attach(ctx, who, id, lease)
	if err != nil {
		return proto.FileResult{}, err
	}
	defer done()
	to, err := destination(ctx, c, r.Path, r.Name)
	if err != nil {
		return proto.FileResult{}, err
	}
	return c.PushFrom(ctx, body, proto.FilePushParams{Path: to, Size: r.Size, SHA256: r.SHA256, Mode: r.Mode,
		ModTime: r.ModTime, Parents: r.Parents}, dispatcher.TransferOptions{})
}

// destination is where a push to dir goes on the board: into it as name
// when it ends in "/" or is a directory there, else dir itself.
func destination(ctx context.Context, c *dispatcher.Client, dir, name string) (string, error) {
	into := strings.HasSuffix(dir, "/")
	if !into {
		info, err := c.Stat(ctx, dir, false)
		if err != nil {
			return "", err
		}
		into = info.Dir
	}
	if !into {
		return dir, nil
	}
	if name == "" {
		return "", &FieldError{"name", fmt.Sprintf("%s is a directory: name what goes in it", dir)}
	}
	return path.Join(dir, name), nil
}

// Pull copies the file remote from board id to the writer start returns,
// once it is known to be a file (start is given its size, mode and
// mtime). The returned result's sha256 is the board's; the bytes were
// checked against it.
func (s *Service) Pull(ctx context.Context, who user, id, lease, remote string, start func(proto.FileInfo) io.Writer) (proto.FileResult, error) {
	c, ctx, done, err := s.attach(ctx, who, id, lease)
	if err != nil {
		return proto.FileResult{}, err
	}
	defer done()
	info, err := c.Stat(ctx, remote, false)
	switch {
	case err != nil:
		return proto.FileResult{}, err
	case !info.Exists:
		return proto.FileResult{}, proto.Errorf(proto.ReasonNotFound, "%s: no such file on board %s", remote, id)
	case info.Dir:
		return proto.FileResult{}, &FieldError{"path", remote + " is a directory"}
	}
	return c.PullTo(ctx, remote, start(info), dispatcher.TransferOptions{})
}

// RebootRequest reboots a board; with Wait the answer comes once it is
// back with a new boot id, or after TimeoutMs (default 5 minutes).
type RebootRequest struct {
	Wait      bool  `json:"wait,omitempty"`
	TimeoutMs int64 `json:"timeout_ms,omitempty" validate:"min=0,max=86400000"`
}

// Reboot reboots board id and, with r.Wait, waits for its new boot on a
// session of its own. A board not back in time is a 504 timeout.
func (s *Service) Reboot(ctx context.Context, who user, id, lease string, r RebootRequest) (dispatcher.Rebooted, error) {
	b, addr, err := s.session(ctx, who, id, lease)
	if err != nil {
		return dispatcher.Rebooted{}, err
	}
	timeout := time.Duration(r.TimeoutMs) * time.Millisecond
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := s.dial(ctx, b, addr)
	if err != nil {
		return dispatcher.Rebooted{}, fmt.Errorf("board %s: %w: %w", id, ErrOffline, err)
	}
	defer c.Close()
	if !r.Wait {
		res, err := c.Reboot(ctx)
		return dispatcher.Rebooted{OldBootID: res.BootID, Commands: res.Commands}, err
	}
	back, err := c.RebootWait(ctx, dispatcher.WaitOptions{})
	if errors.Is(err, dispatcher.ErrNotBack) {
		err = &APIError{Status: http.StatusGatewayTimeout, Reason: string(proto.ReasonTimeout), Message: err.Error()}
	}
	return back, err
}

// OTARequest updates one board to the uploaded image. URL, if set, serves
// the same image file: the board fetches the chunks it lacks from there.
type OTARequest struct {
	Force     bool   `json:"force,omitempty"`
	URL       string `json:"url,omitempty" validate:"omitempty,max=4096,url"`
	TimeoutMs int64  `json:"timeout_ms,omitempty" validate:"min=0,max=86400000"`
}

// OTA updates board id to the image file img (an upload spooled by the
// service), on a session of its own that follows the board through its
// reboots, calling progress with each step. The board reads updating
// until the update ends, however it ends. A rollback is an
// *dispatcher.OTAError.
func (s *Service) OTA(ctx context.Context, who user, id, lease, img string, r OTARequest, progress func(dispatcher.OTAProgress)) (dispatcher.OTAReport, error) {
	im, err := image.OpenFile(img)
	if err != nil {
		return dispatcher.OTAReport{}, &FieldError{UploadFile, err.Error()}
	}
	defer im.Close()
	b, addr, err := s.session(ctx, who, id, lease)
	if err != nil {
		return dispatcher.OTAReport{}, err
	}
	timeout := time.Duration(r.TimeoutMs) * time.Millisecond
	if timeout == 0 {
		timeout = 30 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s.mu.Lock()
	s.markUpdatingLocked(b, true)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.markUpdatingLocked(b, false)
		s.mu.Unlock()
	}()
	c, err := s.dial(ctx, b, addr)
	if err != nil {
		return dispatcher.OTAReport{}, fmt.Errorf("board %s: %w: %w", id, ErrOffline, err)
	}
	defer c.Close()
	return c.Update(ctx, im, dispatcher.OTAOptions{Force: r.Force, URL: r.URL, Progress: func(p dispatcher.OTAProgress) {
		if p.Phase != dispatcher.OTAReboot {
			s.mu.Lock()
			s.holdUpdatingLocked(b)
			s.mu.Unlock()
		}
		progress(p)
	}})
}

// PullHeader carries a pulled file's size, mode and mtime (a JSON
// proto.FileInfo); the trailers PullResult (a JSON proto.FileResult) or
// PullError (a JSON APIError) say how the pull ended.
const (
	PullHeader = "Boardlink-File"
	PullResult = "Boardlink-Result"
	PullError  = "Boardlink-Error"
)

func (s *Service) hPush(w http.ResponseWriter, r *http.Request, c *call) error {
	var req PushRequest
	// Refused before the upload crosses, when it would be anyway.
	if _, _, err := s.session(r.Context(), c.user, c.board, c.lease); err != nil {
		return err
	}
	body, err := uploadPart(r, &req)
	if err != nil {
		return err
	}
	c.detail = req.Path
	if req.Size > s.opts.MaxUpload { // before any byte of the file is read
		return tooLarge(fmt.Sprintf("the file is over the service's limit of %d bytes", s.opts.MaxUpload))
	}
	res, err := s.Push(r.Context(), c.user, c.board, c.lease, body, req)
	s.metrics.fileMoved(toBoard, res)
	if err != nil {
		return err
	}
	c.detail = fmt.Sprintf("%s: %d bytes, sha256 %s", res.Path, res.Size, res.SHA256)
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (s *Service) hPull(w http.ResponseWriter, r *http.Request, c *call) error {
	remote := r.URL.Query().Get("path")
	if remote == "" || len(remote) > 4096 {
		return &FieldError{"path", "the file's path on the board is required (at most 4096 bytes)"}
	}
	c.detail = remote
	started := false
	res, err := s.Pull(r.Context(), c.user, c.board, c.lease, remote, func(info proto.FileInfo) io.Writer {
		started = true
		j, _ := json.Marshal(info)
		w.Header().Set(PullHeader, string(j))
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Trailer", PullResult+", "+PullError)
		w.WriteHeader(http.StatusOK)
		return w
	})
	s.metrics.fileMoved(fromBoard, res)
	if !started {
		return err
	}
	if err != nil {
		j, _ := json.Marshal(apiError(err))
		w.Header().Set(PullError, string(j))
		c.detail += "; " + err.Error()
		return nil
	}
	j, _ := json.Marshal(res)
	w.Header().Set(PullResult, string(j))
	return nil
}

func (s *Service) hReboot(w http.ResponseWriter, r *http.Request, c *call) error {
	var req RebootRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	c.detail = fmt.Sprintf("wait=%v", req.Wait)
	back, err := s.Reboot(r.Context(), c.user, c.board, c.lease, req)
	if err != nil {
		return err
	}
	c.detail += fmt.Sprintf("; boot %s -> %s", back.OldBootID, back.NewBootID)
	writeJSON(w, http.StatusOK, back)
	return nil
}

// OTAFrame is one line of an OTA's response (application/x-ndjson): its
// steps as they come, then one last frame with the report, and the
// update's failure (a rollback, a refusal on the board) or another error.
type OTAFrame struct {
	Step    *OTAStep              `json:"step,omitempty"`
	Report  *dispatcher.OTAReport `json:"report,omitempty"`
	Failure *OTAFailure           `json:"failure,omitempty"`
	Error   *APIError             `json:"error,omitempty"`
}

// OTAUpload is the phase of the steps Client.OTA reports while the image
// goes to the service (Sent of ToSend bytes), before the service's own.
const OTAUpload = "upload"

// OTAStep is a dispatcher.OTAProgress as the API carries it.
type OTAStep struct {
	Phase        string           `json:"phase"`
	Sent         int64            `json:"sent,omitempty"`
	ToSend       int64            `json:"to_send,omitempty"`
	Bytes        int64            `json:"bytes,omitempty"`
	Total        int64            `json:"total,omitempty"`
	Status       *proto.OTAStatus `json:"status,omitempty"`
	WaitAttempts int              `json:"wait_attempts,omitempty"`
	WaitError    string           `json:"wait_error,omitempty"`
}

// OTAFailure is a dispatcher.OTAError as the API carries it.
type OTAFailure struct {
	Result proto.Result `json:"result"`
	Phase  proto.Phase  `json:"phase"`
	Reason string       `json:"reason"`
	Halted bool         `json:"halted,omitempty"`
}

func stepOf(p dispatcher.OTAProgress) *OTAStep {
	st := &OTAStep{Phase: p.Phase, Sent: p.Sent, ToSend: p.ToSend, Bytes: p.Bytes, Total: p.Total, Status: p.Status}
	if p.Wait != nil {
		st.WaitAttempts = p.Wait.Attempts
		if p.Wait.Err != nil {
			st.WaitError = p.Wait.Err.Error()
		}
	}
	return st
}

// Progress is the step as the dispatcher reports it.
func (st *OTAStep) Progress() dispatcher.OTAProgress {
	p := dispatcher.OTAProgress{Phase: st.Phase, Sent: st.Sent, ToSend: st.ToSend, Bytes: st.Bytes, Total: st.Total, Status: st.Status}
	if st.WaitAttempts > 0 || st.WaitError != "" {
		p.Wait = &dispatcher.WaitProgress{Attempts: st.WaitAttempts}
		if st.WaitError != "" {
			p.Wait.Err = errors.New(st.WaitError)
		}
	}
	return p
}

func (s *Service) hOTA(w http.ResponseWriter, r *http.Request, c *call) error {
	var req OTARequest
	// Refused before the upload crosses, when it would be anyway.
	if _, _, err := s.session(r.Context(), c.user, c.board, c.lease); err != nil {
		return err
	}
	img, err := s.readUpload(r, &req)
	if err != nil {
		return err
	}
	defer os.Remove(img)
	out := &lines{w: w}
	rep, err := s.OTA(r.Context(), c.user, c.board, c.lease, img, req, out.step)
	var oe *dispatcher.OTAError
	failed := errors.As(err, &oe)
	if err != nil && !failed && !out.started() {
		return err // refused before anything began: an error status
	}
	last := OTAFrame{Report: &rep}
	switch {
	case failed:
		last.Failure = &OTAFailure{Result: oe.Result, Phase: oe.Phase, Reason: oe.Reason, Halted: oe.Halted}
	case err != nil:
		last.Error = apiError(err)
	}
	c.detail = "update " + rep.Plan.ID
	if err != nil {
		c.detail += ": " + err.Error()
	}
	out.write(last)
	return nil
}

// lines writes an application/x-ndjson answer, a line at a time, each
// flushed; a failed write ends it (the client went away).
type lines struct {
	mu   sync.Mutex
	w    http.ResponseWriter
	on   bool
	last time.Time // of the last chunk step written
}

func (l *lines) started() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.on
}

func (l *lines) write(v any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writeLocked(v)
}

func (l *lines) writeLocked(v any) {
	if !l.on {
		l.w.Header().Set("Content-Type", "application/x-ndjson")
		l.w.WriteHeader(http.StatusOK)
		l.on = true
	}
	if json.NewEncoder(l.w).Encode(v) == nil {
		_ = http.NewResponseController(l.w).Flush()
	}
}

// step writes an OTA step; chunks go out by the thousand, so their steps
// at most every 100ms, and the last.
func (l *lines) step(p dispatcher.OTAProgress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p.Phase == "send" {
		if p.Sent < p.ToSend && time.Since(l.last) < 100*time.Millisecond {
			return
		}
		l.last = time.Now()
	}
	l.writeLocked(OTAFrame{Step: stepOf(p)})
}
