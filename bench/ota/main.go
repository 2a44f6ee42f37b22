// Command ota benchmarks A/B OTA updates of a simulated board over a
// loopback WebSocket: how long an update takes and how many bytes cross the
// link, for a full update and for updates that change a few percent of the
// image's chunks, beside a plain push of the same image file over the same
// connection, measured in the same run.
//
// It builds the real boardlinkd into a temporary directory and starts it as
// a sim board (--board sim --no-mdns --sim-boot-delay 50ms, no health
// check) on 127.0.0.1 and a free port, trusting a signing key made for the
// run. A client connected with dispatcher.Dial then runs -runs rounds. Each
// round, for each percentage in -changed (default 1 and 10):
//
//   - builds an image of a fresh random payload of -size bytes in chunks of
//     -chunk bytes, and a second image whose payload is the first one with
//     that percentage of its chunks (at least one) rewritten with random
//     bytes;
//   - pushes the first image file to the board's state directory
//     (dispatcher.Client.Push, the peer; deleted again right after);
//   - updates the board to the first image: a full update, since the
//     payload shares no chunk with either slot;
//   - updates the board to the second image: the board writes its other
//     slot, copies the unchanged chunks from the slot it runs, and only the
//     changed chunks cross the link.
//
// A push and a full update into each slot before the first round warm up
// the caches, the connection and the slot files; they are not counted.
//
// The slot each update writes holds the image from two updates earlier,
// which shares no chunk with the new one: no chunk is ever found already in
// place, and the plan of every update is checked to be exactly as above
// (all chunks sent for a full update; the changed ones sent and the rest
// copied for a delta). Versions increase with every update.
//
// The table gives the median of the runs of each case (a full update is
// measured once per percentage and round) and the ratios against the
// median push: OTA time / push time and OTA bytes / push bytes. An update's
// time is the whole dispatcher.Client.Update call, which includes the board
// writing and verifying the slot, the reboot into it and the commit; the
// output says what each number covers.
//
// Run it from the module root:
//
//	go run ./bench/ota                        # 64 MiB in 1 MiB chunks, median of 3
//	go run ./bench/ota -size 256MiB -runs 5 -changed 1,5,25
//	go run ./bench/ota -factory               # the first update of a factory-flashed slot
//
// Only 127.0.0.1 is used, and no multicast. Everything it starts and
// writes is removed when it ends, also on error or Ctrl-C.
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/boardlink/boardlink/bench/internal/benchkit"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/proto"
)

// bootDelay is the sim board's pause between the end of a boot and the next.
const bootDelay = 50 * time.Millisecond

func main() {
	size := benchkit.Size(64 << 20)
	chunk := benchkit.Size(1 << 20)
	flag.Var(&size, "size", "payload size in bytes; suffixes KiB, MiB, GiB (and KB, MB, GB) are accepted")
	flag.Var(&chunk, "chunk", "chunk size of the images: a power of two from 4KiB to 64MiB")
	runs := flag.Int("runs", 3, "rounds; the median of each case is reported")
	changed := flag.String("changed", "1,10", "comma-separated percentages of chunks changed for the delta updates")
	factory := flag.Bool("factory", false, "measure instead the first update of a slot flashed outside boardlink (factory.go)")
	flag.Parse()
	pcts, err := parsePercents(*changed)
	if err == nil && (size <= 0 || *runs <= 0) {
		err = errors.New("-size and -runs must be positive")
	}
	if err == nil && !image.ValidChunkSize(int64(chunk)) {
		err = fmt.Errorf("-chunk %d: must be a power of two from %d to %d", int64(chunk), image.MinChunkSize, image.MaxChunkSize)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ota:", err)
		os.Exit(2)
	}
	benchkit.Run("ota", func(ctx context.Context) error {
		if *factory {
			return runFactory(ctx, int64(size), int64(chunk), *runs)
		}
		return run(ctx, int64(size), int64(chunk), *runs, pcts)
	})
}

func parsePercents(s string) ([]float64, error) {
	var out []float64
	for f := range strings.SplitSeq(s, ",") {
		p, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || p <= 0 || p > 100 {
			return nil, fmt.Errorf("-changed: %q is not a percentage above 0 and at most 100", f)
		}
		out = append(out, p)
	}
	return out, nil
}

// otaRun is one timed update.
type otaRun struct {
	took    time.Duration // the Update call
	prepare time.Duration // from the call until the board reported the slot prepared
	bytes   int64         // OTAReport.BytesSent
	sent    int           // chunks that crossed the link
	copied  int           // chunks the board copied from its active slot
	reboots int
}

