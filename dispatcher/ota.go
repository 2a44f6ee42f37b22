package dispatcher

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/proto"
)

// OTAStatus reads the board's slots and its current or last update.
func (c *Client) OTAStatus(ctx context.Context) (proto.OTAStatus, error) {
	var st proto.OTAStatus
	err := c.Conn().Call(ctx, proto.MethodOTAStatus, nil, &st)
	return st, err
}

// OTAPlan asks the board what updating to im would take, changing nothing.
func (c *Client) OTAPlan(ctx context.Context, im *image.Image, force bool) (proto.OTAPlan, error) {
	var plan proto.OTAPlan
	err := c.Conn().Call(ctx, proto.MethodOTAPlan, imageParams(im, force), &plan)
	return plan, err
}

func imageParams(im *image.Image, force bool) proto.OTAImageParams {
	return proto.OTAImageParams{Manifest: im.RawManifest, Signature: im.Signature, Force: force}
}

// OTAOptions tune Update.
type OTAOptions struct {
	Force bool
	// URL, if set, serves the same image file over http(s): the board
	// fetches the chunks it lacks from there itself, and none cross the
	// link.
	URL string
	// Progress, if set, is called with each step: chunks sent, and every
	// status the board reports.
	Progress func(OTAProgress)
	// Chunks, if set, supplies the chunks to send (a rollout shares one
	// ChunkCache among its boards); nil reads them from the image.
	Chunks ChunkSource
	// Hold, if set, makes Execute stop once the trial's health check
	// passed (proto.PhaseHeld) for the caller's verdict, OTACommit or
	// OTARollback; the board rolls back by itself after Hold without one.
	// It needs protocol 5.
	Hold time.Duration
}

// ChunkSource supplies an image's chunks, verified. The caller calls
// release once it is done with data. Expect announces the chunks a board
// will ask for, in order.
type ChunkSource interface {
	Expect(chunks []int)
	Chunk(i int) (data []byte, release func(), err error)
}

// imageChunks reads each chunk from the image as it is asked for.
type imageChunks struct {
	im  *image.Image
	buf []byte
}

func (s *imageChunks) Expect([]int) {}

func (s *imageChunks) Chunk(i int) ([]byte, func(), error) {
	_, n := s.im.Manifest.ChunkRange(i)
	if s.buf == nil {
		s.buf = make([]byte, s.im.Manifest.ChunkSize)
	}
	data := s.buf[:n]
	if _, err := s.im.Chunk(i).ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	return data, func() {}, nil
}

// OTAProgress is one step of an update as Update sees it.
type OTAProgress struct {
	// Phase is the board's phase (a proto.Phase); "send" while chunks go
	// out; proto.ProgressHash while the board reads and hashes its active
	// slot, proto.ProgressCopy while it copies what that holds, before it
	// answers the start; OTAReboot while the board is out of reach.
	Phase  string
	Sent   int64            // chunk bytes sent so far
	ToSend int64            // chunk bytes the board needs
	Status *proto.OTAStatus // the board's status, or the last one seen while it reboots
	// Bytes and Total: the board's own work, hashing or copying, so far.
	Bytes, Total int64
	// Wait is the last failed attempt to reach the board again, in
	// OTAReboot; nil before the first.
	Wait *WaitProgress
}

// OTAReboot is the step of an update in which the board reboots (into
// its trial, or back after a rollback) or the link dropped: Execute
// reconnects.
const OTAReboot = "reboot"

// OTAReport is how an update went.
type OTAReport struct {
	Plan      proto.OTAPlan    `json:"plan"`
	Update    *proto.OTAUpdate `json:"update,omitempty"`
	BytesSent int64            `json:"bytes_sent"` // stream bytes the link carried for the chunks
	Reboots   int              `json:"reboots"`
	TookMs    int64            `json:"took_ms"`
}

// OTAError is an update that ended other than committed, or halted; a
// rollback is a failure, named with its phase and reason.
type OTAError struct {
	Result proto.Result
	Phase  proto.Phase // where it failed
	Reason string
	// Halted: the update stopped in its prepare and waits on the board:
	// Prepare with the same image resumes it, OTAAbort ends it.
	Halted bool
}

