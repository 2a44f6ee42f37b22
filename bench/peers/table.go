package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/boardlink/boardlink/bench/internal/benchkit"
)

// variant is one side of a comparison: prep and check (untimed, each may
// be nil) run before and after every timed call of run.
type variant struct {
	name             string
	prep, run, check func(context.Context) error
}

// timings are each variant's runs: wall is the time of each, cpu the CPU
// time the whole machine spent meanwhile (empty where /proc/stat cannot
// be read).
type timings struct {
	wall, cpu map[string][]time.Duration
}

// interleave times n rounds of every variant, one after the other in each
// round, so that all see the same machine; each round starts one variant
// further (A B C, B C A, C A B, ...), so that none always runs first or
// always after the same one (after an ssh session's processes, say).
func interleave(ctx context.Context, n int, vs ...variant) (timings, error) {
	times := timings{wall: map[string][]time.Duration{}, cpu: map[string][]time.Duration{}}
	for r := range n {
		for i := range vs {
			v := vs[(i+r)%len(vs)]
			if err := ctx.Err(); err != nil {
				return timings{}, err
			}
			if v.prep != nil {
				if err := v.prep(ctx); err != nil {
					return timings{}, fmt.Errorf("%s: %w", v.name, err)
				}
			}
			cpu0, cerr0 := machineCPU()
			start := time.Now()
			err := v.run(ctx)
			d := time.Since(start)
			cpu1, cerr1 := machineCPU()
			if err != nil && ctx.Err() != nil {
				return timings{}, fmt.Errorf("%s: %w", v.name, ctx.Err()) // killed by the cancel
			}
			if err != nil {
				return timings{}, fmt.Errorf("%s: %w", v.name, err)
			}
			if v.check != nil {
				if err := v.check(ctx); err != nil {
					return timings{}, fmt.Errorf("%s: %w", v.name, err)
				}
			}
			times.wall[v.name] = append(times.wall[v.name], d)
			if cerr0 == nil && cerr1 == nil {
				times.cpu[v.name] = append(times.cpu[v.name], cpu1-cpu0)
			}
		}
	}
	return times, nil
}

// row compares boardlink's times with a peer's in one case.
type row struct {
	what         string
	bl, peer     string // the variants' names
	blTs, peerTs []time.Duration
	size         int64 // bytes moved, for a transfer (MB/s shown)
	cpu          bool  // the times are CPU times, not wall times
}

// pair makes the row of variants bl and peer of times.
func pair(what, bl, peer string, times map[string][]time.Duration, size int64) row {
	return row{what: what, bl: bl, peer: peer, blTs: times[bl], peerTs: times[peer], size: size}
}

// cpuWhat ends the case of a row of the machine's CPU times.
const cpuWhat = ", CPU of the machine"

// cell is a median with its min and max, and with size the median's MB/s.
func cell(ts []time.Duration, size int64) string {
	med, lo, hi := benchkit.Median(ts), slices.Min(ts), slices.Max(ts)
	s := fmt.Sprintf("%s (%s–%s)", short(med), short(lo), short(hi))
	if size > 0 {
		s += fmt.Sprintf(", %.0f MB/s", float64(size)/1e6/med.Seconds())
	}
	return s
}

// short rounds d to three significant digits or so.
func short(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	}
}

// writeRows prints the comparisons as a Markdown table.
func writeRows(w io.Writer, rows []row) {
	fmt.Fprintln(w, "ratio = boardlink's median time / the peer's (below 1: boardlink is faster); n = timed runs of each")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| case | boardlink | median (min–max) | peer | median (min–max) | ratio | n |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, r := range rows {
		bl, peer := benchkit.Median(r.blTs), benchkit.Median(r.peerTs)
		ratio := float64(bl) / float64(peer)
		more, less := "slower", "faster"
		if r.cpu {
			more, less = "more", "less"
		}
		verdict := fmt.Sprintf("%.2f (%.2f× %s)", ratio, ratio, more)
		switch {
		case r.cpu && (bl < clockTick || peer < clockTick):
			verdict = fmt.Sprintf("none (under the %s tick)", clockTick)
		case ratio < 1:
			verdict = fmt.Sprintf("%.2f (%.2f× %s)", ratio, 1/ratio, less)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %d |\n", r.what, r.bl, cell(r.blTs, r.size), r.peer, cell(r.peerTs, r.size), verdict, len(r.blTs))
	}
}

// loadAvg is /proc/loadavg's 1, 5 and 15-minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// writeMachine prints what the numbers were measured on; startLoad is
// the load average when the run began.
func writeMachine(w io.Writer, startLoad string) {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	ssh := "unknown"
	if out, err := exec.Command("ssh", "-V").CombinedOutput(); err == nil {
		ssh = strings.TrimSpace(string(out))
	}
	fmt.Fprintf(w, "machine: %d CPUs (%s); %s; %s %s/%s\n", runtime.NumCPU(), model, ssh, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(w, "load average (1, 5, 15 min): %s at the start, %s at the end\n", startLoad, loadAvg())
}
