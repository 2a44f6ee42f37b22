package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/boardlink/boardlink/bench/internal/benchkit"
	"github.com/boardlink/boardlink/dispatcher"
)

// footprint is what benchFootprint measured.
type footprint struct {
	idle   time.Duration
	agents []agentFoot
	// mdnsSkipped says why the mDNS agent was not measured ("" if it was).
	mdnsSkipped string
	sizes       []archSize
}

// agentFoot is one idle agent's memory and CPU.
type agentFoot struct {
	name string
	// Memory in KiB, of the agent and of its sim supervisor, right after
	// the agent said it started and after the idle window.
	rssStart, hwmStart, rssEnd, hwmEnd int64
	anonEnd                            int64 // RssAnon: the rest of rssEnd is the binary's pages (RssFile, RssShmem)
	supRSSStart, supRSSEnd             int64
	cpu, supCPU                        time.Duration // over the window
}

type archSize struct {
	arch  string
	bytes int64
}

// inNamespace runs a command in a network namespace of its own whose lo
// is up and routes multicast: mDNS there reaches nothing outside. As
// root a plain network namespace; otherwise with a user namespace too.
func inNamespace() []string {
	flag := "-rn"
	if os.Geteuid() == 0 {
		flag = "-n"
	}
	return []string{"unshare", flag, "sh", "-c",
		`ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo && exec "$0" "$@"`}
}

// benchFootprint starts three idle sim boards, without mDNS, with it
// (inside a private network namespace), and without it after one ws and
// one wss session (which fault code back in and grow the heap, until the
// agent trims once it has been idle a while), measures them across the
// idle window, and builds boardlinkd for each architecture to report its
// size.
func benchFootprint(ctx context.Context, e *benchEnv) (*footprint, error) {
	f := &footprint{idle: e.cfg.idle}
	type started struct {
		name string
		a    *agentProc
		cpu0 [2]time.Duration
		foot agentFoot
	}
	var agents []*started
	defer func() {
		for _, s := range agents {
			s.a.stop()
		}
	}()
	urls := map[string]string{}
	for _, l := range links {
		port, err := benchkit.FreePort()
		if err != nil {
			return nil, err
		}
		urls[l] = fmt.Sprintf("%s://127.0.0.1:%d", l, port)
	}
	for _, v := range []struct {
		name    string
		wrap    []string
		args    []string
		session bool // measured from the end of one ws and one wss session, not from the start
	}{
		{"boardlinkd --no-mdns", nil, []string{"--no-mdns", "--listen", "127.0.0.1:0"}, false},
		{"boardlinkd, mDNS on lo (own netns)", inNamespace(), []string{"--iface", "lo", "--listen", "127.0.0.1:7207"}, false},
		{"boardlinkd --no-mdns, after a session (one ws and one wss exec)", nil, []string{"--no-mdns",
			"--listen", strings.TrimPrefix(urls["wss"], "wss://"), "--insecure-listen", strings.TrimPrefix(urls["ws"], "ws://")}, true},
	} {
		state := filepath.Join(e.dirs["foot"], fmt.Sprint(len(agents)))
		args := append([]string{"--board", "sim", "--state-dir", state, "--token-file", e.token}, v.args...)
		a, err := startAgent(ctx, v.wrap, e.agentd, args...)
		if err != nil {
			if v.wrap == nil {
				return nil, err
			}
			f.mdnsSkipped = fmt.Sprintf("NOT MEASURED: no private network namespace for mDNS (%s): %v", strings.Join(v.wrap[:2], " "), err)
			fmt.Fprintln(e.out, "footprint: "+f.mdnsSkipped)
			continue
		}
		s := &started{name: v.name, a: a, foot: agentFoot{name: v.name}}
		agents = append(agents, s)
		if v.session {
			if err := oneSessionEach(ctx, e, urls); err != nil {
				return nil, fmt.Errorf("%s: %w", v.name, err)
			}
		}
		var errs [4]error
		s.foot.rssStart, errs[0] = procStatus(a.agent, "VmRSS")
		s.foot.hwmStart, errs[1] = procStatus(a.agent, "VmHWM")
		s.foot.supRSSStart, errs[2] = procStatus(a.supervisor, "VmRSS")
		s.cpu0[0], errs[3] = procCPU(a.agent)
		s.cpu0[1], _ = procCPU(a.supervisor)
		for _, err := range errs {
			if err != nil {
				return nil, fmt.Errorf("%s: %w", v.name, err)
			}
		}
	}
	fmt.Fprintf(e.out, "footprint: %d idle agents, a %s window\n", len(agents), e.cfg.idle)
	select {
	case <-time.After(e.cfg.idle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for _, s := range agents {
		var errs [6]error
		s.foot.rssEnd, errs[0] = procStatus(s.a.agent, "VmRSS")
		s.foot.anonEnd, errs[5] = procStatus(s.a.agent, "RssAnon")
		s.foot.hwmEnd, errs[1] = procStatus(s.a.agent, "VmHWM")
		s.foot.supRSSEnd, errs[2] = procStatus(s.a.supervisor, "VmRSS")
		var cpu, sup time.Duration
		cpu, errs[3] = procCPU(s.a.agent)
		sup, errs[4] = procCPU(s.a.supervisor)
		for _, err := range errs {
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
		}
		s.foot.cpu, s.foot.supCPU = cpu-s.cpu0[0], sup-s.cpu0[1]
		f.agents = append(f.agents, s.foot)
	}

	archs := e.cfg.archs
	if len(archs) == 0 {
		archs = []string{e.cfg.native}
	}
	for _, arch := range archs {
		dir := filepath.Join(e.dirs["foot"], "dist-"+arch)
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, err
		}
		fmt.Fprintf(e.out, "footprint: building boardlinkd for linux/%s\n", arch)
		if err := goBuild(ctx, dir, arch, "./cmd/boardlinkd"); err != nil {
			return nil, err
		}
		st, err := os.Stat(filepath.Join(dir, "boardlinkd"))
		if err != nil {
			return nil, err
		}
		f.sizes = append(f.sizes, archSize{arch, st.Size()})
	}
	return f, nil
}

// oneSessionEach runs `true` on the agent at urls, once over each link, a
// session each, and closes them.
func oneSessionEach(ctx context.Context, e *benchEnv, urls map[string]string) error {
	tok, err := os.ReadFile(e.token)
	if err != nil {
		return err
	}
	for _, l := range links {
		c, err := dispatcher.Dial(ctx, urls[l], dispatcher.DialOptions{Token: strings.TrimSpace(string(tok)), Trust: dispatcher.NewKnownBoards("")})
		if err != nil {
			return err
		}
		res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"true"}})
		c.Close()
		if err != nil {
			return fmt.Errorf("exec over %s: %w", l, err)
		}
		if res.ExitCode != 0 {
			return fmt.Errorf("exec over %s: true exited %d", l, res.ExitCode)
		}
	}
	return nil
}

