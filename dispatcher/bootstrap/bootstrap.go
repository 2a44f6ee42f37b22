package bootstrap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-playground/validator/v10"

	"github.com/boardlink/boardlink/transport/seriallink"
)

// Errors callers tell apart.
var (
	// ErrAgentPresent: a beacon was heard; the line has an agent already.
	ErrAgentPresent = errors.New("bootstrap: an agent already answers on the line")
	// ErrNoPrompt: no shell or login prompt came after a newline.
	ErrNoPrompt = errors.New("bootstrap: no shell or login prompt on the line")
	// ErrLogin: the board refused the user or the password, or asked for
	// one that was not given.
	ErrLogin = errors.New("bootstrap: login failed")
	// ErrNoStart: the agent was started but sent no beacon.
	ErrNoStart = errors.New("bootstrap: the agent did not start")
)

// Options say what bootstrap does. Zero durations and sizes take the
// defaults below.
type Options struct {
	// Agent is the static agent binary to send; "" finds it by the
	// board's architecture in AgentDirs.
	Agent     string
	AgentDirs []string
	// User and Password answer a login prompt.
	User     string `validate:"omitempty,max=256,printascii"`
	Password string `validate:"omitempty,max=1024"`
	// Token is what the started agent accepts (its token file); hosts then
	// dial it with the same token.
	Token string `validate:"required,min=16,max=4096,printascii"`
	// Dir is the directory on the board the agent is sent to (default
	// /tmp/boardlink); its state directory is Dir/state.
	Dir string `validate:"omitempty,startswith=/,max=256"`
	// ID and Model name the board for the agent (--id, --model); Args
	// are more of its flags.
	ID    string `validate:"omitempty,max=128"`
	Model string `validate:"omitempty,max=128"`
	Args  []string
	// NoStart leaves the agent on the board (and installed) without
	// starting it: the shell stays.
	NoStart bool
	// Install installs the agent to start at boot, under InstallRoot
	// (default /).
	Install     bool
	InstallRoot string `validate:"omitempty,startswith=/,max=256"`
	// ChunkSize is the size of each sha256-checked piece (default 32 KiB).
	ChunkSize int `validate:"omitempty,min=512,max=1048576"`
	// Encoding forces how bytes go: "zmodem" (rz on the board, sz on
	// this host), "base64" (base64 -d) or "printf" (octal escapes); ""
	// picks the first the board and this host have.
	Encoding string `validate:"omitempty,oneof=zmodem base64 printf"`
	// NoCompress sends the agent as it is even when the board could
	// decompress it.
	NoCompress bool
	// Listen is how long to listen for an agent's beacon before typing
	// anything (default 3s); PromptTimeout how long to wait for a prompt
	// (default 10s); CommandTimeout for each command (default 1m);
	// StartTimeout for the started agent's first beacon (default 1m).
	Listen, PromptTimeout, CommandTimeout, StartTimeout time.Duration
	// Trace, if set, gets what is typed (secrets masked) and read.
	Trace io.Writer
	// Progress, if set, is called after each chunk is on the board.
	Progress func(Progress)
}

// Defaults of zero Options fields.
const (
	DefaultDir            = "/tmp/boardlink"
	DefaultChunkSize      = 32 << 10
	DefaultListen         = 3 * time.Second
	DefaultPromptTimeout  = 10 * time.Second
	DefaultCommandTimeout = time.Minute
	DefaultStartTimeout   = time.Minute
)

// Progress is the state of an upload after a chunk.
type Progress struct {
	Chunk, Chunks int   // the chunk just done (0-based) and how many
	Sent          int   // chunks sent by this run so far
	OnBoard       int64 // bytes of the upload on the board, checked
	Total         int64 // bytes of the upload
}

// Result is what a bootstrap did.
type Result struct {
	Arch       string // uname -m
	Agent      string // the binary sent, on the host
	Remote     string // where it is on the board
	Tty        string // the board's end of the line, the agent's --serial
	Encoding   string // zmodem, base64 or printf
	Compressed bool   // sent gzipped
	Total      int64  // bytes of the upload (compressed)
	Chunks     int    // chunks of the upload
	Sent       int    // chunks this run sent (the others were there)
	Present    bool   // the agent was on the board already, whole
	Installed  []string
	Beacon     []byte // the started agent's first beacon
}

