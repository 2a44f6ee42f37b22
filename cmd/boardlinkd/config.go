package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// DefaultPort is the agent's WebSocket port.
const DefaultPort = 7207

// DefaultHealthTimeout bounds the health checks after a trial boot.
const DefaultHealthTimeout = 60 * time.Second

// Boot loaders (--boot).
const (
	bootSim   = "sim"   // the sim board's supervisor
	bootUBoot = "uboot" // U-Boot, board/linux
	bootGRUB  = "grub"  // GRUB, board/linux
)

// Config is the agent's configuration: flags, or the same keys in a YAML
// file given with --config (flags win).
type Config struct {
	Board       string            `yaml:"board"`
	StateDir    string            `yaml:"state_dir"`
	Listen      string            `yaml:"listen"`
	Serial      string            `yaml:"serial"`
	TokenFile   string            `yaml:"token_file"`
	ID          string            `yaml:"id"`
	Model       string            `yaml:"model"`
	Labels      map[string]string `yaml:"labels"`
	Ifaces      []string          `yaml:"ifaces"`
	NoMDNS      bool              `yaml:"no_mdns"`
	ExecLogSize int               `yaml:"exec_log_size"`
	Verbose     bool              `yaml:"verbose"`
	// Roots are directories the file methods may touch, besides StateDir.
	Roots []string `yaml:"roots"`
	// SimBootDelay is the sim board's pause between a boot's end and the
	// next boot.
	SimBootDelay time.Duration `yaml:"sim_boot_delay"`
	// Boot is the boot loader that boots the A/B slots: sim (the sim
	// board's supervisor, the default), or uboot or grub (board/linux,
	// for a --board linux this build does not have yet).
	Boot string `yaml:"boot"`
	// TrustKeys are the files of the ed25519 public keys trusted to sign
	// OTA images; each must be readable (the image package parses them).
	TrustKeys []string `yaml:"trust_keys"`
	// HealthChecks are shell commands run, in order, after a trial boot;
	// all must exit 0 within HealthTimeout for the update to commit.
	HealthChecks []string `yaml:"health_checks"`
	// HealthTimeout bounds the health checks (default 60s).
	HealthTimeout time.Duration `yaml:"health_timeout"`
}

// loadConfigFile reads a YAML config; unknown keys are an error so a typo
// is not silently ignored.
func loadConfigFile(path string) (Config, error) {
	var c Config
	f, err := os.Open(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

func (c *Config) validate() error {
	var errs []error
	if c.Board != "sim" {
		errs = append(errs, fmt.Errorf("--board %q: the only backend in this build is sim", c.Board))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("--state-dir is required"))
	}
	if c.Listen == "" && c.Serial == "" {
		errs = append(errs, errors.New("nothing to serve: give --listen or --serial"))
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			errs = append(errs, fmt.Errorf("--listen: %w", err))
		}
	}
	if c.Serial != "" {
		if _, err := c.serialLine(); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := c.token(); err != nil {
		errs = append(errs, err)
	}
	for _, r := range c.Roots {
		if fi, err := os.Stat(r); err != nil || !fi.IsDir() {
			errs = append(errs, fmt.Errorf("--root %s: not a directory", r))
		}
	}
	if c.ExecLogSize < 0 {
		errs = append(errs, errors.New("exec_log_size must not be negative"))
	}
	if c.SimBootDelay <= 0 {
		errs = append(errs, errors.New("sim_boot_delay must be positive"))
	}
	switch c.Boot {
	case "", bootSim:
		c.Boot = bootSim
	case bootUBoot, bootGRUB:
		errs = append(errs, fmt.Errorf("--boot %s: U-Boot and GRUB need --board linux, which this build does not have (the sim board boots with --boot sim)", c.Boot))
	default:
		errs = append(errs, fmt.Errorf("--boot %q: want sim, uboot or grub", c.Boot))
	}
	for _, k := range c.TrustKeys {
		if err := readable(k); err != nil {
			errs = append(errs, fmt.Errorf("--trust-key: %w", err))
		}
	}
	for _, hc := range c.HealthChecks {
		if strings.TrimSpace(hc) == "" {
			errs = append(errs, errors.New("--health-check: an empty command"))
		}
	}
	if c.HealthTimeout <= 0 {
		errs = append(errs, errors.New("health_timeout must be positive"))
	}
	return errors.Join(errs...)
}

// readable checks that path is a regular file this process can read.
func readable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", path)
	}
	return nil
}

// fileRoots returns the directories the file methods may touch: the state
// dir and every --root, absolute and clean.
func (c *Config) fileRoots() ([]string, error) {
	dirs := append([]string{c.StateDir}, c.Roots...)
	for i, d := range dirs {
		abs, err := filepath.Abs(d)
		if err != nil {
			return nil, fmt.Errorf("root %s: %w", d, err)
		}
		dirs[i] = abs
	}
	return dirs, nil
}

// token reads the token file; no file means no token.
func (c *Config) token() (string, error) {
	if c.TokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", c.TokenFile)
	}
	return tok, nil
}

// serialLine is what --serial names: a unix socket to listen on, or a
// serial device and its baud rate.
type serialLine struct {
	unix string
	dev  string
	baud int
}

// serialLine parses unix:PATH or DEV[:BAUD].
func (c *Config) serialLine() (serialLine, error) {
	if path, ok := strings.CutPrefix(c.Serial, "unix:"); ok {
		if path == "" {
			return serialLine{}, fmt.Errorf("--serial %s: no socket path", c.Serial)
		}
		return serialLine{unix: path}, nil
	}
	dev, baud, ok := strings.Cut(c.Serial, ":")
	if !ok {
		return serialLine{dev: dev, baud: 115200}, nil
	}
	n, err := strconv.Atoi(baud)
	if err != nil || n <= 0 {
		return serialLine{}, fmt.Errorf("--serial %s: bad baud rate", c.Serial)
	}
	return serialLine{dev: dev, baud: n}, nil
}
