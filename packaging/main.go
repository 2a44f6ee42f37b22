package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/boardlink/boardlink/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "packaging:", err)
		os.Exit(1)
	}
}

// run parses args, builds the packages and says what it made.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("packaging", flag.ContinueOnError)
	out := fs.String("o", "dist", "directory to write the packages to")
	arches := fs.String("arch", strings.Join(targetNames(), ","), "Debian architectures to build for, comma separated")
	ver := fs.String("version", version.Version, "version of the packages and of the binaries (boardlinkd --version)")
	goarm := fs.String("armhf-goarm", "7", "GOARM of the armhf build: 7 is Debian's armhf; 6 for a Raspberry Pi 1 or Zero, whose Raspberry Pi OS armhf is ARMv6")
	maint := fs.String("maintainer", "boardlink developers", `the packages' Maintainer, "NAME <EMAIL>"`)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	opts, err := newOptions(*out, *arches, *ver, *goarm)
	if err != nil {
		return err
	}
	opts.maintainer = *maint
	results, err := build(ctx, opts)
	if err != nil {
		return err
	}
	report(stdout, results)
	return nil
}

// options are what build makes, validated.
type options struct {
	out        string
	targets    []target
	version    string
	maintainer string
}

// debVersion is a version both the linker's -X and a Debian control
// file take.
var debVersion = regexp.MustCompile(`^v?[0-9][0-9A-Za-z.+~-]*$`)

// newOptions checks the flags: known architectures, each once, a
// version that fits a package name, and an ARM version Go builds armhf
// for.
func newOptions(out, arches, ver, goarm string) (options, error) {
	if out == "" {
		return options{}, fmt.Errorf("-o: an output directory is required")
	}
	if !debVersion.MatchString(ver) {
		return options{}, fmt.Errorf("-version %q: want digits, letters and . + ~ - only, starting with a digit (or v and a digit)", ver)
	}
	if goarm != "6" && goarm != "7" {
		return options{}, fmt.Errorf("-armhf-goarm %q: want 6 or 7", goarm)
	}
	o := options{out: out, version: ver}
	for _, name := range strings.Split(arches, ",") {
		i := slices.IndexFunc(targets, func(t target) bool { return t.deb == name })
		if i < 0 {
			return options{}, fmt.Errorf("-arch %q: want some of %s", name, strings.Join(targetNames(), ","))
		}
		if slices.Contains(o.targets, targets[i]) {
			return options{}, fmt.Errorf("-arch %s: given twice", name)
		}
		t := targets[i]
		if t.goarch == "arm" {
			t.goarm = goarm
		}
		o.targets = append(o.targets, t)
	}
	return o, nil
}

// report lists the packages and the size of each stripped binary.
func report(w io.Writer, results []result) {
	for _, r := range results {
		for _, p := range r.packages {
			fmt.Fprintln(w, p)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "arch\tboardlinkd\tboardlink\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t\n", r.target.deb, mib(r.agentSize), mib(r.cliSize))
	}
	tw.Flush()
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
