package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/qemuboard"
	"github.com/boardlink/boardlink/proto"
)

// chunkSize of the test images: small, so that a change of a few bytes
// in a 1 MiB slot costs one chunk over the emulated UART.
const chunkSize = 4 << 10

// TestQEMUOTA is scenarios (c) and (d) on one board whose slot A the disk
// builder flashed (version 1.0.0, as in a factory), the real GRUB choosing
// the slot with the grub.cfg of docs/boot.md at every boot. In order:
//
//   - first update: 2.0.0 into slot B moves only the chunks that differ
//     from the factory slot, which the agent hashes on the board (d); it
//     is committed;
//   - health check fails: 3.0.0 into slot A is rolled back to B;
//   - power cut in the trial: 3.0.1, whose health check hangs, has QEMU
//     killed during its trial boot; GRUB boots B again by itself and
//     `ota --status` says the update rolled back;
//   - resumed: 4.0.0's prepare is cut half way by a reset of the machine;
//     the same `boardlink ota` then sends only what the slot lacks, and
//     commits.
//
// Each step needs the one before it: after a failed step the rest are
// skipped.
func TestQEMUOTA(t *testing.T) {
	setup(t)
	t.Parallel()
	ctx := testCtx(t)
	key := filepath.Join(t.TempDir(), "signing.key")
	if r := startCLI(ctx, t, []string{"image", "keygen", "--out", key}).wait(); r.code != 0 || r.err != nil {
		t.Fatalf("image keygen: exit %d %v: %s", r.code, r.err, r.stderr)
	}
	factory := slotImage(ctx, t, "1.0.0", "pass")
	b := newBoard(ctx, t, qemuboard.Spec{ID: "qemu-ota", Serial: "ttyS1", TrustKey: key + ".pub", SlotA: factory})
	addr := b.AgentAddr()

	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	step("first update of the factory slot", func(t *testing.T) {
		img, payload := buildImage(ctx, t, b, key, qemuboard.Release{Version: "2.0.0", Health: "pass"})
		var res otaResult
		if r := b.cliJSON(ctx, &res, "ota", addr, img); r.code != 0 {
			t.Fatalf("ota 2.0.0: exit %d: %s", r.code, res.Error)
		}
		checkCommitted(t, res, "B", "2.0.0")
		// The board held none of it as far as boardlink knew: it read slot A.
		want := newChunks(t, payload, factory)
		p := res.Plan
		t.Logf("first update: plan have=%d copy=%d need=%d of %d (hashed %d bytes of slot A), %d bytes on the link, %d ms; %d chunks differ from the factory slot",
			p.Have, p.Copy, len(p.Need), p.Chunks, p.Hashed, res.BytesSent, res.Update.ElapsedMs, len(want))
		if !slices.Equal(p.Need, want) || p.Copy+p.Have+len(p.Need) != p.Chunks || p.Hashed == 0 {
			t.Errorf("the plan of the first update: have=%d copy=%d need=%v of %d chunks, hashed %d bytes; want need=%v (the chunks of 2.0.0 that slot A does not hold) and the rest copied from slot A, read on the board",
				p.Have, p.Copy, p.Need, p.Chunks, p.Hashed, want)
		}
		if limit := int64(len(want)) * (chunkSize + 512); res.BytesSent > limit {
			t.Errorf("%d bytes crossed the link for %d chunks (at most %d)", res.BytesSent, len(want), limit)
		}
		b.checkRunning(ctx, t, "B", "2.0.0")
	})

	step("a failed health check rolls back", func(t *testing.T) {
		img, _ := buildImage(ctx, t, b, key, qemuboard.Release{Version: "3.0.0", Health: "fail"})
		from := len(b.Console())
		var res otaResult
		r := b.cliJSON(ctx, &res, "ota", addr, img)
		if r.code != 1 || res.Update == nil || res.Update.Result != proto.ResultRolledBack || res.Update.Slot != "A" {
			t.Fatalf("ota of an image whose health check fails: exit %d, update %+v, error %q; want exit 1, rolled back from slot A", r.code, res.Update, res.Error)
		}
		if !bytes.Contains(b.Console()[from:], []byte("boardlink-health: slot A version 3.0.0: fail")) {
			t.Errorf("the console has no failed health check of slot A")
		}
		b.checkRunning(ctx, t, "B", "2.0.0")
		b.checkStatus(ctx, t, "B", "2.0.0", "3.0.0", proto.ResultRolledBack)
	})

	step("a power cut in the trial boot falls back", func(t *testing.T) {
		img, _ := buildImage(ctx, t, b, key, qemuboard.Release{Version: "3.0.1", Health: "hang"})
		from := len(b.Console())
		octx, cancel := context.WithCancel(ctx)
		run := b.start(octx, "ota", addr, img)
		// The trial boot of slot A is up and its health check hangs: cut
		// the power there.
		if _, err := b.WaitConsole(ctx, from, "boardlink-health: slot A version 3.0.1: hang"); err != nil {
			cancel()
			run.wait()
			t.Fatal(err)
		}
		b.Kill()
		cancel()
		run.wait()
		b.powerOn(ctx)
		// The real GRUB fell back by itself: grub.cfg of docs/boot.md.
		b.waitConsole(ctx, "Trial of slot A was not committed: falling back to B")
		b.checkRunning(ctx, t, "B", "2.0.0")
		b.checkStatus(ctx, t, "B", "2.0.0", "3.0.1", proto.ResultRolledBack)
	})

	step("an interrupted update resumes", func(t *testing.T) {
		// Random bytes that no slot holds: 48 chunks to send.
		img, _ := buildImage(ctx, t, b, key, qemuboard.Release{Version: "4.0.0", Health: "pass", Filler: 48 * chunkSize})
		im, err := image.OpenFile(img)
		if err != nil {
			t.Fatal(err)
		}
		defer im.Close()
		// Reset the machine (QMP system_reset: what the guest had not
		// written is lost, as on a power cut) once half of what the board
		// needs has been sent. What the host sent is no measure of what the
		// board has: the stream's window holds far more than it has read.
		// So the sender waits in its progress call until the board has
		// taken every chunk sent (it syncs every 8, so most of them are on
		// its disk), and the reset finds a quiet line: bytes still arriving
		// on ttyS1 would reach the firmware, which reads COM2 as a
		// keyboard too (OVMF entered its setup on an ESC in the data).
		c := b.dial(ctx, nil)
		plan, err := c.OTAPlan(ctx, im, false)
		if err != nil {
			t.Fatal(err)
		}
		held := plan.Chunks - len(plan.Need)
		var reset error
		cut, sent := false, 0
		rep, err := c.Prepare(ctx, im, dispatcher.OTAOptions{Progress: func(p dispatcher.OTAProgress) {
			if p.Phase != "send" || cut {
				return
			}
			if sent++; p.Sent < p.ToSend/2 {
				return
			}
			cut = true
			if reset = waitChunksDone(ctx, c, held+sent); reset == nil {
				_, reset = b.QMP(ctx, "system_reset")
			}
			c.Close() // at once, before the link sends anything more
		}})
		c.Close()
		if !cut || err == nil || reset != nil {
			t.Fatalf("the prepare of 4.0.0 ended with %v; the reset: %v", err, reset)
		}
		first := rep.Plan
		if _, err := b.WaitBeacon(ctx); err != nil {
			t.Fatal(err)
		}
		var res otaResult
		if r := b.cliJSON(ctx, &res, "ota", addr, img); r.code != 0 {
			t.Fatalf("ota 4.0.0 after the power cut: exit %d: %s", r.code, res.Error)
		}
		checkCommitted(t, res, "A", "4.0.0")
		p := res.Plan
		t.Logf("resumed: plan have=%d copy=%d need=%d of %d, %d bytes on the link; %d chunks were new", p.Have, p.Copy, len(p.Need), p.Chunks, res.BytesSent, len(first.Need))
		if p.Have == 0 || len(p.Need) >= len(first.Need) {
			t.Errorf("the resumed update needs %d chunks and finds %d in slot A; before the power cut it needed %d: nothing was kept",
				len(p.Need), p.Have, len(first.Need))
		}
		b.checkRunning(ctx, t, "A", "4.0.0")
	})
}

