package service

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher/power"
	"github.com/boardlink/boardlink/proto"
)

// ErrBadConfig is wrapped by every error of a config that cannot be used.
var ErrBadConfig = errors.New("bad service config")

// Config is the service's YAML config (boardlink serve --config).
type Config struct {
	// Listen is the API's address when boardlink serve is given no
	// --listen (default 127.0.0.1:7300).
	Listen string `yaml:"listen" validate:"omitempty,hostname_port"`
	// Boards are the static entries: a board on a known address (a
	// ser2net port, a QEMU socket, a fixed IP).
	Boards []BoardConfig `yaml:"boards" validate:"max=10000,dive"`
	// Users may call the API, each with a bearer token.
	Users []UserConfig `yaml:"users" validate:"required,min=1,max=1000,dive"`
	// TokenFile is the token of boards that name none of their own.
	TokenFile string `yaml:"token_file" validate:"max=4096"`
	// KnownBoards is the file of the boards' pinned keys (default:
	// known_boards.json beside the database).
	KnownBoards string `yaml:"known_boards" validate:"max=4096"`
	// Heartbeat is how often each board is asked board.info (default 3s).
	Heartbeat Duration `yaml:"heartbeat"`
	// QuarantineAfter is how many failed health checks or recoveries in a
	// row quarantine a board (default 5; -1: never).
	QuarantineAfter int             `yaml:"quarantine_after" validate:"min=-1,max=10000"`
	Leases          LeaseBounds     `yaml:"leases"`
	Discovery       DiscoveryConfig `yaml:"discovery"`
	Recovery        RecoveryConfig  `yaml:"recovery"`
	// ConsoleBytes bounds each board's console record on disk (about
	// twice this; default consolelog's).
	ConsoleBytes int64 `yaml:"console_bytes" validate:"min=0"`
	// Metrics says who may read /metrics (default: a token is required).
	Metrics MetricsConfig `yaml:"metrics"`
	// Dashboard configures the web dashboard at / (docs/service.md).
	Dashboard DashboardConfig `yaml:"dashboard"`
	// Owner names this service among those sharing one database (default:
	// the host's name and the listen address, "host@127.0.0.1:7300").
	// The rollouts it runs are its own to resume: keep it across restarts.
	Owner string `yaml:"owner" validate:"omitempty,max=128"`
	// Advertise is the URL the other services reach this one's API at
	// (default: the address served, unless it is a wildcard).
	Advertise string `yaml:"advertise" validate:"omitempty,max=1024,http_url"`
	// PeerTokenFile is the token the services sharing a database present
	// to each other when one forwards a request to a board's owner; without
	// it, boards owned by another service are listed but not driven
	// through this one.
	PeerTokenFile string `yaml:"peer_token_file" validate:"max=4096"`
	// PeerCAFile is the PEM roots the other services' https URLs are
	// checked against (default: the system's).
	PeerCAFile string `yaml:"peer_ca_file" validate:"max=4096"`
	// ClaimTTL is how long this service owns its boards without renewing
	// its claims (default 10s; renewed every third of it), so that the
	// others see a dead host's boards offline within about 14s.
	ClaimTTL Duration `yaml:"claim_ttl"`
	// Memory: the process's memory limit, GOGC and trims (memory.go).
	Memory MemoryConfig `yaml:"memory"`
}

// RecoveryConfig bounds the recovery of a board with a power driver whose
// agent stopped answering: power cycles, each followed by a wait for a
// new boot; a board that never comes back is quarantined.
type RecoveryConfig struct {
	Attempts int      `yaml:"attempts" validate:"min=0,max=100"` // default 3
	Wait     Duration `yaml:"wait"`                              // default 3m
}

// BoardConfig is one static board.
type BoardConfig struct {
	ID          string            `yaml:"id" validate:"required,max=63"`
	Address     string            `yaml:"address" validate:"required,max=1024"`
	TokenFile   string            `yaml:"token_file" validate:"max=4096"`
	Fingerprint string            `yaml:"fingerprint" validate:"max=128"`
	Model       string            `yaml:"model" validate:"max=128"`
	Labels      map[string]string `yaml:"labels" validate:"max=64,dive,keys,required,max=128,endkeys,max=256"`
	// Power is its power driver (dispatcher/power): command, qemu or
	// none.
	Power power.Config `yaml:"power"`
}

// UserConfig is one user of the API: a token in a file only they can
// read, or the sha256 (hex) of it.
type UserConfig struct {
	Name        string `yaml:"name" validate:"required,max=64"`
	TokenFile   string `yaml:"token_file" validate:"required_without=TokenSHA256,max=4096"`
	TokenSHA256 string `yaml:"token_sha256" validate:"omitempty,len=64,hexadecimal"`
	// Admin users may release any lease, and set maintenance.
	Admin bool `yaml:"admin"`
}

// LeaseBounds bound what a lease may ask for.
type LeaseBounds struct {
	// TTL is how long a lease lives without a renewal (default 14s, so
	// that it ends within 15s of its holder's last renewal): the
	// CLI renews every TTL/3.
	TTL Duration `yaml:"ttl"`
	// MaxTTL bounds a TTL a client asks for (default 10m).
	MaxTTL Duration `yaml:"max_ttl"`
	// DefaultFor and MaxFor: how long a lease lasts at most, renewed or
	// not (defaults 1h and 24h).
	DefaultFor Duration `yaml:"default_for"`
	MaxFor     Duration `yaml:"max_for"`
	// MaxWait bounds how long an acquire may wait in the queue (default 24h).
	MaxWait Duration `yaml:"max_wait"`
}

// DiscoveryConfig turns on finding boards by mDNS and on serial ports.
type DiscoveryConfig struct {
	MDNS   bool     `yaml:"mdns"`
	Serial bool     `yaml:"serial"`
	Ifaces []string `yaml:"ifaces" validate:"max=64"`
}