// pushRun is one timed push of an image file.
type pushRun struct {
	took  time.Duration
	bytes int64 // stream bytes the link carried
}

// bench is what a run works with.
type bench struct {
	dir      string // the temporary directory
	key      ed25519.PrivateKey
	b        *board
	c        *dispatcher.Client
	size     int64
	chunk    int64
	chunks   int
	version  int   // the last version installed, as N.0.0
	imgBytes int64 // the size of the last image file built
}

func run(ctx context.Context, size, chunk int64, runs int, pcts []float64) (err error) {
	bn, bin, trust, err := newBench(ctx, size, chunk)
	if err != nil {
		return err
	}
	defer os.RemoveAll(bn.dir)
	tmp := bn.dir
	b, err := startBoard(ctx, bin, tmp, trust)
	if err != nil {
		return err
	}
	defer b.stop()
	bn.b = b
	// The board's death ends the run at once, with its log.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-b.done:
			cancel(fmt.Errorf("boardlinkd exited: %v", b.cmd.ProcessState))
		case <-ctx.Done():
		}
	}()
	defer func() {
		if err != nil && context.Cause(ctx) != nil && !errors.Is(context.Cause(ctx), context.Canceled) {
			err = fmt.Errorf("%w (%v)\n%s", err, context.Cause(ctx), b.logTail(40))
		} else if err != nil {
			err = fmt.Errorf("%w\n%s", err, b.logTail(40))
		}
	}()

	c, err := dispatcher.Dial(ctx, b.ws, b.opts)
	if err != nil {
		return err
	}
	defer c.Close()
	bn.c = c
	fmt.Printf("board: boardlinkd --board sim on %s (pid %d), state dir %s\n", b.ws, b.cmd.Process.Pid, b.state)

	// A warm-up, not counted: one push and a full update into each slot,
	// so that the timed runs pay neither for cold caches nor for the first
	// write of a slot file (the sim board starts with none).
	for i := range 2 {
		warmPayload := filepath.Join(tmp, "warm.payload")
		if err := benchkit.WriteRandom(warmPayload, size); err != nil {
			return err
		}
		warm, err := bn.build(warmPayload)
		if err != nil {
			return err
		}
		if err := os.Remove(warmPayload); err != nil {
			return err
		}
		if i == 0 {
			if _, err := bn.push(ctx, warm); err != nil {
				return fmt.Errorf("warm-up push: %w", err)
			}
		}
		if _, err := bn.update(ctx, warm, -1); err != nil {
			return fmt.Errorf("warm-up update: %w", err)
		}
		if err := removeImages(tmp); err != nil {
			return err
		}
	}
	fmt.Println("warm-up (one push, a full update into each slot; not counted): done")

	fulls := []otaRun{}
	deltas := make([][]otaRun, len(pcts))
	var pushes []pushRun
	for r := range runs {
		for i, pct := range pcts {
			full, delta, k, err := bn.buildPair(ctx, pct)
			if err != nil {
				return err
			}
			fmt.Printf("round %d, %g%%: %d of %d chunks changed\n", r+1, pct, k, bn.chunks)
			p, err := bn.push(ctx, full)
			if err != nil {
				return fmt.Errorf("push: %w", err)
			}
			pushes = append(pushes, p)
			fmt.Printf("  push        %s, %s on the link\n", benchkit.Seconds(p.took), benchkit.MiB(p.bytes))
			f, err := bn.update(ctx, full, -1)
			if err != nil {
				return fmt.Errorf("full update: %w", err)
			}
			fulls = append(fulls, f)
			printRun("full", f)
			d, err := bn.update(ctx, delta, k)
			if err != nil {
				return fmt.Errorf("%g%% update: %w", pct, err)
			}
			deltas[i] = append(deltas[i], d)
			printRun(fmt.Sprintf("%g%%", pct), d)
			if err := removeImages(tmp); err != nil {
				return err
			}
		}
	}

	pushTook := median(pushes, func(p pushRun) float64 { return p.took.Seconds() })
	pushBytes := median(pushes, func(p pushRun) float64 { return float64(p.bytes) })

	fmt.Println()
	fmt.Printf("payload: %s of random bytes in %d chunks of %s; image file %s; rounds: %d (median); CPUs: %d\n",
		benchkit.Human(size), bn.chunks, benchkit.Human(chunk), benchkit.MiB(bn.imgBytes), runs, runtime.NumCPU())
	fmt.Printf("board: real boardlinkd, --board sim, ws on 127.0.0.1, --sim-boot-delay %s, no health check\n", bootDelay)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "update\tn\tchunks sent\tchunks copied\tlink bytes\t% of payload\ttime\tprepare\tactivate..commit\treboots\ttime OTA/push\tbytes OTA/push\t")
	row := func(name string, rs []otaRun) {
		took := median(rs, func(o otaRun) float64 { return o.took.Seconds() })
		prep := median(rs, func(o otaRun) float64 { return o.prepare.Seconds() })
		rest := median(rs, func(o otaRun) float64 { return (o.took - o.prepare).Seconds() })
		bytes := median(rs, func(o otaRun) float64 { return float64(o.bytes) })
		// The plans are checked to be the same in every run.
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%.2f%%\t%.3fs\t%.3fs\t%.3fs\t%s\t%.2f\t%.4f\t\n",
			name, len(rs), rs[0].sent, rs[0].copied, benchkit.MiB(int64(bytes)), 100*bytes/float64(size),
			took, prep, rest, span(rs, func(o otaRun) int { return o.reboots }),
			took/pushTook, bytes/pushBytes)
	}
	row("full", fulls)
	for i, pct := range pcts {
		row(fmt.Sprintf("%g%% of chunks", pct), deltas[i])
	}
	fmt.Fprintf(tw, "push (peer)\t%d\t-\t-\t%s\t%.2f%%\t%.3fs\t-\t-\t0\t1.00\t1.0000\t\n",
		len(pushes), benchkit.MiB(int64(pushBytes)), 100*pushBytes/float64(size), pushTook)
	tw.Flush()
	fmt.Println()
	fmt.Printf("runs, full: %s\n", list(fulls))
	for i, pct := range pcts {
		fmt.Printf("runs, %g%%: %s\n", pct, list(deltas[i]))
	}
	ps := make([]string, len(pushes))
	for i, p := range pushes {
		ps[i] = benchkit.Seconds(p.took)
	}
	fmt.Printf("runs, push: %s\n", strings.Join(ps, " "))
	fmt.Println()
	for _, line := range []string{
		"time: the whole dispatcher.Client.Update call on an open connection, until the board reports the update committed:",
		"  prepare = ota.start (the board plans, opens the other slot and copies the unchanged chunks from the slot it runs),",
		"  sending the chunks it lacks (the board hashes each on arrival, writes it, fsyncs every 8 chunks), and its final",
		"  check (it reads back and hashes the whole slot); activate..commit = setting the trial boot, the reboot into the",
		"  new slot (agent stop, --sim-boot-delay, agent start, the client reconnecting), the health check (none configured",
		"  here) and the commit. Building and opening the image are not timed.",
		"link bytes: the stream payload the connection carried (transport Stats.StreamBytesOut): for an update, each chunk sent",
		"  plus its 4-byte index; for push, the whole image file (manifest, signature and tar headers around the payload).",
		"  JSON-RPC calls and WebSocket/TCP framing are not counted, for either.",
		"push (peer): dispatcher.Client.Push of the full image file over the same client to STATE_DIR/push.img, deleted after each",
		"  run: the host hashes the file, streams it, the board hashes and fsyncs it. It is what copying the image to the board",
		"  costs without OTA: no reboot, nothing installed.",
		"ratios: OTA / push, from the medians; below 1 is cheaper than pushing the image.",
	} {
		fmt.Println(line)
	}
	return nil
}