// InterruptedError is an upload that stopped before its end: the
// chunks on the board stay there for the next run.
type InterruptedError struct {
	OnBoard, Total int64
	Chunks, Of     int
	Err            error
}

func (e *InterruptedError) Error() string {
	return fmt.Sprintf("%d of %d bytes (%d of %d chunks) are on the board; bootstrap again sends only the rest: %v",
		e.OnBoard, e.Total, e.Chunks, e.Of, e.Err)
}

func (e *InterruptedError) Unwrap() error { return e.Err }

// AgentPresentError is ErrAgentPresent with the beacon heard.
type AgentPresentError struct{ Beacon []byte }

func (e *AgentPresentError) Error() string {
	return fmt.Sprintf("%v (beacon %s): use it, bootstrap is for a line with only a shell", ErrAgentPresent, e.Beacon)
}

func (e *AgentPresentError) Unwrap() error { return ErrAgentPresent }

var validate = sync.OnceValue(func() *validator.Validate { return validator.New() })

func (o *Options) defaults() error {
	if err := validate().Struct(o); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	for _, s := range []*string{&o.User, &o.Password, &o.Token} {
		if strings.ContainsAny(*s, "\r\n") {
			return errors.New("bootstrap: a user, password or token holds a line break")
		}
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Listen, DefaultListen)
	def(&o.PromptTimeout, DefaultPromptTimeout)
	def(&o.CommandTimeout, DefaultCommandTimeout)
	def(&o.StartTimeout, DefaultStartTimeout)
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	o.Dir = strings.TrimRight(o.Dir, "/")
	if o.InstallRoot == "" {
		o.InstallRoot = "/"
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.AgentDirs == nil {
		o.AgentDirs = AgentDirs()
	}
	return nil
}

// Run puts an agent on the board whose console is rw and starts it there
// in place of the shell. It listens first and types nothing if an agent
// beacons (ErrAgentPresent); otherwise it types one newline and expects a
// shell or login prompt, logs in if asked, finds the board's
// architecture, sends the agent in sha256-checked chunks (those already
// on the board from an interrupted run are kept), installs it with
// opts.Install, and execs it on the line. It returns once the agent
// beacons; the line is then free for a client (dispatcher.DialLine).
func Run(ctx context.Context, rw io.ReadWriter, opts Options) (*Result, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	l := newLine(rw, opts.Trace)
	defer l.close()
	l.secrets = []string{opts.Password, opts.Token}
	b := &run{opts: opts, sh: newShell(l), res: &Result{}}
	err := b.do(ctx)
	if err != nil && b.atPrompt && !b.started {
		b.restore()
	}
	return b.res, err
}

// run is one bootstrap under way.
type run struct {
	opts     Options
	sh       *shell
	res      *Result
	tools    tools
	sz       string      // sz on this host, for ZMODEM
	heard    *lineReader // the last listen
	atPrompt bool        // the shell runs our commands; leave it usable on failure
	started  bool        // the agent replaced the shell
}

func (b *run) do(ctx context.Context) error {
	if beacon, err := b.listen(ctx, b.opts.Listen); err == nil {
		return &AgentPresentError{Beacon: beacon}
	} else if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if err := b.login(ctx); err != nil {
		return err
	}
	b.atPrompt = true
	if err := b.probe(ctx); err != nil {
		return err
	}
	agent := b.opts.Agent
	if agent == "" {
		var err error
		if agent, err = FindAgent(b.res.Arch, b.opts.AgentDirs); err != nil {
			return err
		}
	}
	if err := checkAgent(agent, b.res.Arch); err != nil {
		return err
	}
	b.res.Agent = agent
	bin, err := os.ReadFile(agent)
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	if err := b.send(ctx, bin); err != nil {
		return err
	}
	if b.opts.NoStart && !b.opts.Install {
		return nil
	}
	if out, err := b.sh.check(ctx, b.opts.CommandTimeout, shQuote(b.res.Remote)+" --version"); err != nil {
		return fmt.Errorf("bootstrap: the agent does not run on the board: %w", err)
	} else if b.opts.Trace != nil {
		b.sh.tracef("agent version %q", strings.TrimSpace(out))
	}
	if _, err := b.sh.check(ctx, b.opts.CommandTimeout, "umask 077 && mkdir -p "+shQuote(b.opts.Dir+"/state")+
		" && printf '%s\\n' "+shQuote(b.opts.Token)+" > "+shQuote(b.opts.Dir+"/token")); err != nil {
		return err
	}
	if b.opts.Install {
		if err := b.install(ctx); err != nil {
			return err
		}
	}
	if b.opts.NoStart {
		return nil
	}
	return b.start(ctx)
}

// listen waits up to d for an agent's beacon, typing nothing.
func (b *run) listen(ctx context.Context, d time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	b.heard = &lineReader{l: b.sh.line}
	return seriallink.Probe(ctx, b.heard)
}

// lineReader reads what the line holds for seriallink.Probe, returning
// (0, nil) now and then so that Probe sees its context end. It keeps the
// last of what it read, for error messages.
type lineReader struct {
	l    *line
	mu   sync.Mutex
	last []byte
}

func (r *lineReader) Read(p []byte) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	var n int
	_, err := r.l.wait(ctx, func(b []byte) (int, bool) {
		n = copy(p, b)
		return n, n > 0
	})
	if err != nil && ctx.Err() != nil {
		return 0, nil
	}
	r.mu.Lock()
	r.last = append(r.last, p[:n]...)
	if over := len(r.last) - 1024; over > 0 {
		r.last = append(r.last[:0], r.last[over:]...)
	}
	r.mu.Unlock()
	return n, err
}

