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

// RebootWait reboots the board and returns once it is back: reconnected,
// answering, with a new boot id. The client is then connected to the new
// boot. ctx bounds the whole wait.
func (c *Client) RebootWait(ctx context.Context) (Rebooted, error) {
	start := time.Now()
	res, err := c.Reboot(ctx)
	if err != nil {
		return Rebooted{}, err
	}
	out, err := c.waitBack(ctx, res.BootID)
	out.Commands = res.Commands
	out.Took = time.Since(start)
	out.TookMs = out.Took.Milliseconds()
	return out, err
}

// waitBack reconnects until the board answers with a boot id other than
// oldBoot. Only ctx bounds it.
func (c *Client) waitBack(ctx context.Context, oldBoot string) (Rebooted, error) {
	start := time.Now()
	out := Rebooted{OldBootID: oldBoot}
	backoff := 50 * time.Millisecond
	var last error
	for {
		out.Attempts++
		id, err := c.reconnectBoot(ctx)
		if err == nil && id != oldBoot {
			out.NewBootID = id
			return out, nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			err := fmt.Errorf("%w after %s (boot %s ended; %d attempts)", ErrNotBack,
				time.Since(start).Round(time.Millisecond), oldBoot, out.Attempts)
			if last != nil {
				err = fmt.Errorf("%w; last error: %w", err, last)
			}
			return out, err
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
