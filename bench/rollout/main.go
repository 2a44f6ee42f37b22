// Command rollout benchmarks a lab rollout: one signed image to -boards
// simulated boards (default 1,000) on loopback, -C at a time (default 64),
// with dispatcher.PlanRollout and dispatcher.RunRollout, beside what a lab
// script without boardlink's rollout would do, measured in the same run on
// the same lab: push the image file to every board with
// dispatcher.Client.Push, on a fresh connection per board, -C at a time.
//
// Two processes, so that the dispatcher's memory is its own. The program
// runs itself again (os.Executable, with an environment marker) as the lab:
// that child starts the boards with internal/simlab (each one the real
// agent with its A/B update machine, listening on 127.0.0.1; a boot delay
// of 50ms; no health check; no mDNS), trusting a signing key made for the
// run, prints the boards' addresses and state directories as one line of
// JSON, and runs until its standard input closes; then it stops the lab
// cleanly and prints its own peak memory. Both processes raise their open
// files limit to the hard limit: every connection is a file descriptor on
// both sides.
//
// The parent is the dispatcher. It writes a random payload of -size bytes,
// builds an image of it in chunks of -chunk bytes, and then measures, one
// after the other:
//
//   - rollout: PlanRollout then RunRollout over every board, Concurrency
//     -C, no failure limit. Every board must end committed; the table
//     gives the result counts otherwise. Stage times come from the
//     rollout's Events.
//   - push (peer): Client.Push of the image file into every board's state
//     directory (STATE_DIR/push.img), each on a connection of its own
//     opened with dispatcher.Dial and closed after, -C at a time.
//
// For each it reports the total time, per-board times, the dispatcher's
// peak memory over that phase only, and the bytes read from the image
// file. Peak RSS is the kernel's high-water mark (VmHWM in
// /proc/self/status), reset at the start of each phase by writing 5 to
// /proc/self/clear_refs; getrusage(RUSAGE_SELF).Maxrss is printed beside
// it (see the notes: on Linux it never reads below the peak RSS of the
// process that started this one, the go command under `go run`). Peak Go
// heap (heap objects, as MemStats.HeapAlloc) and goroutines are sampled
// every 50ms with runtime/metrics. Each phase starts after a GC that
// returns freed memory to the OS.
//
// Image bytes read: for the rollout, Report.ImageBytesRead (the chunk
// cache reads each chunk once, so it should equal the payload: ratio
// 1.00); for the push, what Client.Push reads: the whole file twice per
// board (it hashes the file, then streams it). The process's read()
// bytes (rchar in /proc/self/io, which also counts the sockets) are given
// as a cross-check for both.
//
// Run it from the module root:
//
//	go run ./bench/rollout                    # 1,000 boards, 4 MiB image in 256 KiB chunks, -C 64
//	go run ./bench/rollout -boards 100 -size 16MiB -chunk 1MiB -C 16
//
// Only 127.0.0.1 is used, and no multicast. Everything it starts and
// writes is removed when it ends, also on error or Ctrl-C; if it is
// killed, the lab process stops and removes it.
package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/boardlink/boardlink/bench/internal/benchkit"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/proto"
)

const (
	// labEnv marks the child process that runs the lab; its value is the
	// lab's configuration, as JSON.
	labEnv = "BOARDLINK_BENCH_ROLLOUT_LAB"
	// bootDelay is the sim boards' pause between the end of a boot and
	// the next.
	bootDelay = 50 * time.Millisecond
	// version is the image's version; the boards start without one.
	version = "1.0.0"
	// sampleEvery is the memory sampler's period.
	sampleEvery = 50 * time.Millisecond
	// labStartTimeout bounds the lab's start; labStopTimeout its clean stop.
	labStartTimeout = 10 * time.Minute
	labStopTimeout  = 3 * time.Minute
)

