package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/agent/ota"
)

// parseConfig is what boardlinkd would run with for args.
func parseConfig(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	var opts options
	cmd := &cobra.Command{}
	opts.bind(cmd)
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	return opts.config(cmd)
}

func TestOTASettings(t *testing.T) {
	dir := t.TempDir()
	keys := []string{filepath.Join(dir, "release.pub"), filepath.Join(dir, "lab.pub"), filepath.Join(dir, "cli.pub")}
	for _, k := range keys {
		if err := os.WriteFile(k, []byte("key\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(dir, "agent.yaml")
	yaml := "board: sim\nstate_dir: " + dir + "\nboot: sim\ntrust_keys: [" + keys[0] + ", " + keys[1] + "]\n" +
		"health_checks:\n  - systemctl is-system-running --wait\n  - test -e /run/app.ok\nhealth_timeout: 90s\n"
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}

	cfg, err := parseConfig(t, "--board", "sim", "--state-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Boot != "sim" || cfg.TrustKeys != nil || cfg.HealthChecks != nil || cfg.HealthTimeout != ota.DefaultHealthTimeout {
		t.Errorf("defaults: boot %q, keys %v, checks %v, timeout %v", cfg.Boot, cfg.TrustKeys, cfg.HealthChecks, cfg.HealthTimeout)
	}

	cfg, err = parseConfig(t, "--config", file)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Boot != "sim" || !slices.Equal(cfg.TrustKeys, keys[:2]) || cfg.HealthTimeout != 90*time.Second ||
		!slices.Equal(cfg.HealthChecks, []string{"systemctl is-system-running --wait", "test -e /run/app.ok"}) {
		t.Errorf("from the file: %+v", cfg)
	}

	// Flags win; a list flag replaces the file's list.
	cfg, err = parseConfig(t, "--config", file, "--trust-key", keys[2], "--health-check", "true", "--health-check", "echo ok", "--health-timeout", "5s")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.TrustKeys, keys[2:]) || !slices.Equal(cfg.HealthChecks, []string{"true", "echo ok"}) || cfg.HealthTimeout != 5*time.Second {
		t.Errorf("flags over the file: %+v", cfg)
	}

	// A file without the keys gets the flags' defaults.
	bare := filepath.Join(dir, "bare.yaml")
	if err := os.WriteFile(bare, []byte("board: sim\nstate_dir: "+dir+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if cfg, err = parseConfig(t, "--config", bare); err != nil || cfg.Boot != "sim" || cfg.HealthTimeout != ota.DefaultHealthTimeout {
		t.Errorf("bare file: %+v, %v", cfg, err)
	}

	// Every bad key file is named, in one error.
	os.Chmod(keys[1], 0o000)
	_, err = parseConfig(t, "--config", file, "--trust-key", keys[1], "--trust-key", filepath.Join(dir, "nope.pub"))
	if err == nil || !strings.Contains(err.Error(), "nope.pub") {
		t.Fatalf("bad keys: %v", err)
	}
	if os.Geteuid() != 0 && !strings.Contains(err.Error(), "lab.pub") { // root reads anything
		t.Errorf("an unreadable key passed: %v", err)
	}
}

func TestHelpDescribesTheOTASettings(t *testing.T) {
	var out strings.Builder
	if err := run(t.Context(), []string{"--help"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--trust-key", "--health-check", "--health-timeout", "--boot",
		"trust_keys", "health_checks", "health_timeout", "BOARDLINKD_SIM_SLOT", "falling back to A", "STATE_DIR/slots"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

// The access and limit settings come from the file, flags win, and the
// defaults are the agent's.
func TestAccessAndLimitSettings(t *testing.T) {
	dir := t.TempDir()
	tokens := []string{filepath.Join(dir, "lab-a"), filepath.Join(dir, "lab-b")}
	for i, f := range tokens {
		body := fmt.Sprintf("# lab host %d\n\nthe-token-of-lab-host-%d\nanother-token-of-lab-%d\n", i, i, i)
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(dir, "agent.yaml")
	yaml := "board: sim\nstate_dir: " + dir + "\ntoken_file: " + tokens[0] + "\npairing: false\nno_auth: true\n" +
		"insecure_listen: 127.0.0.1:7208\nmax_conns: 8\nidle_timeout: 1m\nmax_download: 64MiB\nmax_unpack: 1073741824\n"
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig(t, "--config", file)
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Limits.agent()
	if cfg.pairing() || !cfg.NoAuth || cfg.InsecureListen != "127.0.0.1:7208" || l.MaxConns != 8 || l.IdleTimeout != time.Minute ||
		l.MaxDownload != 64<<20 || l.MaxUnpack != 1<<30 || l.MaxInflight != agent.DefaultMaxInflight || l.HandshakeTimeout != agent.DefaultHandshakeTimeout {
		t.Errorf("from the file: %+v %+v", cfg, l)
	}
	toks, err := cfg.tokens()
	if err != nil || len(toks) != 2 || toks[0].Value != "the-token-of-lab-host-0" || toks[1].Name != tokens[0]+":4" {
		t.Errorf("tokens: %+v %v", toks, err)
	}
	// Flags win: a list for token_file, pairing and no_auth switched back.
	cfg, err = parseConfig(t, "--config", file, "--token-file", tokens[0], "--token-file", tokens[1], "--pairing", "--no-auth=false", "--max-conns", "2", "--max-download", "1GiB")
	if err != nil {
		t.Fatal(err)
	}
	if toks, _ := cfg.tokens(); len(toks) != 4 || !cfg.pairing() || cfg.NoAuth || cfg.Limits.MaxConns != 2 || cfg.Limits.MaxDownload != 1<<30 {
		t.Errorf("flags over the file: %d tokens, %+v", len(toks), cfg)
	}
	// A list in the file.
	list := filepath.Join(dir, "list.yaml")
	os.WriteFile(list, []byte("board: sim\nstate_dir: "+dir+"\ntoken_file: ["+tokens[0]+", "+tokens[1]+"]\n"), 0o644)
	if cfg, err = parseConfig(t, "--config", list); err != nil || len(cfg.TokenFiles) != 2 || !cfg.pairing() {
		t.Errorf("token_file as a list: %+v %v", cfg, err)
	}
	// The state dir is never a file root.
	if roots, err := cfg.fileRoots(); err != nil || len(roots) != 0 {
		t.Errorf("file roots without --root: %v %v", roots, err)
	}
}

// A boolean flag given on the command line wins over the file both ways:
// --verbose=false and --no-mdns=false switch off what the file switched on.
func TestBoolFlagsWinOverTheFile(t *testing.T) {
	dir := t.TempDir()
	on := filepath.Join(dir, "on.yaml")
	if err := os.WriteFile(on, []byte("board: sim\nstate_dir: "+dir+"\nverbose: true\nno_mdns: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	off := filepath.Join(dir, "off.yaml")
	if err := os.WriteFile(off, []byte("board: sim\nstate_dir: "+dir+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args          []string
		verbose, noMD bool
	}{
		{[]string{"--config", on}, true, true},
		{[]string{"--config", on, "--verbose=false", "--no-mdns=false"}, false, false},
		{[]string{"--config", on, "-v=false"}, false, true},
		{[]string{"--config", off}, false, false},
		{[]string{"--config", off, "--verbose", "--no-mdns"}, true, true},
	} {
		cfg, err := parseConfig(t, tc.args...)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if cfg.Verbose != tc.verbose || cfg.NoMDNS != tc.noMD {
			t.Errorf("%v: verbose %v, no_mdns %v; want %v, %v", tc.args, cfg.Verbose, cfg.NoMDNS, tc.verbose, tc.noMD)
		}
	}
}