// tail is the last n bytes read.
func (r *lineReader) tail(n int) []byte {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.last[max(0, len(r.last)-n):])
}

// waitPrompt waits up to d for the console text to end in a prompt.
func (b *run) waitPrompt(ctx context.Context, d time.Duration) (Prompt, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var p Prompt
	_, err := b.sh.wait(ctx, func(t []byte) (int, bool) {
		p = Detect(t)
		return len(t), p != NoPrompt
	})
	return p, err
}

// login types a newline, the user's bidding, and answers a login until
// a shell prompt comes.
func (b *run) login(ctx context.Context) error {
	if err := b.sh.typeLine(ctx, ""); err != nil {
		return err
	}
	p, err := b.waitPrompt(ctx, b.opts.PromptTimeout)
	if err != nil && ctx.Err() == nil && len(b.sh.tail(1)) == 0 {
		// Not a byte back, not even the newline's echo: a shell still in
		// a command of an interrupted bootstrap (a here-document, echo
		// off) gets Ctrl-C, once. Anything else (a boot loader) is left
		// alone.
		if err = b.sh.write(ctx, []byte{3}, `"\x03"`); err == nil {
			p, err = b.waitPrompt(ctx, b.opts.PromptTimeout)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return fmt.Errorf("%w after a newline; the line showed %q", ErrNoPrompt, append(b.heard.tail(200), b.sh.tail(200)...))
	}
	var user, password bool
	for p != ShellPrompt {
		switch {
		case p == LoginPrompt && user:
			return fmt.Errorf("%w: the board asked for the login again after user %q (wrong user or password)", ErrLogin, b.opts.User)
		case p == LoginPrompt && b.opts.User == "":
			return fmt.Errorf("%w: the board asks for a login: give --user", ErrLogin)
		case p == LoginPrompt:
			user = true
			err = b.sh.typeLine(ctx, b.opts.User)
		case p == PasswordPrompt && !user:
			// Our newline answered a login prompt printed before we came:
			// an empty password gets a fresh login prompt.
			err = b.sh.typeLine(ctx, "")
		case p == PasswordPrompt && password:
			return fmt.Errorf("%w: the board asked for the password again", ErrLogin)
		case p == PasswordPrompt && b.opts.Password == "":
			return fmt.Errorf("%w: the board asks for a password: give --password-file", ErrLogin)
		case p == PasswordPrompt:
			password = true
			err = b.sh.typeLine(ctx, b.opts.Password)
		}
		if err != nil {
			return err
		}
		// login takes its time to refuse a password (3 s is common).
		if p, err = b.waitPrompt(ctx, b.opts.PromptTimeout); err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return fmt.Errorf("%w: no prompt after the login; the line shows %q", ErrLogin, b.sh.tail(200))
		}
	}
	return nil
}

// tools are the commands the board has for the upload.
type tools struct {
	sha256, base64, gunzip string // command lines; "" when missing
	rz                     bool
	uid                    string
}