// newBench makes the run's temporary directory (the caller removes
// bn.dir), builds boardlinkd into it and makes the run's signing key,
// returning the binary and the public key file a board trusts.
func newBench(ctx context.Context, size, chunk int64) (bn *bench, bin, trust string, err error) {
	tmp, err := os.MkdirTemp("", "boardlink-bench-ota-")
	if err != nil {
		return nil, "", "", err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	bn = &bench{dir: tmp, size: size, chunk: chunk, chunks: int((size + chunk - 1) / chunk)}
	fmt.Println("building boardlinkd")
	bin = filepath.Join(tmp, "boardlinkd")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/boardlink/boardlink/cmd/boardlinkd").CombinedOutput(); err != nil {
		return nil, "", "", fmt.Errorf("go build boardlinkd: %v\n%s", err, out)
	}
	pub, priv, err := image.GenerateKey()
	if err != nil {
		return nil, "", "", err
	}
	keyPath := filepath.Join(tmp, "key")
	if err := image.WriteKeyPair(keyPath, pub, priv); err != nil {
		return nil, "", "", err
	}
	bn.key = priv
	return bn, bin, keyPath + ".pub", nil
}

func printRun(name string, o otaRun) {
	fmt.Printf("  %-10s  %s (prepare %s), %d sent / %d copied, %s on the link, %d reboot(s)\n",
		name, benchkit.Seconds(o.took), benchkit.Seconds(o.prepare), o.sent, o.copied, benchkit.MiB(o.bytes), o.reboots)
}