func main() {
	if cfg := os.Getenv(labEnv); cfg != "" {
		os.Exit(labMain(cfg))
	}
	size := benchkit.Size(4 << 20)
	chunk := benchkit.Size(256 << 10)
	flag.Var(&size, "size", "payload size in bytes; suffixes KiB, MiB, GiB (and KB, MB, GB) are accepted")
	flag.Var(&chunk, "chunk", "chunk size of the image: a power of two from 4KiB to 64MiB")
	boards := flag.Int("boards", 1000, "simulated boards in the lab")
	conc := flag.Int("C", 64, "boards worked on at once, by the rollout (each stage) and by the push")
	flag.Parse()
	var err error
	switch {
	case flag.NArg() > 0:
		err = fmt.Errorf("unexpected arguments: %q", flag.Args())
	case size <= 0:
		err = errors.New("-size must be positive")
	case !image.ValidChunkSize(int64(chunk)):
		err = fmt.Errorf("-chunk %d: must be a power of two from %d to %d", int64(chunk), image.MinChunkSize, image.MaxChunkSize)
	case *boards < 1 || *conc < 1:
		err = errors.New("-boards and -C must be at least 1")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rollout:", err)
		os.Exit(2)
	}
	benchkit.Run("rollout", func(ctx context.Context) error {
		return run(ctx, int64(size), int64(chunk), *boards, *conc)
	})
}

// labConfig is what the parent tells the lab process.
type labConfig struct {
	Boards int    `json:"boards"`
	Dir    string `json:"dir"`
	Key    string `json:"key"` // the public key file the boards trust
	// Tmp is the parent's temporary directory, which the lab removes if
	// the parent died without doing so.
	Tmp string `json:"tmp"`
}

// labHello is the lab's first line on stdout, once every board is up.
type labHello struct {
	Pid     int        `json:"pid"`
	Boards  []labBoard `json:"boards"`
	StartMs int64      `json:"start_ms"`
	NoFile  uint64     `json:"nofile"`  // its open files limit
	RSSKiB  int64      `json:"rss_kib"` // with every board up and idle
}

type labBoard struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
	Dir  string `json:"dir"`
}

// labBye is the lab's last line, once it stopped.
type labBye struct {
	HWMKiB int64  `json:"hwm_kib"` // its peak RSS over its life
	StopMs int64  `json:"stop_ms"`
	Err    string `json:"err,omitempty"`
}

// labMain runs the lab process.
func labMain(raw string) int {
	var cfg labConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "rollout lab:", err)
		return 2
	}
	nofile, err := raiseNoFile()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rollout lab: open files limit:", err)
	}
	pub, err := image.LoadPublicKey(cfg.Key)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rollout lab:", err)
		return 1
	}
	ppid := os.Getppid()
	// Writing to stdout once the parent is gone must not kill the lab
	// before it stopped.
	signal.Ignore(syscall.SIGPIPE)
	// A signal ends the start, or the run: the parent closing stdin is
	// the usual way, SIGTERM comes when the parent died (Pdeathsig).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	lab, err := simlab.Start(ctx, simlab.Options{Boards: cfg.Boards, Dir: cfg.Dir, Token: labToken,
		TrustKeys: []ed25519.PublicKey{pub}, BootDelay: bootDelay})
	if err != nil {
		fmt.Fprintln(os.Stderr, "rollout lab: start:", err)
		return 1
	}
	hello := labHello{Pid: os.Getpid(), StartMs: time.Since(start).Milliseconds(), NoFile: nofile}
	for _, b := range lab.Boards {
		hello.Boards = append(hello.Boards, labBoard{ID: b.ID, Addr: b.Addr(), Dir: b.Dir()})
	}
	runtime.GC()
	hello.RSSKiB, _ = procStatus("VmRSS")
	out := json.NewEncoder(os.Stdout)
	if err := out.Encode(hello); err != nil {
		fmt.Fprintln(os.Stderr, "rollout lab:", err)
	}

	eof := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(eof) }()
	select {
	case <-eof:
	case <-ctx.Done():
	}
	stopStart := time.Now()
	sctx, cancel := context.WithTimeout(context.Background(), labStopTimeout)
	defer cancel()
	bye := labBye{}
	if err := lab.Stop(sctx); err != nil {
		bye.Err = err.Error()
	}
	bye.StopMs = time.Since(stopStart).Milliseconds()
	bye.HWMKiB, _ = procStatus("VmHWM")
	if os.Getppid() != ppid && cfg.Tmp != "" {
		os.RemoveAll(cfg.Tmp) // the parent died: nobody else will
	}
	out.Encode(bye) // an error (no reader left) is no longer fatal: SIGPIPE is ignored
	if bye.Err != "" {
		return 1
	}
	return 0
}

