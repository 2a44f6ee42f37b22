package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/boardlink/boardlink/proto"
)

// Reboot asks the board to reboot. The answer names the boot that ends;
// the board then stops its work (ending running commands) and restarts.
func (c *Client) Reboot(ctx context.Context) (proto.RebootResult, error) {
	var res proto.RebootResult
	err := c.Conn().Call(ctx, proto.MethodSystemReboot, proto.RebootParams{}, &res)
	return res, err
}

// Rebooted is what RebootWait saw.
type Rebooted struct {
	OldBootID string        `json:"old_boot_id"`
	NewBootID string        `json:"new_boot_id"`
	Took      time.Duration `json:"-"`
	TookMs    int64         `json:"took_ms"`
	Attempts  int           `json:"attempts"` // connection attempts until the board answered
	Commands  int           `json:"commands"` // running commands the reboot ended
}

// ErrNotBack is wrapped by RebootWait's error when the board was not back
// before its deadline: a board that did not boot, not a link hiccup.
var ErrNotBack = errors.New("board did not come back")

// WaitOptions tune RebootWait and DialWait.
type WaitOptions struct {
	// Progress, if set, is told each failed attempt to reach the board.
	Progress func(WaitProgress)
}

// WaitProgress is where a wait for a board stands.
type WaitProgress struct {
	Attempts int   // connection attempts so far
	Err      error // why the last one failed
}

func (o WaitOptions) progress(p WaitProgress) {
	if o.Progress != nil {
		o.Progress(p)
	}
}

// RebootWait reboots the board and returns once it is back: reconnected,
// answering, with a new boot id. The client is then connected to the new
// boot. ctx bounds the whole wait.
func (c *Client) RebootWait(ctx context.Context, opts WaitOptions) (Rebooted, error) {
	start := time.Now()
	res, err := c.Reboot(ctx)
	if err != nil {
		return Rebooted{}, err
	}
	out, err := c.waitBackOpts(ctx, res.BootID, opts)
	out.Commands = res.Commands
	out.Took = time.Since(start)
	out.TookMs = out.Took.Milliseconds()
	return out, err
}

// waitBack reconnects until the board answers with a boot id other than
// oldBoot. Only ctx bounds it.
func (c *Client) waitBack(ctx context.Context, oldBoot string) (Rebooted, error) {
	return c.waitBackOpts(ctx, oldBoot, WaitOptions{})
}

func (c *Client) waitBackOpts(ctx context.Context, oldBoot string, opts WaitOptions) (Rebooted, error) {
	start := time.Now()
	out := Rebooted{OldBootID: oldBoot}
	var last error
	err := retry(ctx, func() (bool, error) {
		out.Attempts++
		id, err := c.reconnectBoot(ctx)
		if err == nil && id == oldBoot {
			err = fmt.Errorf("still boot %s", oldBoot)
		}
		if err != nil {
			last = err
			opts.progress(WaitProgress{Attempts: out.Attempts, Err: err})
			return false, nil
		}
		out.NewBootID = id
		return true, nil
	})
	if err != nil {
		err = fmt.Errorf("%w after %s (boot %s ended; %d attempts)", ErrNotBack,
			time.Since(start).Round(time.Millisecond), oldBoot, out.Attempts)
		if last != nil {
			err = fmt.Errorf("%w; last error: %w", err, last)
		}
	}
	return out, err
}

// retry calls try, after a pause that doubles up to a second, until it is
// done or fails, or ctx ends (ctx's error then).
func retry(ctx context.Context, try func() (done bool, err error)) error {
	backoff := 50 * time.Millisecond
	for {
		done, err := try()
		if done || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// reconnectBoot opens a new session and returns the boot id it reaches.
func (c *Client) reconnectBoot(ctx context.Context) (string, error) {
	attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Reconnect(attempt); err != nil {
		return "", err
	}
	info, err := c.Info(attempt)
	return info.BootID, err
}

// DialWait dials addr as Dial does until the board answers, for as long
// as ctx allows: for a board that is starting (powered on, flashed, its
// agent just launched). What waiting cannot mend ends it at once: a bad
// address, a board whose key is not trusted, credentials it refuses.
func DialWait(ctx context.Context, addr string, opts DialOptions, w WaitOptions) (*Client, error) {
	var (
		c        *Client
		last     error
		attempts int
	)
	err := retry(ctx, func() (bool, error) {
		attempts++
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var err error
		c, err = Dial(attempt, addr, opts)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, ErrBadAddress), errors.Is(err, ErrUntrusted), errors.Is(err, ErrNoCredentials),
			proto.IsReason(err, proto.ReasonUnauthorized):
			return false, err
		}
		last = err
		w.progress(WaitProgress{Attempts: attempts, Err: err})
		return false, nil
	})
	if err != nil && ctx.Err() != nil && last != nil {
		err = fmt.Errorf("%w: %d attempts; the last: %w", err, attempts, last)
	}
	return c, err
}
