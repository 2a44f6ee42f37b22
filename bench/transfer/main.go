// Command transfer benchmarks boardlink's file push and pull over a
// loopback WebSocket, with TLS (wss://, the default) and without (ws://),
// beside scp of the same file to a private sshd on the same machine, and
// the round trip of exec `true` on both links, measured in the same run.
//
// It writes a random file of -size bytes into a temporary directory, starts
// an agent on a simulated board in-process on 127.0.0.1, and times
// dispatcher.Client.Push and Pull of that file -runs times each, reporting
// the median. The copy made by the previous run is deleted before every run,
// so each one is a full transfer: nothing resumes and nothing is skipped.
//
// Then, when sshd and scp are installed, it starts a private sshd as the
// current user on 127.0.0.1 and a free port (its own host key, client key,
// authorized_keys and sshd_config, all in the temporary directory), and
// times scp upload and download of the same file the same way. scp uses
// OpenSSH's defaults (cipher, and on OpenSSH 9.0 and later the SFTP
// protocol); the cipher it negotiated is printed.
//
// The table gives MB/s (10^6 bytes per second) and the ratio boardlink/scp:
// above 1 is faster than scp. What the two times cover differs a little,
// and the output says how: a boardlink transfer runs on a connection that
// is already open, and hashes the file on both ends and fsyncs what it
// received; each scp starts its own ssh connection and does not fsync. The
// scp+fsync column adds an fsync of scp's copy for a like-for-like write.
//
// Run it from the module root:
//
//	go run ./bench/transfer                   # 256 MiB, median of 3
//	go run ./bench/transfer -size 64MiB -runs 5
//
// Without sshd it measures boardlink alone and says how to get sshd
// (apt-get install openssh-server openssh-client). Only 127.0.0.1 is used.
// Everything it starts and writes is removed when it ends, also on error
// or Ctrl-C.
package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/bench/internal/benchkit"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

func main() {
	size := benchkit.IntSize(256 << 20)
	flag.Var(&size, "size", "file size in bytes; suffixes KiB, MiB, GiB (and KB, MB, GB) are accepted")
	runs := flag.Int("runs", 3, "timed transfers per operation; the median is reported")
	execs := flag.Int("execs", 200, "timed round trips of exec true per link; the median is reported")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the boardlink transfers to this file")
	flag.Parse()
	if size <= 0 || *runs <= 0 {
		fmt.Fprintln(os.Stderr, "transfer: -size and -runs must be positive")
		os.Exit(2)
	}
	benchkit.Run("transfer", func(ctx context.Context) error {
		return run(ctx, int64(size), *runs, *execs, *cpuprofile)
	})
}

// result is one operation's timed runs.
type result struct {
	runs []time.Duration
	// synced is, for scp, each run's time including an fsync of the copy.
	synced []time.Duration
}

func run(ctx context.Context, size int64, runs, execs int, cpuprofile string) error {
	tmp, err := os.MkdirTemp("", "boardlink-bench-transfer-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dirs := map[string]string{}
	for _, d := range []string{"state", "root", "local", "ssh", "scp"} {
		dirs[d] = filepath.Join(tmp, d)
		if err := os.Mkdir(dirs[d], 0o700); err != nil {
			return err
		}
	}

	src := filepath.Join(dirs["local"], "source.bin")
	fmt.Printf("writing %s of random bytes to %s\n", benchkit.Human(size), src)
	sum, err := benchkit.WriteRandomSum(src, size)
	if err != nil {
		return err
	}

	var stopProfile func()
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
		defer func() {
			if stopProfile != nil {
				stopProfile()
			}
		}()
	}
	bl, err := benchBoardlink(ctx, dirs, src, sum, size, runs, execs)
	if err != nil {
		return fmt.Errorf("boardlink: %w", err)
	}
	if stopProfile != nil {
		stopProfile()
		stopProfile = nil
		fmt.Printf("CPU profile of the boardlink transfers: %s\n", cpuprofile)
	}

	var up, down *result
	var cipher, protocol, setup string
	scpNote := ""
	if tools, missing := benchkit.FindSSH(); missing != "" {
		scpNote = "scp was not measured: " + missing + " not found; install with: " + benchkit.SSHInstall
	} else {
		s, err := benchkit.StartSSHD(ctx, tools, dirs["ssh"])
		if err != nil {
			return fmt.Errorf("sshd: %w", err)
		}
		defer s.Stop()
		fmt.Printf("sshd: %s on 127.0.0.1:%d (pid %d)\n", tools.SSHD, s.Port, s.PID())
		up, down, cipher, protocol, setup, err = benchSCP(ctx, s, tools.SCP, dirs["scp"], src, sum, size, runs)
		if err != nil {
			return fmt.Errorf("scp: %w\n%s", err, s.Log())
		}
	}

	fmt.Println()
	fmt.Printf("file: %s, runs: %d (median), MB/s = 10^6 bytes/s, CPUs: %d\n", benchkit.Human(size), runs, runtime.NumCPU())
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "operation\twss MB/s\tws MB/s\tws/wss\tscp MB/s\twss/scp\tscp+fsync MB/s\twss/(scp+fsync)\t")
	row := func(name string, wss, ws, sc *result) {
		a, b := mbps(size, benchkit.Median(wss.runs)), mbps(size, benchkit.Median(ws.runs))
		if sc == nil {
			fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.2f\t-\t-\t-\t-\t\n", name, a, b, b/a)
			return
		}
		s, sf := mbps(size, benchkit.Median(sc.runs)), mbps(size, benchkit.Median(sc.synced))
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.2f\t%.1f\t%.2f\t%.1f\t%.2f\t\n", name, a, b, b/a, s, a/s, sf, a/sf)
	}
	row("push (upload)", bl["wss"].push, bl["ws"].push, up)
	row("pull (download)", bl["wss"].pull, bl["ws"].pull, down)
	tw.Flush()
	ew, e := benchkit.Median(bl["wss"].exec.runs), benchkit.Median(bl["ws"].exec.runs)
	fmt.Printf("exec true on an open connection, median of %d: wss %s, ws %s, wss/ws %.2f (time: above 1 is slower)\n",
		execs, ew.Round(time.Microsecond), e.Round(time.Microsecond), float64(ew)/float64(e))
	fmt.Println()
	for _, l := range links {
		fmt.Printf("%-3s runs: push %s; pull %s\n", l, list(size, bl[l].push.runs), list(size, bl[l].pull.runs))
	}
	if up != nil {
		fmt.Printf("scp runs: upload %s; download %s\n", list(size, up.runs), list(size, down.runs))
		fmt.Printf("scp: OpenSSH defaults, cipher %s, %s protocol; a 1-byte scp (connection setup and auth) takes %s\n", cipher, protocol, setup)
		fmt.Println("boardlink times run on an open connection and include hashing on both ends and the fsync of the received file;")
		fmt.Println("scp times include its ssh connection setup and no fsync (scp+fsync adds one).")
	} else {
		fmt.Println(scpNote)
	}
	return nil
}

