package dispatcher_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/simlab"
)

// TestRebootWait: the client follows the board through its reboot and is
// connected to the new boot when RebootWait returns.
func TestRebootWait(t *testing.T) {
	lab, err := simlab.Start(context.Background(), simlab.Options{Boards: 1, Dir: t.TempDir(), Token: labToken})
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Stop(context.Background())
	c := dial(t, lab.Boards[0].Addr())
	ctx := context.Background()
	before, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.RebootWait(ctx, dispatcher.WaitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	after, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.OldBootID != before.BootID || r.NewBootID != after.BootID || r.NewBootID == r.OldBootID || r.Attempts < 1 ||
		lab.Boards[0].Boots() != 2 {
		t.Fatalf("rebooted %+v; boot %s then %s", r, before.BootID, after.BootID)
	}
}

// TestRebootNotBack: a board that does not come back before the caller's
// deadline is ErrNotBack, which a rollout retries.
func TestRebootNotBack(t *testing.T) {
	// The board stays down after its reboot until the lab stops.
	lab, err := simlab.Start(context.Background(), simlab.Options{Boards: 1, Dir: t.TempDir(), Token: labToken,
		BootDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Stop(context.Background())
	c := dial(t, lab.Boards[0].Addr())
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r, err := c.RebootWait(ctx, dispatcher.WaitOptions{})
	if !errors.Is(err, dispatcher.ErrNotBack) || !dispatcher.Transient(err) || r.NewBootID != "" || r.OldBootID == "" {
		t.Fatalf("got %+v %v", r, err)
	}
}
