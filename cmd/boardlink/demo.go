package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/proto"
)

func newDemoCmd(g *globals) *cobra.Command {
	var noMDNS bool
	cmd := &cobra.Command{
		Use:   "demo [--no-mdns]",
		Short: "Run a lab of simulated boards in-process and roll a signed image out to it",
		Long: `demo starts a lab of 5 simulated boards inside this process (real agents,
as boardlinkd runs them, on 127.0.0.1; their A/B slots, boot loader and
reboots simulated in a temporary directory), then drives it with the real
boardlink verbs: the boards are found over mDNS, a command runs on each, an
image is built and signed, and rolled out with live progress. One board's
health check fails on purpose, so it rolls back. Then the lab is stopped
and its files removed. It needs nothing but Go, and takes a few seconds.

Nothing is sent beyond loopback: mDNS is pinned to lo. The host's lo
usually cannot multicast (and is left alone), so the demo re-runs itself
in a network namespace of its own, with a user namespace when not root.
Where no namespace can be made, or with --no-mdns, it runs without mDNS
and gives the boards by their addresses instead.

Exit status: 0 when every step went as shown; 1 otherwise; 130 when
interrupted (the lab is cleaned up all the same).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return demo(cmd.Context(), cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), g, noMDNS)
		},
	}
	cmd.Flags().BoolVar(&noMDNS, "no-mdns", false, "do not use mDNS (nor a network namespace): give the boards by their addresses")
	return cmd
}

// demoNet is where the demo's mDNS runs, or why it does not.
type demoNet struct {
	where   string // the network namespace mDNS runs in
	skipped string // why mDNS is not used; "" when it is
}

// demo decides where the lab runs (see demo_netns.go), then runs it.
func demo(ctx context.Context, stdin io.Reader, out, errw io.Writer, g *globals, noMDNS bool) error {
	var nw demoNet
	switch {
	case noMDNS:
		nw.skipped = "--no-mdns"
	case inDemoNetns():
		if err := setupDemoNetns(); err != nil {
			return err
		}
		nw.where = "a network namespace made for this demo\n(the host's lo cannot multicast, and is left alone)"
	case loCanMulticast():
		nw.where = "this network namespace\n(its lo can multicast)"
	default:
		err := runDemoInNetns(ctx, stdin, out, errw)
		var nn *errNoNetns
		if !errors.As(err, &nn) {
			return err // the demo ran in its namespace; this is its exit status
		}
		nw.skipped = nn.why
	}
	return runDemo(ctx, out, errw, g, nw)
}

// The lab.
const (
	demoBoards      = 5
	demoPrefix      = "lab"
	demoFailing     = 3 // lab-003: its health check fails, on purpose
	demoHealthCheck = `echo "service did not start" >&2; exit 1`
	demoVersion     = "2.0.0"
	demoPayload     = 8 << 20
	demoChunk       = "256KiB"
)

// errDemoInterrupted ends the demo on Ctrl-C, after its cleanup.
var errDemoInterrupted = &exitError{code: 130, err: errors.New("demo interrupted; the lab is stopped and its files removed")}

func demoRack(i int) string {
	if i < 3 {
		return "a"
	}
	return "b"
}

func runDemo(ctx context.Context, out, errw io.Writer, g *globals, nw demoNet) error {
	start := time.Now()
	mdns := nw.skipped == ""
	fmt.Fprintf(out, "boardlink demo: a lab of %d simulated boards, run inside this process.\n", demoBoards)
	fmt.Fprintln(out, "Each board is a real boardlink agent, as boardlinkd runs it, listening on 127.0.0.1;")
	fmt.Fprintln(out, "its A/B slots, boot loader and reboots are simulated in a temporary directory.")
	if mdns {
		fmt.Fprintf(out, "The boards announce themselves over mDNS pinned to lo, in %s.\n", nw.where)
	} else {
		fmt.Fprintf(out, "mDNS skipped: %s.\nThe boards are given by their addresses instead of being discovered.\n", nw.skipped)
	}
	fmt.Fprintln(out, "Nothing is sent beyond loopback.")
	fmt.Fprintf(out, "%s-%03d's health check fails on purpose, to show a board rolling back.\n", demoPrefix, demoFailing)

	dir, err := os.MkdirTemp("", "boardlink-demo-")
	if err != nil {
		return err
	}
	var lab *simlab.Lab
	cleaned := false
	cleanup := func() error {
		if cleaned {
			return nil
		}
		cleaned = true
		var errs []error
		if lab != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
			errs = append(errs, lab.Stop(sctx))
			cancel()
		}
		return errors.Join(append(errs, os.RemoveAll(dir))...)
	}
	defer cleanup()
	// The id cache of 'exec ID', the pins of the boards' keys and the
	// host's key go with the lab, not into the user's.
	defer setenvFor("XDG_CACHE_HOME", filepath.Join(dir, "cache"))()
	defer setenvFor("XDG_CONFIG_HOME", filepath.Join(dir, "config"))()

	history := hasVerb("history")
	d := &demoRunner{ctx: ctx, out: out, errw: errw, total: 7}
	if history {
		d.total++
	}
	key := filepath.Join(dir, "key")
	// The lab's boards carry a label of their own, and the rollout selects
	// by it: a board that someone else runs where the demo's mDNS reaches
	// is never touched.
	tag := make([]byte, 4)
	rand.Read(tag)
	labTag := hex.EncodeToString(tag)
	labLabel := "demo=" + labTag

	d.step("a signing key for the lab's images; every board trusts its public half")
	if err := d.run(0, "image", "keygen", "--out", key); err != nil {
		return err
	}
	pub, err := image.LoadPublicKey(key + ".pub")
	if err != nil {
		return err
	}
	opts := simlab.Options{Boards: demoBoards, Dir: filepath.Join(dir, "boards"), IDPrefix: demoPrefix,
		Model: "sim", TrustKeys: []ed25519.PublicKey{pub}, HealthTimeout: 20 * time.Second,
		Labels: func(i int) map[string]string { return map[string]string{"rack": demoRack(i), "demo": labTag} },
		HealthChecks: func(i int) []string {
			if i == demoFailing {
				return []string{demoHealthCheck}
			}
			return nil
		}}
	iface := ""
	if mdns {
		opts.Ifaces = []string{"lo"}
		iface = " --iface lo"
	}
	if g.verbose {
		opts.Logger = g.logger()
	}
	if lab, err = simlab.Start(ctx, opts); err != nil {
		if ctx.Err() != nil {
			return errDemoInterrupted
		}
		return fmt.Errorf("start the lab: %w", err)
	}
	tokenFile := filepath.Join(dir, "lab.token")
	if err := os.WriteFile(tokenFile, []byte(lab.Token()+"\n"), 0o600); err != nil {
		return err
	}
	defer setenvFor("BOARDLINK_TOKEN", lab.Token())()
	fmt.Fprintf(out, "\n%d boards up, each as 'boardlinkd --board sim --id ID --label rack=R --label %s --listen 127.0.0.1:0%s --trust-key %s.pub --token-file %s' runs one:\n",
		demoBoards, labLabel, iface, key, tokenFile)
	for _, b := range lab.Boards {
		fmt.Fprintf(out, "  %s  %s  rack=%s", b.ID, b.Addr(), demoRack(b.Index))
		if b.Index == demoFailing {
			fmt.Fprintf(out, "  --health-check '%s'  (fails on purpose)", demoHealthCheck)
		}
		fmt.Fprintln(out)
	}
	fmt.Fprintln(out, "Each serves wss:// with a key of its own and refuses every session without the lab's token,")
	fmt.Fprintln(out, "which the commands below take from BOARDLINK_TOKEN and prove without sending it; this host")
	fmt.Fprintln(out, "pins each board's key the first time it meets it, as ssh does (boardlink trust --list).")
	// board names a board in a command line: its id, found by discovery,
	// or without mDNS its address.
	board := func(b *simlab.Board) string {
		if mdns {
			return b.ID
		}
		return b.Addr()
	}
	withIface := func(args ...string) []string {
		if mdns {
			return append(args, "--iface", "lo")
		}
		return args
	}

	inventory := filepath.Join(dir, "lab.json")
	if mdns {
		d.step("the boards announce themselves over mDNS; ls lists them")
		if err := d.run(0, "ls", "--iface", "lo", "--timeout", "2s", "--no-serial"); err != nil {
			return err
		}
	} else {
		d.step("the lab's inventory (no mDNS: the boards are given by address)")
		if err := writeInventory(inventory, lab, labTag); err != nil {
			return err
		}
		raw, _ := os.ReadFile(inventory)
		fmt.Fprintf(out, "$ cat %s\n%s", inventory, raw)
	}

	if mdns {
		d.step("a command on each board, named by its id (found by discovery, then cached)")
	} else {
		d.step("a command on each board")
	}
	for _, b := range lab.Boards {
		args := []string{"exec", board(b), "--", "uname", "-sm"}
		if mdns {
			args = []string{"exec", "--iface", "lo", b.ID, "--", "uname", "-sm"}
		}
		if err := d.run(0, args...); err != nil {
			return err
		}
	}

	payload := filepath.Join(dir, "rootfs.ext4")
	img := filepath.Join(dir, "rootfs-"+demoVersion+".img")
	d.step(fmt.Sprintf("build and sign an image: %d MiB of payload in %s chunks, for model sim, version %s", demoPayload>>20, demoChunk, demoVersion))
	data := make([]byte, demoPayload)
	rand.Read(data)
	if err := os.WriteFile(payload, data, 0o644); err != nil {
		return err
	}
	if err := d.run(0, "image", "build", "--key", key, "--model", "sim", "--version", demoVersion,
		"--chunk-size", demoChunk, payload, "-o", img); err != nil {
		return err
	}

	db := filepath.Join(dir, "records.db")
	d.step(fmt.Sprintf("roll it out to the boards labeled %s: plan, prepare (write the inactive slot), execute (trial boot, health check, commit), 3 boards at a time", labLabel))
	args := []string{"rollout", img}
	if mdns {
		args = append(args, "--iface", "lo", "--timeout", "2s")
	} else {
		args = append(args, "--inventory", inventory, "--timeout", "0")
	}
	args = append(args, "--select", labLabel, "-C", "3", "--max-failures", "1", "--db", db, "--log-dir", filepath.Join(dir, "logs"))
	// The display is live: bars when stderr is a terminal, lines otherwise.
	code, msg := d.exec(args, d.errw)
	if ctx.Err() != nil {
		return errDemoInterrupted
	}
	if msg != "" {
		fmt.Fprint(out, indent("stderr| ", msg))
	}
	failing := lab.Boards[demoFailing].ID
	if err := checkDemoRollout(ctx, db, lab, code); err != nil {
		return err
	}
	fmt.Fprintf(out, "→ exit status 1, as expected: %s failed its health check (on purpose) and rolled back to its old slot;\n", failing)
	fmt.Fprintf(out, "  the other %d boards committed %s.\n", demoBoards-1, demoVersion)

	if history {
		d.step("the rollout, on record")
		if err := d.run(0, "history", "--db", db); err != nil {
			return err
		}
	}
	d.step(fmt.Sprintf("%s now runs %s, from its other slot", lab.Boards[0].ID, demoVersion))
	if err := d.run(0, withIface("ota", board(lab.Boards[0]), "--status")...); err != nil {
		return err
	}
	d.step(fmt.Sprintf("%s tried %s once, failed its health check, and booted its old slot again", failing, demoVersion))
	if err := d.run(0, withIface("ota", board(lab.Boards[demoFailing]), "--status")...); err != nil {
		return err
	}

	if err := cleanup(); err != nil {
		return fmt.Errorf("clean up the lab: %w", err)
	}
	fmt.Fprintf(out, "\ndemo finished in %.1fs; the boards are stopped and their files removed.\n", time.Since(start).Seconds())
	return nil
}

// checkDemoRollout checks, in the records, that the rollout ended as the
// demo means it to: exit status 1, the failing board rolled back, every
// other one committed.
func checkDemoRollout(ctx context.Context, path string, lab *simlab.Lab, code int) error {
	db, err := store.Open(ctx, path)
	if err != nil {
		return err
	}
	defer db.Close()
	rs, err := db.Rollouts(ctx, 1)
	if err != nil || len(rs) == 0 {
		return fmt.Errorf("the rollout (exit status %d) left no record: %v", code, err)
	}
	_, boards, err := db.Rollout(ctx, rs[0].ID)
	if err != nil {
		return err
	}
	var got, bad []string
	results := map[string]string{}
	for _, b := range boards {
		results[b.BoardID] = b.Result
		got = append(got, b.BoardID+" "+orDash(b.Result))
	}
	for _, b := range lab.Boards {
		want := proto.ResultCommitted
		if b.Index == demoFailing {
			want = proto.ResultRolledBack
		}
		if results[b.ID] != string(want) {
			bad = append(bad, fmt.Sprintf("%s %s (want %s)", b.ID, orDash(results[b.ID]), want))
		}
	}
	if code != 1 || len(bad) > 0 || len(boards) != len(lab.Boards) {
		return fmt.Errorf("the rollout did not end as the demo expects (exit status %d, want 1): %s", code,
			strings.Join(append(bad, "records: "+strings.Join(got, ", ")), "; "))
	}
	return nil
}

// writeInventory writes the lab as a rollout --inventory file, its
// boards labeled demo=tag as well.
func writeInventory(path string, lab *simlab.Lab, tag string) error {
	var b strings.Builder
	b.WriteString("[\n")
	for i, x := range lab.Boards {
		sep := ","
		if i == len(lab.Boards)-1 {
			sep = ""
		}
		fmt.Fprintf(&b, `  {"id": %q, "address": %q, "model": "sim", "labels": {"rack": %q, "demo": %q}}%s`+"\n",
			x.ID, x.Addr(), demoRack(i), tag, sep)
	}
	b.WriteString("]\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// hasVerb reports whether this boardlink has the verb name.
func hasVerb(name string) bool {
	for _, c := range newRoot(io.Discard, io.Discard).Commands() {
		if c.Name() == name {
			return true
		}
	}
	return false
}

// setenvFor sets an environment variable and returns what puts it back.
func setenvFor(key, value string) func() {
	old, had := os.LookupEnv(key)
	os.Setenv(key, value)
	return func() {
		if had {
			os.Setenv(key, old)
		} else {
			os.Unsetenv(key)
		}
	}
}

// demoRunner runs the demo's steps: boardlink command lines, in-process,
// through the CLI itself.
type demoRunner struct {
	ctx       context.Context
	out, errw io.Writer
	n, total  int
}

func (d *demoRunner) step(what string) {
	d.n++
	fmt.Fprintf(d.out, "\n[%d/%d] %s\n", d.n, d.total, what)
}

// run prints a command line, runs it, and shows its output (stderr
// indented); it fails unless the exit status is want.
func (d *demoRunner) run(want int, args ...string) error {
	var stderr strings.Builder
	code, msg := d.exec(args, &stderr)
	if d.ctx.Err() != nil {
		return errDemoInterrupted
	}
	if s := stderr.String() + msg; s != "" {
		fmt.Fprint(d.out, indent("stderr| ", s))
	}
	if code != want {
		return fmt.Errorf("demo step %d: 'boardlink %s': exit status %d, want %d", d.n, strings.Join(quoteArgs(args), " "), code, want)
	}
	return nil
}

// exec prints the command line and runs it with stderr as given; it
// returns the exit status and the error message the CLI would print.
func (d *demoRunner) exec(args []string, stderr io.Writer) (int, string) {
	fmt.Fprintf(d.out, "$ boardlink %s\n", strings.Join(quoteArgs(args), " "))
	err := runWithStdin(d.ctx, strings.NewReader(""), args, d.out, stderr)
	var msg strings.Builder
	code := exitStatus(err, &msg)
	return code, msg.String()
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " $;>&'\"") {
			a = "'" + a + "'"
		}
		out[i] = a
	}
	return out
}

func indent(prefix, s string) string {
	lines := strings.SplitAfter(s, "\n")
	var b strings.Builder
	for _, l := range lines {
		if l != "" {
			b.WriteString(prefix + l)
		}
	}
	if !strings.HasSuffix(s, "\n") {
		b.WriteString("\n")
	}
	return b.String()
}