// links are the ways benchBoardlink reaches the agent: TLS with the
// board's key (the default), and plain WebSocket (--insecure-listen).
var links = []string{"wss", "ws"}

// linkResults are one link's timed operations.
type linkResults struct {
	push, pull, exec *result
}

// benchBoardlink times push, pull and the round trip of exec `true`
// through an in-process agent reached over wss:// and ws:// on loopback,
// a run of each on one link, then on the other, so that both see the
// same machine.
func benchBoardlink(ctx context.Context, dirs map[string]string, src, sum string, size int64, runs, execs int) (map[string]*linkResults, error) {
	board, err := sim.Open(dirs["state"], sim.Options{ID: "bench-transfer", Model: "sim"})
	if err != nil {
		return nil, err
	}
	m := agent.NewExecs(agent.ExecOptions{})
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	const token = "bench-transfer-token"
	a := agent.New(board, m, agent.Config{Roots: []string{dirs["root"]},
		Auth: agent.AuthConfig{Key: key, Tokens: []agent.Token{{Name: "bench", Value: token}}}})
	servers := map[string]*agent.WebSocketServer{
		"wss": agent.NewWebSocketServer(a, "127.0.0.1:0"),
		"ws":  agent.NewInsecureWebSocketServer(a, "127.0.0.1:0"),
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, s := range servers {
			s.Stop(sctx)
		}
		m.Shutdown(sctx)
	}()
	opts := dispatcher.DialOptions{Token: token, Trust: dispatcher.NewKnownBoards("")}
	clients := map[string]*dispatcher.Client{}
	out := map[string]*linkResults{}
	for _, l := range links {
		if err := servers[l].Start(ctx); err != nil {
			return nil, err
		}
		c, err := dispatcher.Dial(ctx, servers[l].URL(), opts)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		clients[l] = c
		out[l] = &linkResults{push: &result{}, pull: &result{}, exec: &result{}}
		fmt.Printf("boardlink: agent on %s, root %s\n", servers[l].URL(), dirs["root"])
	}
	remote := filepath.Join(dirs["root"], "pushed.bin")
	local := filepath.Join(dirs["local"], "pulled.bin")
	for i := range runs {
		for _, l := range links {
			c, r := clients[l], out[l]
			// The pushed copy, already verified, is what the board serves.
			for _, op := range []struct {
				name, dst string
				into      *result
				run       func() (proto.FileResult, error)
			}{
				{"push", remote, r.push, func() (proto.FileResult, error) { return c.Push(ctx, src, remote, dispatcher.TransferOptions{}) }},
				{"pull", local, r.pull, func() (proto.FileResult, error) { return c.Pull(ctx, remote, local, dispatcher.TransferOptions{}) }},
			} {
				if err := benchkit.RemoveWithPartials(op.dst); err != nil {
					return nil, err
				}
				start := time.Now()
				res, err := op.run()
				d := time.Since(start)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", op.name, err)
				}
				if res.Offset != 0 || res.Bytes != size || res.SHA256 != sum {
					return nil, fmt.Errorf("%s %d was not a full transfer of the file: offset %d, %d bytes, sha256 %s", op.name, i+1, res.Offset, res.Bytes, res.SHA256)
				}
				op.into.runs = append(op.into.runs, d)
				fmt.Printf("  %-3s %s %d: %.1f MB/s (agent-side %.0f ms)\n", l, op.name, i+1, mbps(size, d), res.DurationMs)
			}
		}
	}
	// exec `true` on the open connection, alternating links.
	for range execs {
		for _, l := range links {
			start := time.Now()
			res, err := clients[l].Exec(ctx, dispatcher.ExecRequest{Argv: []string{"true"}})
			if err != nil || res.ExitCode != 0 {
				return nil, fmt.Errorf("exec true: %+v %w", res, err)
			}
			out[l].exec.runs = append(out[l].exec.runs, time.Since(start))
		}
	}
	return out, benchkit.RemoveWithPartials(local)
}