// lab is the lab process, seen from the parent.
type lab struct {
	cmd   *exec.Cmd
	in    *os.File // its stdin: closing it stops the lab
	lines chan string
	done  chan struct{}
	hello labHello
	bye   *labBye
}

// startLab runs this program again as the lab process and waits until
// every board is up.
func startLab(ctx context.Context, cfg labConfig) (*lab, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	l := &lab{in: inW, lines: make(chan string, 4), done: make(chan struct{})}
	l.cmd = exec.Command(exe)
	l.cmd.Env = append(os.Environ(), labEnv+"="+string(raw))
	l.cmd.Stdin, l.cmd.Stdout, l.cmd.Stderr = inR, outW, os.Stderr
	// Its own process group: a Ctrl-C reaches only us, and we stop the
	// lab. If we die without stopping it, the kernel tells it (Pdeathsig).
	l.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	err = l.cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, err
	}
	go func() {
		defer outR.Close()
		sc := bufio.NewScanner(outR)
		sc.Buffer(make([]byte, 64<<10), 64<<20) // the hello of thousands of boards
		for sc.Scan() {
			l.lines <- sc.Text()
		}
		close(l.lines)
	}()
	go func() { l.cmd.Wait(); close(l.done) }()

	timer := time.NewTimer(labStartTimeout)
	defer timer.Stop()
	select {
	case line, ok := <-l.lines:
		if !ok {
			l.in.Close()
			<-l.done
			return nil, fmt.Errorf("the lab process exited before its boards were up: %v", l.cmd.ProcessState)
		}
		if err := json.Unmarshal([]byte(line), &l.hello); err != nil || len(l.hello.Boards) != cfg.Boards {
			l.stop()
			return nil, fmt.Errorf("the lab process said %.200q: want its %d boards (%v)", line, cfg.Boards, err)
		}
		return l, nil
	case <-ctx.Done():
		l.stop()
		return nil, ctx.Err()
	case <-timer.C:
		l.stop()
		return nil, fmt.Errorf("the lab's %d boards were not up within %s", cfg.Boards, labStartTimeout)
	}
}

// stop closes the lab's stdin, which stops it cleanly, and waits; after
// labStopTimeout it kills its process group.
func (l *lab) stop() {
	l.in.Close()
	timer := time.NewTimer(labStopTimeout)
	defer timer.Stop()
	for {
		select {
		case line, ok := <-l.lines:
			if !ok {
				l.lines = nil // keep waiting for the exit
				continue
			}
			var bye labBye
			if json.Unmarshal([]byte(line), &bye) == nil && bye.StopMs+bye.HWMKiB > 0 {
				l.bye = &bye
			}
		case <-l.done:
			return
		case <-timer.C:
			fmt.Fprintf(os.Stderr, "rollout: the lab did not stop within %s: killing it\n", labStopTimeout)
			syscall.Kill(-l.cmd.Process.Pid, syscall.SIGKILL)
			<-l.done
			return
		}
	}
}

// phase is what one phase (rollout or push) measured.
type phase struct {
	took      time.Duration
	perBoard  []time.Duration
	ok        int
	counts    map[string]int
	reasons   []string // a few distinct failure reasons
	retries   int64
	imageRead int64 // bytes read from the image file
	linkBytes int64 // stream bytes sent to the boards
	mem       memUse
}

