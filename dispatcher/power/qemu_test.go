package power_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/internal/qemuboard"
	"github.com/boardlink/boardlink/internal/testenv"
)

const qemuToken = "power-test-qemu-token-0123456789"

// qemuBoard builds and starts a real QEMU board (internal/qemuboard); it
// is killed when the test ends. Long: it builds the board and boots it
// under TCG.
func qemuBoard(ctx context.Context, t *testing.T) *qemuboard.Board {
	t.Helper()
	testenv.Long(t)
	if testenv.Race {
		// The plain pass ran this board; under the race detector it
		// would only run the same emulator again, ten times slower.
		t.Skip("a QEMU board runs in the pass without the race detector")
	}
	cacheDir, err := qemuboard.DefaultCacheDir()
	if err != nil {
		testenv.SkipOrFail(t, "%v", err)
	}
	cache := &qemuboard.Cache{Dir: cacheDir, Logf: t.Logf}
	agent, err := cache.Agent(ctx, "../..")
	var assets *qemuboard.Assets
	if err == nil {
		assets, err = cache.Prepare(ctx, agent)
	}
	switch {
	case errors.Is(err, qemuboard.ErrUnavailable):
		testenv.SkipOrFail(t, "%v", err)
	case err != nil:
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../docs/boot.md")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	spec := qemuboard.Spec{ID: "qemu-power", Model: "qemu-x86_64", Serial: "ttyS1", Token: qemuToken,
		SlotA: filepath.Join(dir, "slot-a.img")}
	if err := qemuboard.SlotImage(ctx, spec.SlotA, 1<<20, qemuboard.Release{Version: "1.0.0", Health: "pass"}); err != nil {
		t.Fatal(err)
	}
	if spec.GrubCfg, err = qemuboard.GrubConfig(doc); err != nil {
		t.Fatal(err)
	}
	disk, err := cache.Build(ctx, assets, spec, dir)
	if err != nil {
		t.Fatal(err)
	}
	b := qemuboard.NewBoard(assets, disk, dir)
	t.Cleanup(func() {
		b.Kill()
		if t.Failed() {
			t.Logf("the console (%s), last lines:\n%s", b.ConsoleLog(), qemuboard.Tail(b.Console(), 120))
		}
	})
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestQEMUDriver: on a real QEMU board, a cycle (QMP system_reset) brings
// the board back with a new boot id; off (QMP quit) ends QEMU; off again
// is nothing to do; on without a start command is ErrNotRunning.
func TestQEMUDriver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b := qemuBoard(ctx, t)
	// qemuboard names its monitor socket qmp.sock in the board's directory.
	d, err := power.New(power.Config{Driver: power.DriverQEMU, QMP: filepath.Join(b.Dir, "qmp.sock"), Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	opts := dispatcher.DialOptions{Token: qemuToken, Trust: dispatcher.NewKnownBoards("")}
	bootID := func() string {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		c, err := dispatcher.DialWait(wctx, b.AgentAddr(), opts, dispatcher.WaitOptions{})
		if err != nil {
			t.Fatalf("the board does not answer: %v", err)
		}
		defer c.Close()
		info, err := c.Info(wctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.BootID
	}
	first := bootID()
	if err := d.Do(ctx, power.On); err != nil {
		t.Fatalf("on, while running: %v", err)
	}
	if err := d.Do(ctx, power.Cycle); err != nil {
		t.Fatal(err)
	}
	if second := bootID(); second == first {
		t.Fatalf("after system_reset the board still runs boot %s", first)
	}
	if err := d.Do(ctx, power.Off); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.Done():
	case <-ctx.Done():
		t.Fatal("QEMU did not exit after off")
	}
	if err := d.Do(ctx, power.Off); err != nil {
		t.Fatalf("off, when off: %v", err)
	}
	if err := d.Do(ctx, power.On); !errors.Is(err, power.ErrNotRunning) {
		t.Fatalf("on without a start command: %v", err)
	}
}