var (
	cipherRE = regexp.MustCompile(`kex: client->server cipher: (\S+) MAC: (\S+)`)
	sftpRE   = regexp.MustCompile(`Sending subsystem: sftp`)
)

// benchSCP times scp upload and download of src through s. A 1-byte
// warm-up copy checks that login works and tells which cipher is used.
func benchSCP(ctx context.Context, s *benchkit.SSHD, scp, dir, src, sum string, size int64, runs int) (up, down *result, cipher, protocol, setup string, err error) {
	scpCmd := func(verbose bool, from, to string) *exec.Cmd {
		args := []string{"-q"}
		if verbose {
			args = []string{"-v"} // for the negotiated cipher
		}
		args = append(append(append(args, "-P", strconv.Itoa(s.Port)), s.ClientOptions()...), from, to)
		return exec.CommandContext(ctx, scp, args...)
	}
	remote := func(p string) string { return "127.0.0.1:" + p }

	tiny := filepath.Join(dir, "tiny")
	if err := os.WriteFile(tiny, []byte{1}, 0o600); err != nil {
		return nil, nil, "", "", "", err
	}
	out, err := scpCmd(true, tiny, remote(filepath.Join(dir, "tiny.copy"))).CombinedOutput()
	if err != nil {
		return nil, nil, "", "", "", fmt.Errorf("warm-up copy: %v: %s", err, out)
	}
	cipher, protocol = "unknown", "scp (legacy)"
	if m := cipherRE.FindSubmatch(out); m != nil {
		cipher = string(m[1])
		if mac := string(m[2]); mac != "<implicit>" {
			cipher += " + " + mac
		}
	}
	if sftpRE.Match(out) {
		protocol = "SFTP"
	}
	var tinyTimes []time.Duration
	for range 3 {
		start := time.Now()
		if out, err := scpCmd(false, tiny, remote(filepath.Join(dir, "tiny.copy"))).CombinedOutput(); err != nil {
			return nil, nil, "", "", "", fmt.Errorf("tiny copy: %v: %s", err, out)
		}
		tinyTimes = append(tinyTimes, time.Since(start))
	}
	setup = benchkit.Median(tinyTimes).Round(time.Millisecond).String()

	timed := func(label, from, to, check string) (*result, error) {
		r := &result{}
		for i := range runs {
			if err := os.Remove(check); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, err
			}
			start := time.Now()
			out, err := scpCmd(false, from, to).CombinedOutput()
			d := time.Since(start)
			if err != nil {
				return nil, fmt.Errorf("%s: %v: %s", label, err, out)
			}
			if err := benchkit.Fsync(check); err != nil {
				return nil, err
			}
			ds := time.Since(start)
			if got, err := benchkit.HashFile(check); err != nil {
				return nil, err
			} else if got != sum {
				return nil, fmt.Errorf("%s %d: the copy hashes %s, want %s", label, i+1, got, sum)
			}
			r.runs, r.synced = append(r.runs, d), append(r.synced, ds)
			fmt.Printf("  scp %s %d: %.1f MB/s (%.1f MB/s with fsync)\n", label, i+1, mbps(size, d), mbps(size, ds))
		}
		return r, os.Remove(check)
	}
	uploaded := filepath.Join(dir, "uploaded.bin")
	if up, err = timed("upload", src, remote(uploaded), uploaded); err != nil {
		return nil, nil, "", "", "", err
	}
	// The download reads a file the upload did not just write, as boardlink's pull does.
	served := filepath.Join(dir, "served.bin")
	if err := benchkit.CopyFile(src, served); err != nil {
		return nil, nil, "", "", "", err
	}
	if err := benchkit.Fsync(served); err != nil {
		return nil, nil, "", "", "", err
	}
	downloaded := filepath.Join(dir, "downloaded.bin")
	if down, err = timed("download", remote(served), downloaded, downloaded); err != nil {
		return nil, nil, "", "", "", err
	}
	return up, down, cipher, protocol, setup, nil
}

func mbps(size int64, d time.Duration) float64 { return float64(size) / 1e6 / d.Seconds() }

func list(size int64, ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%.1f", mbps(size, d))
	}
	return strings.Join(parts, " ") + " MB/s"
}
