package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// packagedConfig is the config file the boardlinkd package installs as
// /etc/boardlink/boardlinkd.yaml.
const packagedConfig = "../../packaging/files/boardlinkd.yaml"

// TestPackagedConfig: the packaged config is one boardlinkd takes, and
// says what the package promises: a linux board without slots, its state
// in the unit's StateDirectory, wss on port 7207, pairing, files under
// /tmp.
func TestPackagedConfig(t *testing.T) {
	file, err := loadConfigFile(packagedConfig)
	if err != nil {
		t.Fatal(err)
	}
	if file.StateDir != "/var/lib/boardlink" {
		t.Errorf("state_dir %q, want the unit's StateDirectory /var/lib/boardlink", file.StateDir)
	}
	// The state dir is the test's own; the rest is the file's.
	cfg, err := parseConfig(t, "--config", packagedConfig, "--state-dir", t.TempDir())
	if err != nil {
		t.Fatalf("boardlinkd refuses the packaged config: %v", err)
	}
	if cfg.Board != boardLinux || cfg.bootConfig() != nil || cfg.Listen != ":7207" || cfg.Pairing == nil || !*cfg.Pairing ||
		!slices.Equal(cfg.Roots, []string{"/tmp"}) || cfg.Serial != "" || len(cfg.TokenFiles) != 0 {
		t.Errorf("the packaged config: %+v", cfg)
	}
}

// TestPackagedConfigExamples: every key the packaged config shows in a
// comment ("# key: value") is one boardlinkd knows, with a value of the
// right type, so that uncommenting it works.
func TestPackagedConfigExamples(t *testing.T) {
	text, err := os.ReadFile(packagedConfig)
	if err != nil {
		t.Fatal(err)
	}
	example := regexp.MustCompile(`^# ([a-z_]+): `)
	var keys []string
	var out strings.Builder
	for _, line := range strings.Split(string(text), "\n") {
		if m := example.FindStringSubmatch(line); m != nil {
			keys = append(keys, m[1])
			line = strings.TrimPrefix(line, "# ")
		}
		out.WriteString(line + "\n")
	}
	// The examples the file's readers look for.
	for _, k := range []string{"token_file", "id", "model", "labels", "serial", "boot", "slots", "boot_env", "trust_keys", "health_checks"} {
		if !slices.Contains(keys, k) {
			t.Errorf("the packaged config shows no %s example (it shows %v)", k, keys)
		}
	}
	path := filepath.Join(t.TempDir(), "boardlinkd.yaml")
	if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfigFile(path)
	if err != nil {
		t.Fatalf("with its examples uncommented: %v\n%s", err, out.String())
	}
	if cfg.Serial != "/dev/ttyGS0" || len(cfg.Slots) != 2 || cfg.Boot == "" || len(cfg.TokenFiles) != 1 || cfg.Model == "" {
		t.Errorf("the examples read as %+v", cfg)
	}
}
