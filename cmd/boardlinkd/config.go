package main

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/board/linux"
	"github.com/boardlink/boardlink/internal/units"
)

// DefaultPort is the agent's WebSocket port.
const DefaultPort = 7207

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
	Board    string `yaml:"board"`
	StateDir string `yaml:"state_dir"`
	// Listen serves wss:// with the board's key; InsecureListen plain
	// ws://, only when asked for.
	Listen         string `yaml:"listen"`
	InsecureListen string `yaml:"insecure_listen"`
	Serial         string `yaml:"serial"`
	// TokenFiles hold the tokens hosts may prove, one per line (a file
	// per lab host, or several lines in one); each must be private.
	TokenFiles stringList `yaml:"token_file"`
	// Pairing lets hosts pair with a one-time code (default on); NoAuth
	// serves every session without a proof.
	Pairing     *bool             `yaml:"pairing"`
	NoAuth      bool              `yaml:"no_auth"`
	ID          string            `yaml:"id"`
	Model       string            `yaml:"model"`
	Labels      map[string]string `yaml:"labels"`
	Ifaces      []string          `yaml:"ifaces"`
	NoMDNS      bool              `yaml:"no_mdns"`
	ExecLogSize int               `yaml:"exec_log_size"`
	Verbose     bool              `yaml:"verbose"`
	// LogFormat is text (the default: key=value lines) or json (one
	// object a line, for log collectors).
	LogFormat string `yaml:"log_format"`
	// Roots are directories the file methods may touch, besides StateDir.
	Roots []string `yaml:"roots"`
	// SimBootDelay is the sim board's pause between a boot's end and the
	// next boot.
	SimBootDelay time.Duration `yaml:"sim_boot_delay"`
	// Boot is the boot loader that boots the A/B slots: sim (the sim
	// board's supervisor, the default there), or uboot or grub (a linux
	// board with slots; one without gives no Boot and no Slots, and takes
	// no updates).
	Boot string `yaml:"boot"`
	// Slots maps each slot, A and B, to its block device (a linux board
	// with slots).
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
	// HealthTimeout bounds the health checks (default
	// ota.DefaultHealthTimeout).
	HealthTimeout time.Duration `yaml:"health_timeout"`
	// Limits bound what peers may make the agent hold.
	Limits Limits `yaml:",inline"`
}

// Limits are agent.Limits as flags and config keys.
type Limits struct {
	MaxConns         int           `yaml:"max_conns"`
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	IdleTimeout      time.Duration `yaml:"idle_timeout"`
	KeepaliveTimeout time.Duration `yaml:"keepalive_timeout"`
	MaxInflight      int           `yaml:"max_inflight"`
	MaxStreams       int           `yaml:"max_streams"`
	MaxCommands      int           `yaml:"max_commands"`
	ResultGrace      time.Duration `yaml:"result_grace"`
	MaxDownload      units.Size    `yaml:"max_download"`
	MaxUnpack        units.Size    `yaml:"max_unpack"`
	MaxUnpackEntries int           `yaml:"max_unpack_entries"`
	DownloadDeadline time.Duration `yaml:"download_deadline"`
}

func (l Limits) agent() agent.Limits {
	return agent.Limits{MaxConns: l.MaxConns, HandshakeTimeout: l.HandshakeTimeout, IdleTimeout: l.IdleTimeout, KeepaliveTimeout: l.KeepaliveTimeout,
		MaxInflight: l.MaxInflight, MaxStreams: l.MaxStreams, MaxCommands: l.MaxCommands, ResultGrace: l.ResultGrace,
		MaxDownload: int64(l.MaxDownload), MaxUnpack: int64(l.MaxUnpack), MaxUnpackEntries: l.MaxUnpackEntries,
		DownloadDeadline: l.DownloadDeadline}
}

// stringList is a YAML key that takes one string or a list of them.
type stringList []string

