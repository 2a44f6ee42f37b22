package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/boardlink/boardlink/proto"
)

// DefaultGateTimeout bounds a gate command when Gate.Timeout is zero.
const DefaultGateTimeout = 5 * time.Minute

// gateGrace is how much longer than its command's timeout a gate may
// take before the board counts as silent: the board kills the command at
// the timeout and answers.
const gateGrace = 30 * time.Second

// gateOutputKeep is how much of a failed gate's output its reason keeps:
// the end, where a test says what failed.
const gateOutputKeep = 1 << 10

// maxGateCommand bounds the command line of a gate.
const maxGateCommand = 4096

// Gate is a test a rollout runs on each board of a wave once the board's
// update committed: the next wave starts only if it passed (exit 0) on
// every one of them. The command runs on the board with /bin/sh -c, with
// BOARDLINK_BOARD set to the board's id and BOARDLINK_VERSION to the
// image's version.
type Gate struct {
	Exec    string        `json:"exec"`
	Timeout time.Duration `json:"timeout_ns,omitempty"` // DefaultGateTimeout when zero
}

// ParseGate reads a gate as --gate gives it: "exec: COMMAND LINE".
func ParseGate(s string) (*Gate, error) {
	kind, cmd, ok := strings.Cut(s, ":")
	cmd = strings.TrimSpace(cmd)
	switch {
	case !ok || strings.TrimSpace(kind) != "exec":
		return nil, fmt.Errorf("gate %q: want exec: COMMAND", s)
	case cmd == "":
		return nil, fmt.Errorf("gate %q: no command", s)
	case len(cmd) > maxGateCommand || strings.ContainsRune(cmd, 0):
		return nil, fmt.Errorf("gate: a command of at most %d bytes, without NUL", maxGateCommand)
	}
	return &Gate{Exec: cmd}, nil
}

func (g *Gate) String() string { return "exec: " + g.Exec }

func (g *Gate) timeout() time.Duration {
	if g.Timeout > 0 {
		return g.Timeout
	}
	return DefaultGateTimeout
}

// GateError is a gate that ran on the board and failed: it exited
// non-zero, was killed, or ran past its timeout.
type GateError struct {
	Gate   string
	Result proto.ExecResult
	Output string // the end of its stdout and stderr
}

func (e *GateError) Error() string {
	var how string
	switch r := e.Result; {
	case r.TimedOut:
		how = "timed out"
	case r.Signal != "":
		how = "killed by SIG" + r.Signal
	default:
		how = fmt.Sprintf("exit %d", r.ExitCode)
	}
	msg := fmt.Sprintf("gate %q failed: %s", e.Gate, how)
	if out := strings.Join(strings.Fields(e.Output), " "); out != "" {
		msg += ": " + out
	}
	return msg
}

// gate runs the rollout's gate on board b. A board whose trial is held
// waits for the wave's verdict; one that could not hold it (protocol < 5)
// committed before and is done once it passes.
func (r *run) gate(ctx context.Context, c *Client, b string) error {
	g := r.cfg.Gate
	out := newConsoleRing(gateOutputKeep)
	res, err := c.Exec(ctx, ExecRequest{Argv: []string{g.Exec}, Shell: true, Timeout: g.timeout(),
		Env:    map[string]string{"BOARDLINK_BOARD": b, "BOARDLINK_VERSION": r.cfg.Image.Manifest.Version},
		Stdout: out, Stderr: out})
	if err != nil {
		return fmt.Errorf("gate: %w", err)
	}
	if res.ExitCode != 0 || res.Signal != "" || res.TimedOut {
		return &GateError{Gate: g.String(), Result: res, Output: string(out.since(0))}
	}
	r.mu.Lock()
	held := r.held[b]
	r.mu.Unlock()
	if !held {
		r.note(b, func(br *BoardReport) { br.Result, br.Ended = string(proto.ResultCommitted), time.Now() })
	}
	return nil
}

// hold is how long a trial waits for its wave's verdict: the rest of the
// wave's execute stage, its gate, and the verdict's delivery. A rollout
// that goes away meanwhile leaves boards that roll back by themselves.
func (r *run) hold() time.Duration {
	return min(2*r.cfg.BoardTimeout+r.cfg.Gate.timeout()+gateGrace, 24*time.Hour)
}

// verdict ends the held trials among boards, at most Concurrency at once:
// commits them when failed is empty, else rolls every one back, because
// the gate failed on a board of the wave (failed says where). It runs
// past MaxFailures: a held trial is never left to its hold's end.
func (r *run) verdict(ctx context.Context, wave int, boards []string, addr map[string]string, failed string) {
	var held []string
	r.mu.Lock()
	for _, b := range boards {
		if r.held[b] {
			held = append(held, b)
		}
	}
	r.mu.Unlock()
	if len(held) == 0 {
		return
	}
	r.emit(Event{Stage: StageVerdict, Wave: wave, Kind: "stage", Boards: len(held)})
	var wg sync.WaitGroup
	sem := make(chan struct{}, r.cfg.Concurrency)
	for _, b := range held {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			r.emit(Event{Board: b, Stage: StageVerdict, Wave: wave, Kind: "start"})
			r.mu.Lock()
			rep := OTAReport{Plan: proto.OTAPlan{ID: r.boards[b].UpdateID}}
			r.mu.Unlock()
			opts := OTAOptions{Progress: r.progress(b, StageVerdict)}
			err := r.attempts(ctx, b, StageVerdict, func(ctx context.Context, c *Client) error {
				return c.OTAVerdict(ctx, &rep, failed == "", failed, opts)
			}, addr[b])
			if ctx.Err() != nil {
				return // interrupted: still held, for a resume
			}
			r.mu.Lock()
			delete(r.held, b)
			prev := r.boards[b].Result // set when its own gate failed
			r.mu.Unlock()
			res, reason, stage := string(proto.ResultCommitted), "", StageVerdict
			var oe *OTAError
			rolledBack := failed != "" && errors.As(err, &oe) && oe.Result == proto.ResultRolledBack
			switch {
			case prev != "":
				// Its gate failure stays the result; the verdict only says
				// whether the trial was ended.
				res, stage = prev, ""
				reason = "; rolled back"
				if !rolledBack {
					reason = fmt.Sprintf("; not rolled back from here (%v): its trial rolls back by itself when the hold ends", err)
				}
			case rolledBack:
				res, reason = string(proto.ResultRolledBack), "rolled back: "+failed
			case err != nil:
				r.failures.Add(1)
				res, reason = failureResult(err), err.Error()
			}
			r.note(b, func(br *BoardReport) {
				if stage == "" {
					br.Reason += reason
				} else {
					br.Result, br.Reason, br.Stage = res, reason, stage
				}
				br.Ended = time.Now()
				if rep.Update != nil {
					br.Phase = string(rep.Update.Phase)
				}
				reason = br.Reason
			})
			r.emit(Event{Board: b, Stage: StageVerdict, Wave: wave, Kind: "done", Result: res, Reason: reason})
		})
	}
	wg.Wait()
}