func (e *OTAError) Error() string {
	msg := fmt.Sprintf("update %s in phase %s: %s", e.Result, e.Phase, e.Reason)
	if e.Halted {
		msg += " (halted on the board: the same image resumes it, an abort ends it)"
	}
	return msg
}

// maxPrepareRounds bounds how often chunks are sent again after the board
// found some of them wrong in its final check.
const maxPrepareRounds = 3

// Update runs a whole update of the board to im: Prepare, then Execute.
// It returns once the board committed it; anything else is an error: an
// *OTAError for a rollback or a failure on the board.
func (c *Client) Update(ctx context.Context, im *image.Image, opts OTAOptions) (OTAReport, error) {
	start := time.Now()
	rep, err := c.Prepare(ctx, im, opts)
	if err == nil {
		err = c.Execute(ctx, &rep, opts)
	}
	rep.TookMs = time.Since(start).Milliseconds()
	return rep, err
}

func (o OTAOptions) progress(p OTAProgress) {
	if o.Progress != nil {
		o.Progress(p)
	}
}

// Prepare has the board write its inactive slot with im: it plans, sends
// the chunks the board lacks (or lets it fetch them from opts.URL), and
// returns once the board verified the slot (phase prepared). Run again
// after a cut, it resumes.
func (c *Client) Prepare(ctx context.Context, im *image.Image, opts OTAOptions) (OTAReport, error) {
	var rep OTAReport
	var st proto.OTAStatus
	for round := 0; ; round++ {
		params := imageParams(im, opts.Force)
		if opts.URL != "" {
			params.URL, params.PayloadOffset = opts.URL, im.PayloadOffset()
		}
		if err := c.otaStart(ctx, params, opts, &rep.Plan); err != nil {
			return rep, err
		}
		var sent int64
		var err error
		if opts.URL == "" {
			src := opts.Chunks
			if src == nil {
				src = &imageChunks{im: im}
			}
			sent, err = c.sendChunks(ctx, src, rep.Plan, opts.progress)
		}
		rep.BytesSent += sent
		if proto.IsReason(err, proto.ReasonChecksumMismatch) {
			// The image file does not match its own signed manifest: no
			// retry can help, and the half-written slot must not block
			// the next update.
			aerr := c.Conn().Call(context.WithoutCancel(ctx), proto.MethodOTAAbort, proto.OTAIDParams{ID: rep.Plan.ID}, nil)
			return rep, errors.Join(err, aerr)
		}
		if err != nil {
			return rep, err
		}
		st, err = c.otaWaitWhile(ctx, st, opts.progress, func(u *proto.OTAUpdate) bool { return u.Phase == proto.PhasePrepare })
		if err != nil {
			return rep, err
		}
		if u := st.Update; u.Phase != proto.PhasePrepare || round >= maxPrepareRounds {
			break
		}
	}
	rep.Update = st.Update
	if st.Update.Phase != proto.PhasePrepared {
		return rep, otaFailure(st.Update)
	}
	return rep, nil
}

// otaStart calls ota.start, passing on the board's progress while it
// hashes and copies from its active slot.
func (c *Client) otaStart(ctx context.Context, params proto.OTAImageParams, opts OTAOptions, plan *proto.OTAPlan) error {
	if opts.Progress != nil {
		tok, done := c.notes.subscribe(func(p proto.Progress) {
			opts.Progress(OTAProgress{Phase: p.Phase, Bytes: p.Bytes, Total: p.Total})
		})
		defer done() // before anything else reports progress: never two at once
		params.Progress = tok
	}
	conn := c.Conn()
	err := conn.Call(ctx, proto.MethodOTAStart, params, plan)
	if opts.Progress != nil {
		conn.SyncNotes(ctx) // the last figures came before the answer
	}
	return err
}