func (s *stringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*s = stringList{n.Value}
		return nil
	}
	var l []string
	if err := n.Decode(&l); err != nil {
		return err
	}
	*s = l
	return nil
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
	case "":
		errs = append(errs, errors.New("--board is required: linux (this system) or sim (a simulated board in --state-dir)"))
	default:
		errs = append(errs, fmt.Errorf("--board %q: want linux or sim", c.Board))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("--state-dir is required"))
	}
	if c.Listen == "" && c.InsecureListen == "" && c.Serial == "" {
		errs = append(errs, errors.New("nothing to serve: give --listen, --insecure-listen or --serial"))
	}
	for flag, addr := range map[string]string{"--listen": c.Listen, "--insecure-listen": c.InsecureListen} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flag, err))
		}
	}
	if c.Listen != "" && c.Listen == c.InsecureListen {
		errs = append(errs, errors.New("--listen and --insecure-listen name the same address"))
	}
	if c.Serial != "" {
		if _, err := c.serialLine(); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := c.tokens(); err != nil {
		errs = append(errs, err)
	}
	for _, r := range c.Roots {
		if fi, err := os.Stat(r); err != nil || !fi.IsDir() {
			errs = append(errs, fmt.Errorf("--root %s: not a directory", r))
		}
	}
	switch c.LogFormat {
	case "", logText, logJSON:
	default:
		errs = append(errs, fmt.Errorf("--log-format %q: want %s or %s", c.LogFormat, logText, logJSON))
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

// validateLinux checks the settings of a linux board. Without --boot and
// --slot it is a board without A/B slots: it serves exec, files and
// reboot and takes no updates, so the update settings are errors there.
// With either it is an A/B board, and a boot loader, both slot devices,
// the boot environment and the command line must be there, and the boot
// loader's tools installed (linux.New). Reading the environment, and the
// slot the command line names, is left to the agent: a board whose boot
// script is wrong still serves exec, and says what is wrong in its log
// and its OTA status.
func (c *Config) validateLinux() []error {
	var errs []error
	if c.RebootCommand != "" && strings.TrimSpace(c.RebootCommand) == "" {
		errs = append(errs, errors.New("--reboot-command: an empty command"))
	}
	if !c.hasSlots() {
		for _, s := range []struct {
			flag string
			set  bool
		}{
			{"--boot-env", c.BootEnv != ""}, {"--cmdline", c.Cmdline != ""},
			{"--trust-key", len(c.TrustKeys) > 0}, {"--health-check", len(c.HealthChecks) > 0},
		} {
			if s.set {
				errs = append(errs, fmt.Errorf("%s: only for a board with A/B slots (give --boot and --slot A=DEV --slot B=DEV); without them the board takes no updates", s.flag))
			}
		}
		return errs
	}
	switch c.Boot {
	case bootUBoot, bootGRUB:
	case "":
		errs = append(errs, errors.New("--boot is required with --slot: uboot or grub (a board without A/B slots gives neither)"))
	case bootSim:
		errs = append(errs, errors.New("--boot sim: the sim boot loader is the sim board's supervisor; a linux board boots with --boot uboot or --boot grub"))
	default:
		errs = append(errs, fmt.Errorf("--boot %q: want uboot or grub", c.Boot))
	}
	slotsOK := true
	for _, s := range []string{board.SlotA, board.SlotB} {
		dev, ok := c.Slots[s]
		if !ok || dev == "" {
			errs = append(errs, fmt.Errorf("--slot %s=DEVICE is required with --boot (slots: {A: DEV, B: DEV} in a config file; a board without A/B slots gives neither)", s))
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
		if err := readable(c.bootEnv()); err != nil {
			what := "the U-Boot environment's fw_env.config"
			if c.Boot == bootGRUB {
				what = "the grubenv (make one with grub-editenv FILE create)"
			}
			errs = append(errs, fmt.Errorf("--boot-env, %s: %w", what, err))
		}
	}
	cmdline := c.Cmdline
	if cmdline == "" {
		cmdline = linux.DefaultCmdline
	}
	if _, err := os.ReadFile(cmdline); err != nil {
		errs = append(errs, fmt.Errorf("--cmdline: %w", err))
	}
	if len(errs) == 0 && slotsOK {
		// The tools: a missing one names its Debian package.
		if _, err := linux.New(*c.bootConfig()); err != nil {
			errs = append(errs, fmt.Errorf("--boot %s: %w", c.Boot, err))
		}
	}
	return errs
}

// hasSlots reports whether a linux board has A/B slots: --boot or --slot
// says so, and validateLinux then requires both.
func (c *Config) hasSlots() bool { return c.Boot != "" || len(c.Slots) > 0 }

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

// bootConfig is the boot control of a linux board; nil for one without
// A/B slots.
func (c *Config) bootConfig() *linux.Config {
	if !c.hasSlots() {
		return nil
	}
	return &linux.Config{Loader: linux.Loader(c.Boot), Devices: maps.Clone(c.Slots), Env: c.bootEnv(), Cmdline: c.Cmdline}
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

// fileRoots returns the directories the file methods may touch: every
// --root, absolute and clean. Never the state dir: it holds the board's
// key, its boot environment and its update state.
func (c *Config) fileRoots() ([]string, error) {
	dirs := slices.Clone(c.Roots)
	for i, d := range dirs {
		abs, err := filepath.Abs(d)
		if err != nil {
			return nil, fmt.Errorf("root %s: %w", d, err)
		}
		dirs[i] = abs
	}
	return dirs, nil
}

// tokens reads the token files: one token per line, blank lines and
// lines starting with # ignored, each named FILE:LINE in the log. A file
// that others may read is refused.
func (c *Config) tokens() ([]agent.Token, error) {
	var out []agent.Token
	for _, path := range c.TokenFiles {
		if err := auth.CheckPrivate(path); err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		n := 0
		for i, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if len(line) < minTokenLen {
				return nil, fmt.Errorf("--token-file %s:%d: a token of %d characters is too short to guess at (want %d or more; make one with: head -c 32 /dev/urandom | base64)",
					path, i+1, len(line), minTokenLen)
			}
			out = append(out, agent.Token{Name: fmt.Sprintf("%s:%d", path, i+1), Value: line})
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("--token-file %s holds no token", path)
		}
	}
	return out, nil
}

// minTokenLen refuses tokens short enough to guess online, rate limit or
// not.
const minTokenLen = 16

// pairing reports whether pairing is on (the default).
func (c *Config) pairing() bool { return c.Pairing == nil || *c.Pairing }

// Files of the board's identity and of who may use it, in STATE_DIR/auth.
func (c *Config) keyFile() string    { return filepath.Join(c.StateDir, "auth", "key.pem") }
func (c *Config) pairedFile() string { return filepath.Join(c.StateDir, "auth", "paired.json") }
func (c *Config) codeFile() string   { return filepath.Join(c.StateDir, "auth", "pairing-code.json") }

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