// memUse is the dispatcher's memory over a phase.
type memUse struct {
	baseKiB    int64  // RSS at the start, after a GC
	hwmKiB     int64  // VmHWM at the end; -1 if it could not be reset
	maxrssKiB  int64  // getrusage Maxrss at the end
	sampledKiB int64  // highest RSS sampled
	heap       uint64 // highest heap objects bytes sampled
	goroutines uint64 // most goroutines sampled
	rchar      int64  // bytes read by read() and friends, files and sockets
}

func run(ctx context.Context, size, chunk int64, boards, conc int) error {
	nofile, err := raiseNoFile()
	if err != nil {
		return fmt.Errorf("open files limit: %w", err)
	}
	tmp, err := os.MkdirTemp("", "boardlink-bench-rollout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	pub, priv, err := image.GenerateKey()
	if err != nil {
		return err
	}
	keyPath := filepath.Join(tmp, "key")
	if err := image.WriteKeyPair(keyPath, pub, priv); err != nil {
		return err
	}

	fmt.Printf("starting %d sim boards in a lab process\n", boards)
	l, err := startLab(ctx, labConfig{Boards: boards, Dir: filepath.Join(tmp, "lab"), Key: keyPath + ".pub", Tmp: tmp})
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	defer l.stop()
	// The lab's death ends the run at once.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-l.done:
			cancel(fmt.Errorf("the lab process exited: %v", l.cmd.ProcessState))
		case <-ctx.Done():
		}
	}()
	fmt.Printf("lab: pid %d, %d boards up in %.1fs, RSS %s idle, open files limit %d (dispatcher: %d)\n",
		l.hello.Pid, boards, float64(l.hello.StartMs)/1000, kib(l.hello.RSSKiB), l.hello.NoFile, nofile)

	payload := filepath.Join(tmp, "payload")
	if err := benchkit.WriteRandom(payload, size); err != nil {
		return err
	}
	imgPath := filepath.Join(tmp, "rollout-"+version+".img")
	m, err := image.BuildFile(imgPath, payload, image.BuildOptions{Key: priv, Models: []string{simlab.DefaultModel},
		Version: version, ChunkSize: chunk})
	if err != nil {
		return err
	}
	if err := os.Remove(payload); err != nil {
		return err
	}
	st, err := os.Stat(imgPath)
	if err != nil {
		return err
	}
	fileSize := st.Size()
	fileSum, err := benchkit.HashFile(imgPath)
	if err != nil {
		return err
	}
	chunks := int((size + chunk - 1) / chunk)
	fmt.Printf("image: %s payload in %d chunks of %s, image file %s\n", benchkit.Human(size), chunks, benchkit.Human(chunk), benchkit.MiB(fileSize))

	s := startSampler()
	defer s.stop()

	fmt.Printf("rollout: %d boards, -C %d\n", boards, conc)
	ro, stages, err := benchRollout(ctx, s, imgPath, l.hello.Boards, conc, chunks, m.PayloadSize)
	if err != nil {
		return fmt.Errorf("rollout: %w", cause(ctx, err))
	}
	fmt.Printf("  %s: %d of %d committed\n", benchkit.Seconds(ro.took), ro.ok, boards)

	fmt.Printf("push (peer): the image file to %d boards, a connection each, -C %d\n", boards, conc)
	pu, err := benchPush(ctx, s, imgPath, fileSize, fileSum, l.hello.Boards, conc)
	if err != nil {
		return fmt.Errorf("push: %w", cause(ctx, err))
	}
	fmt.Printf("  %s: %d of %d pushed\n", benchkit.Seconds(pu.took), pu.ok, boards)

	s.stop()
	l.stop()
	report(l, boards, conc, size, chunk, chunks, fileSize, ro, pu, stages)

	var bad []string
	if ro.ok != boards {
		bad = append(bad, fmt.Sprintf("rollout: %d of %d boards committed (%s)", ro.ok, boards, countsString(ro.counts)))
	}
	if pu.ok != boards {
		bad = append(bad, fmt.Sprintf("push: %d of %d boards pushed", pu.ok, boards))
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}