// Duration is a time.Duration written as in Go ("15s", "30m").
type Duration time.Duration

// UnmarshalYAML reads "15s".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration such as 15s or 30m", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// D is d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Defaults.
const (
	DefaultListen          = "127.0.0.1:7300"
	DefaultHeartbeat       = 3 * time.Second
	DefaultQuarantineAfter = 5
	DefaultTTL             = 14 * time.Second
	DefaultMaxTTL          = 10 * time.Minute
	DefaultFor             = time.Hour
	DefaultMaxFor          = 24 * time.Hour
	DefaultMaxWait         = 24 * time.Hour
	DefaultClaimTTL        = 10 * time.Second
)

// LoadConfig reads the YAML config at path: unknown keys are errors, and
// every field is checked.
func LoadConfig(path string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("%w %s: %w", ErrBadConfig, path, err)
	}
	if err := c.Check(); err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Check validates c and fills its defaults.
func (c *Config) Check() error {
	if perr := proto.Validate(c); perr != nil {
		return fmt.Errorf("%w: %s", ErrBadConfig, fieldList(perr))
	}
	ids := map[string]bool{}
	for i, b := range c.Boards {
		if ids[b.ID] {
			return fmt.Errorf("%w: boards[%d]: id %q given twice", ErrBadConfig, i, b.ID)
		}
		ids[b.ID] = true
	}
	names := map[string]bool{}
	for i, u := range c.Users {
		if names[u.Name] {
			return fmt.Errorf("%w: users[%d]: name %q given twice", ErrBadConfig, i, u.Name)
		}
		names[u.Name] = true
	}
	def := func(d *Duration, v time.Duration) {
		if *d == 0 {
			*d = Duration(v)
		}
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	def(&c.Heartbeat, DefaultHeartbeat)
	def(&c.Leases.TTL, DefaultTTL)
	def(&c.Leases.MaxTTL, DefaultMaxTTL)
	def(&c.Leases.DefaultFor, DefaultFor)
	def(&c.Leases.MaxFor, DefaultMaxFor)
	def(&c.Leases.MaxWait, DefaultMaxWait)
	def(&c.ClaimTTL, DefaultClaimTTL)
	if c.Owner != "" && !validOwner(c.Owner) {
		return fmt.Errorf("%w: owner: %q: letters, digits and . _ - @ : [ ] only", ErrBadConfig, c.Owner)
	}
	if c.ClaimTTL.D() < time.Second {
		return fmt.Errorf("%w: claim_ttl: must be 1s at least", ErrBadConfig)
	}
	if c.QuarantineAfter == 0 {
		c.QuarantineAfter = DefaultQuarantineAfter
	}
	if c.Leases.TTL > c.Leases.MaxTTL || c.Leases.DefaultFor > c.Leases.MaxFor {
		return fmt.Errorf("%w: leases: ttl must not exceed max_ttl, nor default_for max_for", ErrBadConfig)
	}
	return nil
}

// fieldList is a validation error as "boards[0].id: is required; ...".
func fieldList(e *proto.Error) string {
	var parts []string
	if e.Data != nil {
		for _, f := range e.Data.Fields {
			parts = append(parts, f.Field+": "+f.Message)
		}
	}
	if len(parts) == 0 {
		return e.Message
	}
	return strings.Join(parts, "; ")
}

// user is a user with the sha256 of their token.
type user struct {
	name  string
	admin bool
	hash  [sha256.Size]byte
	peer  bool // a request another service forwarded for them
}

// loadUsers reads the users' tokens: a token file must be private (as the
// CLI's own token files).
func loadUsers(us []UserConfig) ([]user, error) {
	out := make([]user, 0, len(us))
	for _, u := range us {
		x := user{name: u.Name, admin: u.Admin}
		if u.TokenFile != "" {
			tok, err := readToken(u.TokenFile)
			if err != nil {
				return nil, fmt.Errorf("%w: user %s: %w", ErrBadConfig, u.Name, err)
			}
			x.hash = sha256.Sum256([]byte(tok))
		} else {
			b, _ := hex.DecodeString(u.TokenSHA256) // checked by Check
			copy(x.hash[:], b)
		}
		out = append(out, x)
	}
	return out, nil
}

// validOwner reports whether name may name a service: it is shown, logged
// and kept in the database, so plain characters only.
func validOwner(name string) bool {
	if name == "" || len(name) > 128 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-@:[]", r)) {
			return false
		}
	}
	return true
}

// ownerName is the service's owner name: the config's, or the host's
// name and the address it listens on.
func (c *Config) ownerName(listen string) (string, error) {
	if c.Owner != "" {
		return c.Owner, nil
	}
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("%w: owner: no host name to derive it from: %w", ErrBadConfig, err)
	}
	name := host + "@" + listen
	if !validOwner(name) {
		return "", fmt.Errorf("%w: owner: %q derived from the host name is not usable; set owner", ErrBadConfig, name)
	}
	return name, nil
}

// advertiseURL is the URL the other services reach this one at: the
// config's, or served (a URL) unless its address is a wildcard, which is
// nobody's to dial ("").
func (c *Config) advertiseURL(served string) string {
	if c.Advertise != "" {
		return strings.TrimSuffix(c.Advertise, "/")
	}
	_, addr, _ := strings.Cut(served, "://")
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || host == "" || ip != nil && ip.IsUnspecified() {
		return ""
	}
	return served
}

// readToken reads a token from a file only its owner may read.
func readToken(path string) (string, error) {
	if err := auth.CheckPrivate(path); err != nil {
		return "", err
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(raw))
	if tok == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return tok, nil
}