// writeFootprint prints the footprint tables.
func writeFootprint(w io.Writer, f *footprint) {
	kib := func(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/1024) }
	fmt.Fprintf(w, "agent footprint, idle, a sim board (RSS from /proc/PID/status; CPU = utime+stime over the %s window, in %s ticks)\n\n", f.idle, clockTick)
	fmt.Fprintln(w, "| agent | RSS after start (or the session) | RSS after the window (of it anonymous) | VmHWM (peak) | CPU over the window | supervisor RSS (start, end) | supervisor CPU |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, a := range f.agents {
		fmt.Fprintf(w, "| %s | %s | %s (%s) | %s | %s (%.3f%% of a CPU) | %s, %s | %s |\n", a.name, kib(a.rssStart), kib(a.rssEnd), kib(a.anonEnd), kib(a.hwmEnd),
			a.cpu, 100*a.cpu.Seconds()/f.idle.Seconds(), kib(a.supRSSStart), kib(a.supRSSEnd), a.supCPU)
	}
	if f.mdnsSkipped != "" {
		fmt.Fprintf(w, "| boardlinkd, mDNS on lo (own netns) | %s | | | | | |\n", f.mdnsSkipped)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| boardlinkd, stripped (CGO_ENABLED=0, -trimpath -ldflags='-s -w') | bytes | size |")
	fmt.Fprintln(w, "|---|---|---|")
	for _, s := range f.sizes {
		name := "linux/" + s.arch
		if s.arch == "arm" {
			name += " (GOARM=7)"
		}
		fmt.Fprintf(w, "| %s | %d | %s |\n", name, s.bytes, benchkit.MiB(s.bytes))
	}
}