// cause adds why ctx ended (the lab's exit, say) to err.
func cause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return fmt.Errorf("%w (%v)", err, c)
	}
	return err
}

// stageTimes are the rollout's stage durations, from its Events.
type stageTimes struct {
	plan, prepare, execute time.Duration
}

// benchRollout runs and measures a rollout of the image at imgPath to
// every board.
func benchRollout(ctx context.Context, s *sampler, imgPath string, boards []labBoard, conc, chunks int, payload int64) (phase, stageTimes, error) {
	im, err := image.OpenFile(imgPath)
	if err != nil {
		return phase{}, stageTimes{}, err
	}
	defer im.Close()
	targets := make([]dispatcher.Target, len(boards))
	for i, b := range boards {
		targets[i] = dispatcher.Target{ID: b.ID, Address: b.Addr, Model: simlab.DefaultModel}
	}
	var (
		mu      sync.Mutex
		at      = map[string]time.Time{}
		retries atomic.Int64
	)
	cfg := dispatcher.RolloutConfig{Image: im, Concurrency: conc, MaxFailures: -1, DialOptions: labDialOptions(),
		Events: func(e dispatcher.Event) {
			switch {
			case e.Kind == "stage" && e.Board == "":
				mu.Lock()
				at[e.Stage] = e.Time
				mu.Unlock()
			case e.Kind == "retry":
				retries.Add(1)
			}
		}}

	mark := s.begin()
	start := time.Now()
	plan := dispatcher.PlanRollout(ctx, cfg, targets)
	planned := time.Now()
	if err := ctx.Err(); err != nil {
		return phase{}, stageTimes{}, err
	}
	for _, bp := range plan.Boards {
		if bp.Result == "" && bp.NeedChunks != chunks {
			return phase{}, stageTimes{}, fmt.Errorf("the plan of %s needs %d chunks: want all %d", bp.ID, bp.NeedChunks, chunks)
		}
	}
	rep := dispatcher.RunRollout(ctx, cfg, plan, nil)
	took := time.Since(start)
	mem := s.end(mark)
	if err := ctx.Err(); err != nil {
		return phase{}, stageTimes{}, err
	}

	p := phase{took: took, counts: rep.Counts, retries: retries.Load(), imageRead: rep.ImageBytesRead, mem: mem}
	seen := map[string]bool{}
	for _, b := range rep.Boards {
		p.perBoard = append(p.perBoard, time.Duration(b.DurationMs)*time.Millisecond)
		p.linkBytes += b.BytesSent
		if b.Result == string(proto.ResultCommitted) {
			p.ok++
		} else if r := b.Result + ": " + b.Reason; !seen[r] && len(p.reasons) < 5 {
			seen[r] = true
			p.reasons = append(p.reasons, b.ID+" "+r)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	st := stageTimes{plan: planned.Sub(at[dispatcher.StagePlan]),
		prepare: at[dispatcher.StageExecute].Sub(at[dispatcher.StagePrepare]),
		execute: at[dispatcher.StageDone].Sub(at[dispatcher.StageExecute])}
	return p, st, nil
}

// benchPush pushes the image file into every board's state directory, a
// fresh connection per board, conc at once, and measures it.
func benchPush(ctx context.Context, s *sampler, imgPath string, fileSize int64, fileSum string, boards []labBoard, conc int) (phase, error) {
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		p        = phase{counts: map[string]int{}}
		seen     = map[string]bool{}
		perBoard = make([]time.Duration, len(boards))
	)
	mark := s.begin()
	start := time.Now()
	sem := make(chan struct{}, conc)
	for i, b := range boards {
		sem <- struct{}{}
		if ctx.Err() != nil {
			<-sem
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			t0 := time.Now()
			res, err := pushOne(ctx, b, imgPath)
			perBoard[i] = time.Since(t0)
			if err == nil && (res.Offset != 0 || res.Bytes != fileSize || res.SHA256 != fileSum) {
				err = fmt.Errorf("not a full copy: offset %d, %d of %d bytes, sha256 %s", res.Offset, res.Bytes, fileSize, res.SHA256)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				p.counts["failed"]++
				if r := err.Error(); !seen[r] && len(p.reasons) < 5 {
					seen[r] = true
					p.reasons = append(p.reasons, b.ID+" "+r)
				}
				return
			}
			p.ok++
			p.counts["pushed"]++
			p.linkBytes += res.Bytes - res.Offset
		})
	}
	wg.Wait()
	p.took = time.Since(start)
	p.mem = s.end(mark)
	if err := ctx.Err(); err != nil {
		return phase{}, err
	}
	p.perBoard = perBoard
	// Client.Push reads the file twice: it hashes it, then streams it.
	p.imageRead = int64(p.ok) * 2 * fileSize
	return p, nil
}