// waitChunksDone waits until the board's update holds n chunks.
func waitChunksDone(ctx context.Context, c *dispatcher.Client, n int) error {
	st, err := c.OTAStatus(ctx)
	for err == nil {
		u := st.Update
		if u == nil || u.Phase != proto.PhasePrepare {
			return fmt.Errorf("the board reports update %+v while chunks go out", u)
		}
		if u.ChunksDone >= n {
			return nil
		}
		var next proto.OTAStatus
		err = c.Conn().Call(ctx, proto.MethodOTAWait, proto.OTAWaitParams{Since: st.Seq, TimeoutMs: 10000}, &next)
		st = next
	}
	return fmt.Errorf("waiting for the board to hold %d chunks: %w", n, err)
}

// otaResult is `boardlink ota --json`.
type otaResult struct {
	Plan      proto.OTAPlan    `json:"plan"`
	Update    *proto.OTAUpdate `json:"update"`
	BytesSent int64            `json:"bytes_sent"`
	Error     string           `json:"error"`
}

func checkCommitted(t *testing.T, res otaResult, slot, version string) {
	t.Helper()
	if u := res.Update; u == nil || u.Result != proto.ResultCommitted || u.Slot != slot || u.Version != version {
		t.Fatalf("ota: update %+v, error %q; want %s committed in slot %s", res.Update, res.Error, version, slot)
	}
}