// Execute activates a prepared update (rep.Plan.ID) and follows it to its
// end: through the reboot into the trial, the health check and, after a
// rollback, the reboot back, across any number of reboots and lost links
// (it reconnects and resumes waiting from the last status seen). It
// returns once the update ended: nil only if committed.
func (c *Client) Execute(ctx context.Context, rep *OTAReport, opts OTAOptions) error {
	before, err := c.Info(ctx)
	if err != nil {
		return err
	}
	st, err := c.OTAStatus(ctx)
	if err != nil {
		return err
	}
	if u := st.Update; u == nil || u.ID != rep.Plan.ID {
		return proto.Errorf(proto.ReasonNotFound, "the board's update is %v, not %s", u, rep.Plan.ID)
	}
	if st.Update.Phase == proto.PhaseHalted {
		return otaFailure(st.Update) // Prepare resumes it; nothing here can
	}
	if opts.Hold > 0 && c.Hello().Protocol < 5 {
		return proto.Errorf(proto.ReasonIncompatible, "holding a trial for a verdict needs protocol 5; the board speaks %d", c.Hello().Protocol)
	}
	// Activate only a prepared update: an Execute run again after a cut
	// link (or a resumed rollout) picks up an update already under way.
	if st.Update.Phase == proto.PhasePrepared {
		p := proto.OTAActivateParams{ID: rep.Plan.ID, HoldMs: opts.Hold.Milliseconds()}
		if err := c.Conn().Call(ctx, proto.MethodOTAActivate, p, &st); err != nil {
			return err
		}
		opts.progress(OTAProgress{Phase: string(st.Update.Phase), Status: &st})
	}
	return c.waitUpdate(ctx, rep, st, before.BootID, opts)
}

// waitUpdate follows update rep.Plan.ID from status st until it is done,
// or held (with opts.Hold), across the board's reboots.
func (c *Client) waitUpdate(ctx context.Context, rep *OTAReport, st proto.OTAStatus, boot string, opts OTAOptions) error {
	waiting := func(u *proto.OTAUpdate) bool {
		return u.Phase != proto.PhaseDone && (opts.Hold == 0 || u.Phase != proto.PhaseHeld)
	}
	for waiting(st.Update) {
		var err error
		st, err = c.otaWaitWhile(ctx, st, opts.progress, waiting)
		if err == nil {
			break
		}
		if ctx.Err() != nil || !linkLost(err) {
			return err
		}
		// The board is rebooting (into the trial, or back after a
		// rollback), or the link dropped: reconnect to whatever boot
		// answers, and wait on from st.
		last := st
		opts.progress(OTAProgress{Phase: OTAReboot, Status: &last})
		back, werr := c.waitBackOpts(ctx, "", WaitOptions{Progress: func(w WaitProgress) {
			opts.progress(OTAProgress{Phase: OTAReboot, Status: &last, Wait: &w})
		}})
		if werr != nil {
			return fmt.Errorf("update %s (last seen in phase %s on boot %s): %w", rep.Plan.ID, st.Update.Phase, boot, werr)
		}
		if back.NewBootID != boot {
			rep.Reboots++
			boot = back.NewBootID
		}
	}
	rep.Update = st.Update
	if st.Update.Phase == proto.PhaseHeld {
		return nil
	}
	if st.Update.Result != proto.ResultCommitted {
		return otaFailure(st.Update)
	}
	return nil
}

// OTAVerdict is the host's verdict on a held trial (OTAOptions.Hold):
// commit it, or roll it back for reason (commit false). It returns once
// the update is done, across the reboot back to the old slot, with the
// same errors as Execute: a rolled-back update is an *OTAError.
func (c *Client) OTAVerdict(ctx context.Context, rep *OTAReport, commit bool, reason string, opts OTAOptions) error {
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	var st proto.OTAStatus
	if commit {
		err = c.Conn().Call(ctx, proto.MethodOTACommit, proto.OTAIDParams{ID: rep.Plan.ID}, &st)
	} else {
		err = c.Conn().Call(ctx, proto.MethodOTARollback, proto.OTARollbackParams{ID: rep.Plan.ID, Reason: reason}, &st)
	}
	switch {
	case err != nil && linkLost(err) && ctx.Err() == nil:
		// The rollback's reboot may cut the link before its answer: follow
		// the update from where it was (a verdict lost on the way is a
		// trial that rolls back when its hold ends).
		st = proto.OTAStatus{Update: &proto.OTAUpdate{ID: rep.Plan.ID, Phase: proto.PhaseHeld}}
	case err != nil:
		return err
	}
	opts.progress(OTAProgress{Phase: string(st.Update.Phase), Status: &st})
	opts.Hold = 0
	return c.waitUpdate(ctx, rep, st, info.BootID, opts)
}