func pushOne(ctx context.Context, b labBoard, imgPath string) (proto.FileResult, error) {
	c, err := dispatcher.Dial(ctx, b.Addr, labDialOptions())
	if err != nil {
		return proto.FileResult{}, err
	}
	defer c.Close()
	return c.Push(ctx, imgPath, filepath.Join(b.Dir, "push.img"), dispatcher.TransferOptions{})
}

// report prints the table and the notes.
func report(l *lab, boards, conc int, size, chunk int64, chunks int, fileSize int64, ro, pu phase, st stageTimes) {
	fmt.Println()
	fmt.Printf("lab: %d sim boards (internal/simlab) in one process, boot delay %s, no health check, no mDNS; 127.0.0.1; CPUs: %d (shared by both processes)\n",
		boards, bootDelay, runtime.NumCPU())
	fmt.Printf("image: %s payload in %d chunks of %s, image file %s; -C %d; rollout first, then push, on the same lab\n",
		benchkit.Human(size), chunks, benchkit.Human(chunk), benchkit.MiB(fileSize), conc)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	ratio := func(a, b float64) string {
		if b == 0 {
			return "-"
		}
		if r := a / b; r < 0.01 {
			return fmt.Sprintf("%.6f", r)
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	// Names are padded here: the tabwriter aligns the numbers right.
	const nameWidth = 30
	row := func(name, a, b, r string) { fmt.Fprintf(tw, "%-*s\t%s\t%s\t%s\t\n", nameWidth, name, a, b, r) }
	row("", "rollout", "push (peer)", "rollout/push")
	row("boards done", fmt.Sprintf("%d/%d committed", ro.ok, boards), fmt.Sprintf("%d/%d pushed", pu.ok, boards), "")
	row("total time", benchkit.Seconds(ro.took), benchkit.Seconds(pu.took), ratio(ro.took.Seconds(), pu.took.Seconds()))
	row("  plan stage", benchkit.Seconds(st.plan), "-", "")
	row("  prepare stage", benchkit.Seconds(st.prepare), "-", "")
	row("  execute stage", benchkit.Seconds(st.execute), "-", "")
	row("boards/s", fmt.Sprintf("%.1f", float64(ro.ok)/ro.took.Seconds()), fmt.Sprintf("%.1f", float64(pu.ok)/pu.took.Seconds()), "")
	rp, pp := quantiles(ro.perBoard), quantiles(pu.perBoard)
	row("per board p50", benchkit.Seconds(rp[0]), benchkit.Seconds(pp[0]), ratio(rp[0].Seconds(), pp[0].Seconds()))
	row("per board p95", benchkit.Seconds(rp[1]), benchkit.Seconds(pp[1]), ratio(rp[1].Seconds(), pp[1].Seconds()))
	row("per board max", benchkit.Seconds(rp[2]), benchkit.Seconds(pp[2]), ratio(rp[2].Seconds(), pp[2].Seconds()))
	row("retries", strconv.FormatInt(ro.retries, 10), "-", "")
	row("image bytes read", benchkit.MiB(ro.imageRead), benchkit.MiB(pu.imageRead), ratio(float64(ro.imageRead), float64(pu.imageRead)))
	row("  / payload size", fmt.Sprintf("%.2f", float64(ro.imageRead)/float64(size)), fmt.Sprintf("%.2f", float64(pu.imageRead)/float64(size)), "")
	row("process read() bytes (rchar)", benchkit.MiB(ro.mem.rchar), benchkit.MiB(pu.mem.rchar), ratio(float64(ro.mem.rchar), float64(pu.mem.rchar)))
	row("bytes sent to boards", benchkit.MiB(ro.linkBytes), benchkit.MiB(pu.linkBytes), ratio(float64(ro.linkBytes), float64(pu.linkBytes)))
	hwm := func(m memUse) string {
		if m.hwmKiB < 0 {
			return "-"
		}
		return kib(m.hwmKiB)
	}
	row("RSS at start (after GC)", kib(ro.mem.baseKiB), kib(pu.mem.baseKiB), "")
	row("peak RSS (VmHWM)", hwm(ro.mem), hwm(pu.mem), ratio(float64(ro.mem.hwmKiB), float64(pu.mem.hwmKiB)))
	row("peak RSS (sampled 50ms)", kib(ro.mem.sampledKiB), kib(pu.mem.sampledKiB), ratio(float64(ro.mem.sampledKiB), float64(pu.mem.sampledKiB)))
	row("getrusage Maxrss (at end)", kib(ro.mem.maxrssKiB), kib(pu.mem.maxrssKiB), "")
	row("peak Go heap (sampled 50ms)", benchkit.MiB(int64(ro.mem.heap)), benchkit.MiB(int64(pu.mem.heap)), ratio(float64(ro.mem.heap), float64(pu.mem.heap)))
	row("peak goroutines (sampled)", strconv.FormatUint(ro.mem.goroutines, 10), strconv.FormatUint(pu.mem.goroutines, 10), "")
	tw.Flush()
	if l.bye != nil {
		fmt.Printf("lab process: up in %.1fs, idle RSS %s, peak RSS (VmHWM) %s, stopped in %.1fs\n",
			float64(l.hello.StartMs)/1000, kib(l.hello.RSSKiB), kib(l.bye.HWMKiB), float64(l.bye.StopMs)/1000)
		if l.bye.Err != "" {
			fmt.Printf("lab stop: %s\n", l.bye.Err)
		}
	}
	for _, x := range []struct {
		name string
		p    phase
	}{{"rollout", ro}, {"push", pu}} {
		if x.p.ok != boards {
			fmt.Printf("%s results: %s\n", x.name, countsString(x.p.counts))
			for _, r := range x.p.reasons {
				fmt.Printf("  %s\n", r)
			}
		}
	}
	fmt.Println()
	for _, line := range []string{
		"rollout: PlanRollout + RunRollout, from the first plan call to the report, fresh connections per board and stage;",
		"  plan = board.info and ota.plan; prepare = ota.start, the chunks sent from the chunk cache, the board's writes and",
		"  its final check of the slot; execute = activate, the reboot into the new slot (stop, boot delay, boot, reconnect),",
		"  the health check (none configured) and the A/B commit. The push does none of this: it only copies the file.",
		"push (peer): dispatcher.Dial + Client.Push of the image file to STATE_DIR/push.img + Close per board, -C at once:",
		"  the host hashes the file, streams it, the board hashes and fsyncs it.",
		"per board: rollout = the board's time in the prepare and execute stages (BoardReport.DurationMs); push = dial to close.",
		"image bytes read: rollout = Report.ImageBytesRead (chunk cache reads); push = boards pushed x 2 x file size, since",
		"  Client.Push reads the whole file to hash it, then again to send it. rchar (from /proc/self/io) counts every",
		"  read() of the dispatcher process, files and sockets alike: a cross-check, not image bytes alone.",
		"bytes sent to boards: rollout = sum of BoardReport.BytesSent (each chunk plus its 4-byte index); push = file bytes.",
		"memory: the dispatcher process only (the boards run in the lab process). Each phase starts after runtime.GC and",
		"  debug.FreeOSMemory; VmHWM is reset then (echo 5 > /proc/self/clear_refs), so it is that phase's peak RSS.",
		"  getrusage Maxrss is the same high-water mark, but never below a floor the kernel keeps from exec: the peak RSS",
		"  of the process that started this one (the go command, under go run), so it can read above VmHWM.",
		"  Go heap = /memory/classes/heap/objects:bytes (as MemStats.HeapAlloc, garbage not yet collected included).",
		"ratios: rollout / push; below 1 is cheaper for the rollout.",
	} {
		fmt.Println(line)
	}
}

// sampler tracks the dispatcher's peak RSS, Go heap and goroutines.
type sampler struct {
	mu         sync.Mutex
	rssKiB     int64
	heap       uint64
	goroutines uint64
	quit       chan struct{}
	done       chan struct{}
	once       sync.Once
}

var sampleNames = []string{"/memory/classes/heap/objects:bytes", "/sched/goroutines:goroutines"}

func startSampler() *sampler {
	s := &sampler{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.quit:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) sample() {
	samples := make([]metrics.Sample, len(sampleNames))
	for i, n := range sampleNames {
		samples[i].Name = n
	}
	metrics.Read(samples)
	rss, _ := procStatus("VmRSS")
	s.mu.Lock()
	defer s.mu.Unlock()
	s.heap = max(s.heap, samples[0].Value.Uint64())
	s.goroutines = max(s.goroutines, samples[1].Value.Uint64())
	s.rssKiB = max(s.rssKiB, rss)
}

func (s *sampler) stop() {
	s.once.Do(func() { close(s.quit) })
	<-s.done
}

// mark is where a phase began.
type mark struct {
	rchar   int64
	reset   bool
	baseKiB int64
}

// begin starts a phase: a GC that returns memory to the OS, the kernel's
// RSS high-water mark and the sampler's peaks reset.
func (s *sampler) begin() mark {
	runtime.GC()
	debug.FreeOSMemory()
	reset := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	s.mu.Lock()
	s.rssKiB, s.heap, s.goroutines = 0, 0, 0
	s.mu.Unlock()
	s.sample()
	base, _ := procStatus("VmRSS")
	return mark{rchar: rchar(), reset: reset, baseKiB: base}
}

// end ends a phase begun at m.
func (s *sampler) end(m mark) memUse {
	s.sample()
	u := memUse{baseKiB: m.baseKiB, hwmKiB: -1, rchar: rchar() - m.rchar}
	if m.reset {
		u.hwmKiB, _ = procStatus("VmHWM")
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		u.maxrssKiB = ru.Maxrss // KiB on Linux
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u.sampledKiB, u.heap, u.goroutines = s.rssKiB, s.heap, s.goroutines
	return u
}

// procStatus reads a "kB" field of /proc/self/status.
func procStatus(field string) (int64, error) {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/self/status: no %s", field)
}

// rchar is the bytes this process read so far (/proc/self/io), or 0.
func rchar() int64 {
	raw, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "rchar:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// raiseNoFile raises the open files limit to the hard limit and returns
// it.
func raiseNoFile() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, err
		}
	}
	return lim.Cur, nil
}

// quantiles are the median, the 95th percentile and the maximum.
func quantiles(ds []time.Duration) [3]time.Duration {
	if len(ds) == 0 {
		return [3]time.Duration{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(math.Ceil(q*float64(len(s))))-1)] }
	return [3]time.Duration{at(0.5), at(0.95), s[len(s)-1]}
}

func countsString(counts map[string]int) string {
	keys := slices.Sorted(maps.Keys(counts))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, counts[k])
	}
	return strings.Join(parts, ", ")
}

func kib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/1024) }

// labToken is the token of the lab's boards, which run in a process of
// their own.
const labToken = "bench-rollout-lab-token"

// labDialOptions dial the lab's boards: its token, and their keys trusted
// on first use (every run's lab is new).
func labDialOptions() dispatcher.DialOptions {
	return dispatcher.DialOptions{Token: labToken, Trust: dispatcher.NewKnownBoards("")}
}
