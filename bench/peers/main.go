// Command peers measures boardlink against the tools it replaces, on this
// machine, in one run, and prints one table of ratios (issue 16):
//
//   - exec `true` on a persistent connection (dispatcher.Client to a real
//     `boardlinkd --board sim` over wss:// and ws://) against a local
//     fork/exec of /bin/true and a persistent ssh shell running /bin/true;
//   - `true` by a fresh CLI process (`boardlink exec URL -- true`, the
//     board's key already pinned) against a fresh `ssh host true` and
//     `ssh -S ctl host true` with a ControlMaster up;
//   - push and pull of a -size file by the boardlink CLI (its sha256 check
//     included) against scp and `ssh host 'cat > f'` / `ssh host 'cat f'`;
//   - exec `true` over a serial line at 115200 baud (linetest's relay):
//     dispatcher.Client over the serial-framed link to an in-process agent
//     on a sim board, against /bin/sh on a line of its own typed
//     `/bin/true; echo MARK$?`;
//   - a file pulled over a serial line (linetest's relay at 115200 and
//     1,000,000 baud: clean, 0.1% of bytes corrupted, and that plus
//     console text) by `boardlink pull` against ZMODEM (lrzsz's sz and
//     rz on ptys relayed to the line; apt-get install lrzsz);
//   - the agent's footprint: RSS after start and after an idle window, its
//     CPU time over that window, without and with mDNS (mDNS only inside a
//     private network namespace), the sim supervisor's RSS, and the
//     stripped size of boardlinkd for amd64, arm64, arm (GOARM=7) and
//     riscv64.
//
// Each pair runs interleaved (A, B, A, B, ...) so that both see the same
// machine; a row gives the median with the min and max, and the ratio of
// the medians, boardlink's time over the peer's (below 1: boardlink is
// faster). The ssh peers talk to a private sshd on 127.0.0.1 (its own
// keys and config in a temporary directory, run as the current user).
//
//	go run ./bench/peers                 # the full run (256 MiB, 1-minute idle window)
//	go run ./bench/peers -smoke          # every case, small and fast; asserts nothing about speed
//	go run ./bench/peers -cases exec,serial  # some of the cases (exec, cli, transfer, serial, zmodem, footprint)
//
// It needs sshd, ssh, scp and ssh-keygen (apt-get install openssh-server
// openssh-client), and go to build the binaries. Only loopback is used.
// Everything it starts and writes is removed when it ends, also on error
// or Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/boardlink/boardlink/bench/internal/benchkit"
)

// config is what a run measures, and how much.
type config struct {
	size   int64         // bytes pushed and pulled
	runs   int           // timed transfers per variant
	execs  int           // timed exec round trips per variant
	cli    int           // timed fresh CLI processes per variant
	serial int           // timed exec round trips per variant over a serial line
	cases  []string      // the cases to run, in allCases' order
	idle   time.Duration // the idle window of the footprint
	archs  []string      // architectures whose boardlinkd size is reported
	smoke  bool
	native string // the architecture of this machine's binaries
	// cliAlso are other binaries timed beside the CLI, by name: NAME=PATH
	// runs PATH with `exec ws://… -- true`'s arguments (a build of another
	// commit, a prototype, an empty program).
	cliAlso []string
}

// allArchs are the board architectures of `just cross`.
var allArchs = []string{"amd64", "arm64", "arm", "riscv64"}

// smokeConfig runs every case once or twice, on little data.
func smokeConfig() config {
	return config{size: 1 << 20, runs: 1, execs: 3, cli: 2, serial: 2, idle: 500 * time.Millisecond, smoke: true, cases: allCases}
}

// allCases are the cases a run measures, by name, in order.
var allCases = []string{"exec", "cli", "transfer", "serial", "zmodem", "footprint"}

func main() {
	cfg := config{archs: allArchs}
	size := benchkit.IntSize(256 << 20)
	flag.Var(&size, "size", "bytes pushed and pulled; suffixes KiB, MiB, GiB (and KB, MB, GB) are accepted")
	flag.IntVar(&cfg.runs, "runs", 3, "timed transfers per variant and direction")
	flag.IntVar(&cfg.execs, "execs", 200, "timed exec round trips per variant on a persistent connection")
	flag.IntVar(&cfg.cli, "cli", 30, "timed fresh CLI processes (and fresh ssh) per variant")
	flag.IntVar(&cfg.serial, "serial", 50, "timed exec round trips per variant over a serial line")
	flag.DurationVar(&cfg.idle, "idle", time.Minute, "the footprint's idle window")
	cases := flag.String("cases", strings.Join(allCases, ","), "the cases to run, comma-separated: "+strings.Join(allCases, ", "))
	cliAlso := flag.String("cli-also", "", "NAME=PATH,...: other binaries the cli case runs with `exec ws://… -- true`'s arguments, beside the CLI")
	smoke := flag.Bool("smoke", false, "every case small and fast (1 MiB, 1-3 runs, 0.5s idle, this machine's architecture only); overrides the other flags")
	flag.Parse()
	cfg.size = int64(size)
	if *cliAlso != "" {
		cfg.cliAlso = strings.Split(*cliAlso, ",")
	}
	for _, c := range strings.Split(*cases, ",") {
		if !slices.Contains(allCases, c) {
			fmt.Fprintf(os.Stderr, "peers: -cases: no case %q (want %s)\n", c, strings.Join(allCases, ", "))
			os.Exit(2)
		}
	}
	for _, c := range allCases { // allCases' order, each once
		if slices.Contains(strings.Split(*cases, ","), c) {
			cfg.cases = append(cfg.cases, c)
		}
	}
	if *smoke {
		cfg = smokeConfig()
	}
	if cfg.size <= 0 || cfg.runs <= 0 || cfg.execs <= 0 || cfg.cli <= 0 || cfg.serial <= 0 || cfg.idle <= 0 {
		fmt.Fprintln(os.Stderr, "peers: -size, -runs, -execs, -cli, -serial and -idle must be positive")
		os.Exit(2)
	}
	benchkit.Run("peers", func(ctx context.Context) error { return run(ctx, cfg, os.Stdout) })
}

// run measures every case and writes the progress and the tables to out.
func run(ctx context.Context, cfg config, out io.Writer) error {
	startLoad := loadAvg()
	tools, missing := benchkit.FindSSH()
	if missing != "" {
		return fmt.Errorf("%s not found; install with: %s", missing, benchkit.SSHInstall)
	}
	env, err := setUp(ctx, cfg, tools, out)
	if err != nil {
		return err
	}
	defer env.close()

	var rows []row
	for _, c := range []struct {
		name string
		run  func(context.Context, *benchEnv) ([]row, error)
	}{{"exec", benchExec}, {"cli", benchCLI}, {"transfer", benchTransfer}, {"serial", benchSerial}, {"zmodem", benchZmodem}} {
		if !slices.Contains(cfg.cases, c.name) {
			continue
		}
		r, err := c.run(ctx, env)
		if err != nil {
			return err
		}
		rows = append(rows, r...)
	}
	var foot *footprint
	if slices.Contains(cfg.cases, "footprint") {
		// The footprint runs last and alone: nothing else runs in its idle window.
		env.agent.stop()
		env.agent = nil
		if foot, err = benchFootprint(ctx, env); err != nil {
			return err
		}
	}
	fmt.Fprintln(out)
	writeMachine(out, startLoad)
	if len(rows) > 0 {
		fmt.Fprintln(out)
		writeRows(out, rows)
	}
	if foot != nil {
		fmt.Fprintln(out)
		writeFootprint(out, foot)
	}
	return nil
}