// removeImages removes the image files in dir.
func removeImages(dir string) error {
	imgs, err := filepath.Glob(filepath.Join(dir, "*.img"))
	for _, p := range imgs {
		if rerr := os.Remove(p); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// buildPair builds a full image of a fresh random payload and a delta image
// whose payload has pct% of its chunks (at least one) rewritten, both with
// the next versions, and returns their paths and how many chunks differ.
func (bn *bench) buildPair(ctx context.Context, pct float64) (full, delta string, changed int, err error) {
	if err := ctx.Err(); err != nil {
		return "", "", 0, err
	}
	base := filepath.Join(bn.dir, "base.payload")
	if err := benchkit.WriteRandom(base, bn.size); err != nil {
		return "", "", 0, err
	}
	defer os.Remove(base)
	changed = max(1, int(math.Round(pct*float64(bn.chunks)/100)))
	changed = min(changed, bn.chunks)
	variant := filepath.Join(bn.dir, "variant.payload")
	if err := benchkit.CopyFile(base, variant); err != nil {
		return "", "", 0, err
	}
	defer os.Remove(variant)
	if err := rewriteChunks(variant, bn.size, bn.chunk, mrand.Perm(bn.chunks)[:changed]); err != nil {
		return "", "", 0, err
	}
	if full, err = bn.build(base); err != nil {
		return "", "", 0, err
	}
	if delta, err = bn.build(variant); err != nil {
		return "", "", 0, err
	}
	return full, delta, changed, nil
}

// build builds an image of the payload file with the next version and
// returns its path.
func (bn *bench) build(payload string) (string, error) {
	bn.version++
	v := fmt.Sprintf("%d.0.0", bn.version)
	out := filepath.Join(bn.dir, v+".img")
	if _, err := image.BuildFile(out, payload, image.BuildOptions{Key: bn.key, Models: []string{"sim"}, Version: v, ChunkSize: bn.chunk}); err != nil {
		return "", err
	}
	st, err := os.Stat(out)
	if err != nil {
		return "", err
	}
	bn.imgBytes = st.Size()
	return out, nil
}

// push times a push of the image file at path to the board's state
// directory, and deletes the copy.
func (bn *bench) push(ctx context.Context, path string) (pushRun, error) {
	remote := filepath.Join(bn.b.state, "push.img")
	if err := benchkit.RemoveWithPartials(remote); err != nil {
		return pushRun{}, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return pushRun{}, err
	}
	conn := bn.c.Conn()
	before := conn.Stats().StreamBytesOut
	start := time.Now()
	res, err := bn.c.Push(ctx, path, remote, dispatcher.TransferOptions{})
	took := time.Since(start)
	if err != nil {
		return pushRun{}, err
	}
	moved := conn.Stats().StreamBytesOut - before
	if res.Offset != 0 || res.Bytes != st.Size() {
		return pushRun{}, fmt.Errorf("not a full transfer of the file: offset %d, %d of %d bytes", res.Offset, res.Bytes, st.Size())
	}
	return pushRun{took: took, bytes: moved}, benchkit.RemoveWithPartials(remote)
}

// update times an update of the board to the image at path and checks that
// its plan was as intended: every chunk sent (changed < 0), or changed
// chunks sent and the rest copied from the active slot.
func (bn *bench) update(ctx context.Context, path string, changed int) (otaRun, error) {
	im, err := image.OpenFile(path)
	if err != nil {
		return otaRun{}, err
	}
	defer im.Close()
	var mu sync.Mutex
	var prepared time.Time
	opts := dispatcher.OTAOptions{Progress: func(p dispatcher.OTAProgress) {
		if p.Phase == "send" || p.Phase == string(proto.PhasePrepare) {
			return
		}
		mu.Lock()
		if prepared.IsZero() {
			prepared = time.Now()
		}
		mu.Unlock()
	}}
	start := time.Now()
	rep, err := bn.c.Update(ctx, im, opts)
	took := time.Since(start)
	if err != nil {
		return otaRun{}, err
	}
	mu.Lock()
	at := prepared
	mu.Unlock()
	if at.IsZero() {
		return otaRun{}, errors.New("the board never reported the slot prepared")
	}
	o := otaRun{took: took, prepare: at.Sub(start), bytes: rep.BytesSent,
		sent: len(rep.Plan.Need), copied: rep.Plan.Copy, reboots: rep.Reboots}
	p := rep.Plan
	wantSent, wantCopied := p.Chunks, 0
	if changed >= 0 {
		wantSent, wantCopied = changed, p.Chunks-changed
	}
	if p.Chunks != bn.chunks || len(p.Need) != wantSent || p.Copy != wantCopied || p.Have != 0 {
		return otaRun{}, fmt.Errorf("plan of %s: %d chunks, %d to send, %d to copy, %d in place; want %d to send, %d to copy, none in place",
			im.Manifest.Version, p.Chunks, len(p.Need), p.Copy, p.Have, wantSent, wantCopied)
	}
	if u := rep.Update; u == nil || u.Result != proto.ResultCommitted || u.Slot != p.Slot {
		return otaRun{}, fmt.Errorf("update of %s did not commit slot %s: %+v", im.Manifest.Version, p.Slot, u)
	}
	st, err := bn.c.OTAStatus(ctx)
	if err != nil {
		return otaRun{}, err
	}
	for _, s := range st.Slots {
		if s.Booted && (s.Name != p.Slot || s.Version != im.Manifest.Version) {
			return otaRun{}, fmt.Errorf("after the update to %s in slot %s the board runs slot %s with %s", im.Manifest.Version, p.Slot, s.Name, s.Version)
		}
	}
	return o, nil
}

// board is a boardlinkd process running a sim board.
type board struct {
	cmd     *exec.Cmd
	done    chan struct{}
	ws      string
	state   string
	logPath string
	opts    dispatcher.DialOptions
}

// boardToken is the token of the benchmark's board.
const boardToken = "bench-ota-board-token"

// startBoard starts boardlinkd as a sim board on a free loopback port and
// waits until it answers.
func startBoard(ctx context.Context, bin, dir, trustKey string) (*board, error) {
	port, err := benchkit.FreePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) // every boot listens here again
	b := &board{done: make(chan struct{}), ws: "wss://" + addr, state: filepath.Join(dir, "state"), logPath: filepath.Join(dir, "boardlinkd.log"),
		opts: dispatcher.DialOptions{Token: boardToken, Trust: dispatcher.NewKnownBoards("")}}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(boardToken), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(b.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	b.cmd = exec.Command(bin, "--board", "sim", "--state-dir", b.state, "--listen", addr, "--no-mdns", "--token-file", tokenFile,
		"--trust-key", trustKey, "--sim-boot-delay", bootDelay.String())
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C reaches only us, and we stop the
	// board. If we die without stopping it, the kernel does (Pdeathsig).
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := b.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { b.cmd.Wait(); close(b.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := dispatcher.Dial(dctx, b.ws, b.opts)
		cancel()
		if err == nil {
			c.Close()
			return b, nil
		}
		select {
		case <-b.done:
			return nil, fmt.Errorf("boardlinkd exited: %v\n%s", b.cmd.ProcessState, b.logTail(40))
		case <-ctx.Done():
			b.stop()
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			b.stop()
			return nil, fmt.Errorf("boardlinkd did not answer on %s within 30s: %v\n%s", b.ws, err, b.logTail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop asks boardlinkd to shut down (SIGINT) and waits; after 20s it kills
// its process group.
func (b *board) stop() {
	b.cmd.Process.Signal(os.Interrupt)
	select {
	case <-b.done:
	case <-time.After(20 * time.Second):
		syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		<-b.done
	}
}

func (b *board) logTail(n int) string {
	raw, _ := os.ReadFile(b.logPath)
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(raw) == 0 {
		return "(boardlinkd wrote nothing)"
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "boardlinkd log (last lines):\n" + strings.Join(lines, "\n")
}

// rewriteChunks overwrites the chunks of the file at path with the given
// indexes with random bytes.
func rewriteChunks(path string, size, chunk int64, idx []int) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, chunk)
	for _, i := range idx {
		off := int64(i) * chunk
		data := buf[:min(chunk, size-off)]
		rand.Read(data)
		if _, err := f.WriteAt(data, off); err != nil {
			return err
		}
	}
	return f.Close()
}

// median is the median of f over xs.
func median[T any](xs []T, f func(T) float64) float64 {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	return benchkit.Median(v)
}

// span is "n" when every run gives n, else "min-max".
func span(rs []otaRun, f func(otaRun) int) string {
	lo, hi := f(rs[0]), f(rs[0])
	for _, r := range rs[1:] {
		lo, hi = min(lo, f(r)), max(hi, f(r))
	}
	if lo == hi {
		return strconv.Itoa(lo)
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}

func list(rs []otaRun) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = benchkit.Seconds(r.took)
	}
	return strings.Join(parts, " ")
}