// linkLost reports whether err is the link's, not an answer of the board:
// a reboot or a dropped connection, after which waiting goes on.
func linkLost(err error) bool { return proto.ReasonOf(err) == "" }

// OTAAbort ends the board's update id before its activation and returns
// the status that says so.
func (c *Client) OTAAbort(ctx context.Context, id string) (proto.OTAStatus, error) {
	var st proto.OTAStatus
	err := c.Conn().Call(ctx, proto.MethodOTAAbort, proto.OTAIDParams{ID: id}, &st)
	return st, err
}

func otaFailure(u *proto.OTAUpdate) error {
	e := &OTAError{Result: u.Result, Phase: u.FailedPhase, Reason: u.Reason, Halted: u.Phase == proto.PhaseHalted}
	if e.Phase == "" {
		e.Phase = u.Phase
	}
	if e.Halted {
		e.Result = proto.ResultFailed
	}
	return e
}

// sendChunks streams the chunks the plan needs and returns the stream
// bytes the link carried for them.
func (c *Client) sendChunks(ctx context.Context, src ChunkSource, plan proto.OTAPlan, progress func(OTAProgress)) (int64, error) {
	if len(plan.Need) == 0 {
		return 0, nil
	}
	conn := c.Conn()
	s, err := conn.OpenStream()
	if err != nil {
		return 0, err
	}
	defer s.Close()
	var w proto.OTAWriteResult
	if err := conn.Call(ctx, proto.MethodOTAWrite, proto.OTAWriteParams{ID: plan.ID, Stream: s.ID()}, &w); err != nil {
		return 0, err
	}
	before := conn.Stats().StreamBytesOut
	src.Expect(plan.Need)
	copyErr := make(chan error, 1)
	go func() {
		var sent int64
		var hdr [4]byte
		for _, i := range plan.Need {
			data, release, err := src.Chunk(i)
			if err != nil {
				s.Reset("canceled")
				copyErr <- err
				return
			}
			binary.BigEndian.PutUint32(hdr[:], uint32(i))
			_, err = s.Write(hdr[:])
			if err == nil {
				_, err = s.Write(data)
			}
			n := int64(len(data))
			release()
			if err != nil {
				copyErr <- err
				return
			}
			sent += n
			progress(OTAProgress{Phase: "send", Sent: sent, ToSend: plan.NeedBytes})
		}
		copyErr <- s.CloseWrite()
	}()
	werr := c.waitFile(ctx, conn, w.Transfer, nil)
	cerr := <-copyErr
	moved := conn.Stats().StreamBytesOut - before
	if werr != nil {
		return moved, werr
	}
	return moved, cerr
}

// otaWaitWhile follows the board's status from st until more returns
// false. On an error it returns the last status it saw, to resume from.
func (c *Client) otaWaitWhile(ctx context.Context, st proto.OTAStatus, progress func(OTAProgress), more func(*proto.OTAUpdate) bool) (proto.OTAStatus, error) {
	for {
		var next proto.OTAStatus
		if err := c.Conn().Call(ctx, proto.MethodOTAWait, proto.OTAWaitParams{Since: st.Seq, TimeoutMs: 10000}, &next); err != nil {
			return st, err
		}
		if next.Update == nil || st.Update != nil && next.Update.ID != st.Update.ID {
			return next, proto.Errorf(proto.ReasonNotFound, "the board now reports update %v, not %v", next.Update, st.Update)
		}
		if next.Seq != st.Seq {
			progress(OTAProgress{Phase: string(next.Update.Phase), Status: &next})
		}
		st = next
		if !more(st.Update) {
			return st, nil
		}
	}
}
