package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// DefaultPort is the agent's WebSocket port.
const DefaultPort = 7207

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
	if c.ExecLogSize < 0 {
		errs = append(errs, errors.New("exec_log_size must not be negative"))
	}
	return errors.Join(errs...)
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

// serialPort splits DEV[:BAUD].
func (c *Config) serialPort() (string, int, error) {
	dev, baud, ok := strings.Cut(c.Serial, ":")
	if !ok {
		return dev, 115200, nil
	}
	n, err := strconv.Atoi(baud)
	if err != nil || n <= 0 {
		return "", 0, fmt.Errorf("--serial %s: bad baud rate", c.Serial)
	}
	return dev, n, nil
}