// buildImage makes the slot image of release and a signed OTA image of
// it with `boardlink image build`, and returns both paths.
func buildImage(ctx context.Context, t *testing.T, b *board, key string, rel qemuboard.Release) (img, payload string) {
	t.Helper()
	dir := t.TempDir()
	payload = filepath.Join(dir, "slot-"+rel.Version+".img")
	if err := qemuboard.SlotImage(ctx, payload, slotPayload, rel); err != nil {
		t.Fatal(err)
	}
	img = filepath.Join(dir, "update-"+rel.Version+".img")
	b.cliOK(ctx, "image", "build", "--key", key, "--model", model, "--version", rel.Version,
		"--chunk-size", fmt.Sprint(chunkSize>>10)+"KiB", payload, "-o", img)
	return img, payload
}

// newChunks lists the chunks of payload whose bytes are nowhere among the
// chunks of slot: what an update from slot must send.
func newChunks(t *testing.T, payload, slot string) []int {
	t.Helper()
	chunks := func(path string) [][sha256.Size]byte {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var sums [][sha256.Size]byte
		for off := 0; off < len(b); off += chunkSize {
			sums = append(sums, sha256.Sum256(b[off:min(off+chunkSize, len(b))]))
		}
		return sums
	}
	have := map[[sha256.Size]byte]bool{}
	for _, s := range chunks(slot) {
		have[s] = true
	}
	need := []int{}
	for i, s := range chunks(payload) {
		if !have[s] {
			need = append(need, i)
		}
	}
	return need
}

// checkRunning checks, through the CLI, that the board runs slot (the
// kernel command line GRUB gave it) holding version.
func (b *board) checkRunning(ctx context.Context, t *testing.T, slot, version string) {
	t.Helper()
	out := b.cliOK(ctx, "exec", b.AgentAddr(), "-n", "--", "cat", "/proc/cmdline", "/slot/etc/boardlink-release").stdout
	if !strings.Contains(out, " boardlink.slot="+slot+" ") || !strings.Contains(out, "VERSION="+version+"\n") {
		t.Errorf("the board runs %q; want slot %s, version %s", out, slot, version)
	}
}

// checkStatus checks `boardlink ota --status`: the board booted and
// committed slot, which holds running, with no trial pending, and its last
// update, of version, ended with result.
func (b *board) checkStatus(ctx context.Context, t *testing.T, slot, running, version string, result proto.Result) {
	t.Helper()
	var st proto.OTAStatus
	b.cliJSON(ctx, &st, "ota", b.AgentAddr(), "--status")
	var booted, active, trial []string
	held := ""
	for _, s := range st.Slots {
		if s.Booted {
			booted = append(booted, s.Name)
			held = s.Version
		}
		if s.Active {
			active = append(active, s.Name)
		}
		if s.Trial {
			trial = append(trial, s.Name)
		}
	}
	u := st.Update
	if !slices.Equal(booted, []string{slot}) || !slices.Equal(active, []string{slot}) || len(trial) != 0 || held != running ||
		u == nil || u.Version != version || u.Phase != proto.PhaseDone || u.Result != result {
		t.Errorf("ota --status: booted %v (holding %q), active %v, trial %v, update %+v; want slot %s (%s) booted and active, no trial, %s %s",
			booted, held, active, trial, u, slot, running, version, result)
	}
}