// probe asks the board what it is and what it has, turning echo off.
func (b *run) probe(ctx context.Context) error {
	out, err := b.sh.check(ctx, b.opts.CommandTimeout, `stty -echo 2>/dev/null; PS2=; `+
		`echo "arch=$(uname -m)"; echo "tty=$(tty)"; echo "baud=$(stty speed 2>/dev/null)"; echo "uid=$(id -u 2>/dev/null)"; `+
		`for t in sha256sum base64 gzip zcat rz; do command -v $t >/dev/null 2>&1 && echo have=$t; done; `+
		`busybox --list 2>/dev/null | while read a; do case $a in sha256sum|base64|gzip|zcat) echo bb=$a;; esac; done; true`)
	if err != nil {
		return err
	}
	kv := map[string]string{}
	have := map[string]bool{}
	for _, ln := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(ln), "=")
		switch {
		case !ok:
		case k == "have" || k == "bb":
			have[k+"="+v] = true
		default:
			kv[k] = v
		}
	}
	b.res.Arch = kv["arch"]
	if b.res.Arch == "" {
		return fmt.Errorf("%w: uname -m said nothing: %q", ErrCommand, out)
	}
	b.res.Tty = kv["tty"]
	if !strings.HasPrefix(b.res.Tty, "/dev/") {
		return fmt.Errorf("%w: the shell is not on a tty (tty says %q)", ErrCommand, b.res.Tty)
	}
	if n, err := strconv.Atoi(kv["baud"]); err == nil && n > 0 {
		b.res.Tty += ":" + kv["baud"]
	}
	pick := func(name, args string) string {
		switch {
		case have["have="+name]:
			return name + args
		case have["bb="+name]:
			return "busybox " + name + args
		}
		return ""
	}
	b.tools = tools{sha256: pick("sha256sum", ""), base64: pick("base64", " -d"), gunzip: pick("gzip", " -dc"),
		rz: have["have=rz"], uid: kv["uid"]}
	if b.tools.gunzip == "" {
		b.tools.gunzip = pick("zcat", "")
	}
	if b.tools.sha256 == "" {
		return fmt.Errorf("%w: the board has no sha256sum, nor busybox with one, to check what it gets", ErrCommand)
	}
	return nil
}

// start execs the agent in place of the shell, then waits for its
// beacon.
func (b *run) start(ctx context.Context) error {
	o := b.opts
	cmd := "exec " + shJoin(b.agentArgs(b.res.Remote, o.Dir+"/state", o.Dir+"/token"))
	b.sh.drop()
	if err := b.sh.typeLine(ctx, cmd); err != nil {
		return err
	}
	b.started = true
	beacon, err := b.listen(ctx, o.StartTimeout)
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return fmt.Errorf("%w: no beacon within %v of %q; the line showed %q", ErrNoStart, o.StartTimeout, cmd, b.heard.tail(400))
	}
	b.res.Beacon = beacon
	return nil
}

// agentArgs is the agent's command line on this board.
func (b *run) agentArgs(bin, state, token string) []string {
	args := []string{bin, "--board", "linux", "--state-dir", state, "--serial", b.res.Tty,
		"--token-file", token, "--no-mdns", "--listen", ""} // the line only: no port to clash
	if b.opts.ID != "" {
		args = append(args, "--id", b.opts.ID)
	}
	if b.opts.Model != "" {
		args = append(args, "--model", b.opts.Model)
	}
	return append(args, b.opts.Args...)
}

// restore leaves the shell as it was after a failure: whatever runs is
// interrupted and echo is on again. Best effort, quick: an interrupted
// bootstrap stops at once.
func (b *run) restore() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if b.sh.write(ctx, []byte{3}, `"\x03"`) == nil {
		_ = b.sh.typeLine(ctx, "stty echo")
	}
}

// shQuote quotes s for sh.
func shQuote(s string) string {
	if s != "" && regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`).MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func shJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shQuote(a)
	}
	return strings.Join(q, " ")
}

// sum is the hex sha256 of b.
func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// hashOf finds the sha256sum output line for name in out.
func hashOf(out, name string) string {
	re := regexp.MustCompile(`(?m)^([0-9a-f]{64})\s+\*?` + regexp.QuoteMeta(name) + `\r?$`)
	if m := re.FindStringSubmatch(out); m != nil {
		return m[1]
	}
	return ""
}
