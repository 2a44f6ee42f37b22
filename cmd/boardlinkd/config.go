package main

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/board/linux"
)

// DefaultPort is the agent's WebSocket port.
const DefaultPort = 7207

// DefaultHealthTimeout bounds the health checks after a trial boot.
const DefaultHealthTimeout = 60 * time.Second

// Boards (--board).
const (
	boardSim   = "sim"   // board/sim: a board in a directory, with its supervisor
	boardLinux = "linux" // board/linux: the Linux system boardlinkd runs on
)

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
	// board's supervisor, the default there), or uboot or grub (a linux
	// board, which needs one of them).
	Boot string `yaml:"boot"`
	// Slots maps each slot, A and B, to its block device (linux board).
	Slots map[string]string `yaml:"slots"`
	// BootEnv is the boot loader's environment (linux board): U-Boot's
	// fw_env.config, or GRUB's grubenv; "" for the loader's default.
	BootEnv string `yaml:"boot_env"`
	// Cmdline is the kernel command line the booted slot is read from
	// (linux board; "" is /proc/cmdline).
	Cmdline string `yaml:"cmdline"`
	// RebootCommand is the shell command that reboots a linux board once
	// the agent stopped; "" is systemctl reboot, or reboot without
	// systemd.
	RebootCommand string `yaml:"reboot_command"`
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
	switch c.Board {
	case boardSim, boardLinux:
	default:
		errs = append(errs, fmt.Errorf("--board %q: want sim or linux", c.Board))
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
	switch c.Board {
	case boardSim:
		errs = append(errs, c.validateSim()...)
	case boardLinux:
		errs = append(errs, c.validateLinux()...)
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

// validateSim checks the settings of the sim board: its boot loader is
// its supervisor, and the linux board's settings have no meaning there.
func (c *Config) validateSim() []error {
	var errs []error
	switch c.Boot {
	case "", bootSim:
		c.Boot = bootSim
	case bootUBoot, bootGRUB:
		errs = append(errs, fmt.Errorf("--boot %s: U-Boot and GRUB need --board linux (the sim board boots with --boot sim)", c.Boot))
	default:
		errs = append(errs, fmt.Errorf("--boot %q: want sim, uboot or grub", c.Boot))
	}
	for _, s := range []struct {
		flag string
		set  bool
	}{
		{"--slot", len(c.Slots) > 0}, {"--boot-env", c.BootEnv != ""},
		{"--cmdline", c.Cmdline != ""}, {"--reboot-command", c.RebootCommand != ""},
	} {
		if s.set {
			errs = append(errs, fmt.Errorf("%s: only for --board linux (the sim board's slots and boot environment live in --state-dir)", s.flag))
		}
	}
	return errs
}

// validateLinux checks the settings of a linux board: a boot loader, both
// slot devices, the boot environment and the command line must be there,
// and the boot loader's tools installed (linux.New). Reading the
// environment, and the slot the command line names, is left to the
// agent: a board whose boot script is wrong still serves exec, and says
// what is wrong in its log and its OTA status.
func (c *Config) validateLinux() []error {
	var errs []error
	switch c.Boot {
	case bootUBoot, bootGRUB:
	case "":
		errs = append(errs, errors.New("--boot is required with --board linux: uboot or grub"))
	case bootSim:
		errs = append(errs, errors.New("--boot sim: the sim boot loader is the sim board's supervisor; a linux board boots with --boot uboot or --boot grub"))
	default:
		errs = append(errs, fmt.Errorf("--boot %q: want uboot or grub", c.Boot))
	}
	slotsOK := true
	for _, s := range []string{board.SlotA, board.SlotB} {
		dev, ok := c.Slots[s]
		if !ok || dev == "" {
			errs = append(errs, fmt.Errorf("--slot %s=DEVICE is required with --board linux (slots: {A: DEV, B: DEV} in a config file)", s))
			slotsOK = false
			continue
		}
		if fi, err := os.Stat(dev); err != nil {
			errs = append(errs, fmt.Errorf("--slot %s=%s: %w", s, dev, err))
			slotsOK = false
		} else if fi.IsDir() {
			errs = append(errs, fmt.Errorf("--slot %s=%s: a directory, not a device", s, dev))
			slotsOK = false
		}
	}
	for s := range c.Slots {
		if s != board.SlotA && s != board.SlotB {
			errs = append(errs, fmt.Errorf("--slot %s: no such slot (A or B)", s))
			slotsOK = false
		}
	}
	if slotsOK && sameFile(c.Slots[board.SlotA], c.Slots[board.SlotB]) {
		errs = append(errs, fmt.Errorf("--slot A=%s and --slot B=%s are the same device", c.Slots[board.SlotA], c.Slots[board.SlotB]))
		slotsOK = false
	}
	if c.Boot == bootUBoot || c.Boot == bootGRUB {
		if env := c.bootEnv(); env != "" {
			if err := readable(env); err != nil {
				what := "the U-Boot environment's fw_env.config"
				if c.Boot == bootGRUB {
					what = "the grubenv (make one with grub-editenv FILE create)"
				}
				errs = append(errs, fmt.Errorf("--boot-env, %s: %w", what, err))
			}
		}
	}
	cmdline := c.Cmdline
	if cmdline == "" {
		cmdline = linux.DefaultCmdline
	}
	if _, err := os.ReadFile(cmdline); err != nil {
		errs = append(errs, fmt.Errorf("--cmdline: %w", err))
	}
	if c.RebootCommand != "" && strings.TrimSpace(c.RebootCommand) == "" {
		errs = append(errs, errors.New("--reboot-command: an empty command"))
	}
	if len(errs) == 0 && slotsOK {
		// The tools: a missing one names its Debian package.
		if _, err := linux.New(c.bootConfig()); err != nil {
			errs = append(errs, fmt.Errorf("--boot %s: %w", c.Boot, err))
		}
	}
	return errs
}

// sameFile reports whether a and b name the same file (or device).
func sameFile(a, b string) bool {
	fa, erra := os.Stat(a)
	fb, errb := os.Stat(b)
	if erra != nil || errb != nil {
		return filepath.Clean(a) == filepath.Clean(b)
	}
	return os.SameFile(fa, fb)
}

// bootEnv is the boot loader's environment of a linux board: --boot-env,
// or the loader's default.
func (c *Config) bootEnv() string {
	switch {
	case c.BootEnv != "":
		return c.BootEnv
	case c.Boot == bootUBoot:
		return linux.DefaultUBootEnv
	case c.Boot == bootGRUB:
		return linux.DefaultGRUBEnv
	}
	return ""
}

// bootConfig is the boot control of a linux board.
func (c *Config) bootConfig() linux.Config {
	return linux.Config{Loader: linux.Loader(c.Boot), Devices: maps.Clone(c.Slots), Env: c.bootEnv(), Cmdline: c.Cmdline}
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
