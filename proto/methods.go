package proto

import (
	"math"
	"time"
)

// Method names. A family shares a prefix; board.info lists the families an
// agent serves in its capabilities.
const (
	MethodHello      = "session.hello"
	MethodBoardInfo  = "board.info"
	MethodExecStart  = "exec.start"
	MethodExecWait   = "exec.wait"
	MethodExecCancel = "exec.cancel"
	MethodExecLog    = "exec.log"
	MethodExecResize = "exec.resize"
	MethodExecRun    = "exec.run"
)

// Capabilities an agent may announce in board.info, session.hello and mDNS.
const (
	CapExec       = "exec"
	CapExecDetach = "exec.detach"
)

// HelloParams opens a session and negotiates the version. From protocol 4
// the host sends a Nonce and authenticates with session.auth (see
// AuthChallenge); Token is what earlier clients sent instead, in the clear.
type HelloParams struct {
	Protocol int    `json:"protocol" validate:"min=0"` // below MinVersion: incompatible
	Token    string `json:"token,omitempty" validate:"max=4096"`
	Client   string `json:"client,omitempty" validate:"max=256"`
	Nonce    []byte `json:"nonce,omitempty" validate:"omitempty,len=32"`
}

// HelloResult answers session.hello with the version both ends will speak
// and, to a client that sent a nonce, the board's proof of its key.
type HelloResult struct {
	Protocol      int            `json:"protocol"`
	Agent         string         `json:"agent"`
	BoardID       string         `json:"board_id"`
	Capabilities  []string       `json:"capabilities"`
	Auth          *AuthChallenge `json:"auth,omitempty"`
	Authenticated bool           `json:"authenticated"`
}

// BoardInfoParams is empty; board.info takes no parameters.
type BoardInfoParams struct{}

// Slot describes one A/B slot of a board.
type Slot struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	Booted  bool   `json:"booted"`
	Active  bool   `json:"active"`
}

// BoardInfo is the result of board.info.
type BoardInfo struct {
	ID           string            `json:"id"`
	Model        string            `json:"model"`
	Labels       map[string]string `json:"labels,omitempty"`
	Hostname     string            `json:"hostname,omitempty"`
	Arch         string            `json:"arch"`
	Agent        string            `json:"agent"`
	Protocol     int               `json:"protocol"`
	BootID       string            `json:"boot_id"`
	BootedAt     time.Time         `json:"booted_at"`
	UptimeMs     int64             `json:"uptime_ms"`
	Slots        []Slot            `json:"slots"`
	Capabilities []string          `json:"capabilities"`
	// Fingerprint is the board key's (auth.Fingerprint, SHA256:...).
	Fingerprint string `json:"fingerprint,omitempty"`
}

// ExecStartParams starts a command. Argv is executed directly; a shell is
// used only when Shell is set (then argv[0] is the script for /bin/sh -c and
// the rest become $0, $1, ...). Stream ids name streams the caller opened
// (0: none; stdin reads as empty, output is counted and discarded).
type ExecStartParams struct {
	Argv       []string          `json:"argv" validate:"required,min=1,max=4096,argv"`
	Shell      bool              `json:"shell,omitempty"`
	Env        map[string]string `json:"env,omitempty" validate:"max=1024,dive,keys,required,envkey,endkeys,excludes=\x00"`
	ClearEnv   bool              `json:"clear_env,omitempty"`
	Cwd        string            `json:"cwd,omitempty" validate:"omitempty,max=4096,excludes=\x00"`
	Stdin      uint32            `json:"stdin,omitempty"`
	Stdout     uint32            `json:"stdout,omitempty"`
	Stderr     uint32            `json:"stderr,omitempty"`
	TimeoutMs  int64             `json:"timeout_ms,omitempty" validate:"min=0"`
	KillSignal string            `json:"kill_signal,omitempty" validate:"omitempty,oneof=HUP INT QUIT KILL USR1 USR2 TERM"`
	GraceMs    int64             `json:"grace_ms,omitempty" validate:"min=0,max=600000"`
	Detach     bool              `json:"detach,omitempty"`
	// Tty runs the command on a pseudo-terminal (protocol 5): its stdin
	// stream feeds the terminal, its stdout stream carries what the
	// terminal prints (stdout and stderr alike; Stderr must be 0), the
	// command is the session leader with the terminal as its controlling
	// one, and TERM is set from Term. Rows and Cols give its size.
	Tty  bool   `json:"tty,omitempty"`
	Term string `json:"term,omitempty" validate:"omitempty,max=64,printascii,excludes= "`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
}

// ExecStartResult identifies the started command.
type ExecStartResult struct {
	ID  string `json:"id"`
	PID int    `json:"pid"`
}

// ExecWaitParams waits for a command's end.
type ExecWaitParams struct {
	ID string `json:"id" validate:"required,max=64"`
}

// ExecResult is a command's final record. ExitCode is -1 when the command
// was ended by a signal (named in Signal, numbered in SignalNum).
type ExecResult struct {
	ID          string    `json:"id"`
	ExitCode    int       `json:"exit_code"`
	Signal      string    `json:"signal,omitempty"`
	SignalNum   int       `json:"signal_num,omitempty"`
	TimedOut    bool      `json:"timed_out"`
	Canceled    bool      `json:"canceled"`
	Started     time.Time `json:"started"`
	Ended       time.Time `json:"ended"`
	DurationMs  float64   `json:"duration_ms"`
	StdoutBytes int64     `json:"stdout_bytes"`
	StderrBytes int64     `json:"stderr_bytes"`
}

// ExecCancelParams signals a running command's process group.
type ExecCancelParams struct {
	ID     string `json:"id" validate:"required,max=64"`
	Signal string `json:"signal,omitempty" validate:"omitempty,oneof=HUP INT QUIT KILL USR1 USR2 TERM CONT STOP"`
}

// ExecResizeParams sets the window size of a command started with Tty;
// the command gets SIGWINCH.
type ExecResizeParams struct {
	ID   string `json:"id" validate:"required,max=64"`
	Rows uint16 `json:"rows" validate:"min=1"`
	Cols uint16 `json:"cols" validate:"min=1"`
}

// ExecRunParams runs a command in one round trip (protocol 5): started,
// waited for and answered by one request. Stdin is given inline, or by
// StdinStream, a stream the caller opened and writes to once exec.started
// announced the command (Started is then required). Output goes to the
// streams Stdout and Stderr name (opened by the caller, live, as
// exec.start's), or, for a stream not named, returns in the result up to
// MaxOutput bytes (0: none; the rest is counted and dropped). Started,
// when set, has the agent announce the command with an exec.started
// notification (at once with StdinStream, else once it has run for 20 ms),
// so that the caller can exec.cancel it by id while it waits for the
// answer.
type ExecRunParams struct {
	Argv        []string          `json:"argv" validate:"required,min=1,max=4096,argv"`
	Shell       bool              `json:"shell,omitempty"`
	Env         map[string]string `json:"env,omitempty" validate:"max=1024,dive,keys,required,envkey,endkeys,excludes=\x00"`
	ClearEnv    bool              `json:"clear_env,omitempty"`
	Cwd         string            `json:"cwd,omitempty" validate:"omitempty,max=4096,excludes=\x00"`
	Stdin       []byte            `json:"stdin,omitempty" validate:"max=65536"`
	StdinStream uint32            `json:"stdin_stream,omitempty" validate:"excluded_without=Started,excluded_with=Stdin"`
	Stdout      uint32            `json:"stdout,omitempty"`
	Stderr      uint32            `json:"stderr,omitempty"`
	TimeoutMs   int64             `json:"timeout_ms,omitempty" validate:"min=0"`
	KillSignal  string            `json:"kill_signal,omitempty" validate:"omitempty,oneof=HUP INT QUIT KILL USR1 USR2 TERM"`
	MaxOutput   int               `json:"max_output,omitempty" validate:"min=0,max=1048576"`
	Started     string            `json:"started,omitempty" validate:"max=64"`
}

// ExecRunResult is exec.run's answer: the command's record, in fewer bytes
// than ExecResult (what is zero or false is left out, the start in Unix
// milliseconds, the end implied by the duration: on a serial line each
// byte counts), and the output that went to no stream.
type ExecRunResult struct {
	ID          string  `json:"id"`
	ExitCode    int     `json:"exit_code"`
	Signal      string  `json:"signal,omitempty"`
	SignalNum   int     `json:"signal_num,omitempty"`
	TimedOut    bool    `json:"timed_out,omitempty"`
	Canceled    bool    `json:"canceled,omitempty"`
	StartedMs   int64   `json:"started_ms"`
	DurationMs  float64 `json:"duration_ms"`
	StdoutBytes int64   `json:"stdout_bytes,omitempty"`
	StderrBytes int64   `json:"stderr_bytes,omitempty"`
	Stdout      []byte  `json:"stdout,omitempty"`
	Stderr      []byte  `json:"stderr,omitempty"`
	Truncated   bool    `json:"truncated,omitempty"`
}

// NewExecRunResult is r in exec.run's form (the output left out), the
// duration rounded to the microsecond.
func NewExecRunResult(r ExecResult) ExecRunResult {
	return ExecRunResult{ID: r.ID, ExitCode: r.ExitCode, Signal: r.Signal, SignalNum: r.SignalNum,
		TimedOut: r.TimedOut, Canceled: r.Canceled, StartedMs: r.Started.UnixMilli(),
		DurationMs: math.Round(r.DurationMs*1000) / 1000, StdoutBytes: r.StdoutBytes, StderrBytes: r.StderrBytes}
}

// Result is the record as exec.wait gives it; Started has millisecond
// precision, and Ended is Started plus the duration.
func (r ExecRunResult) Result() ExecResult {
	started := time.UnixMilli(r.StartedMs).UTC()
	return ExecResult{ID: r.ID, ExitCode: r.ExitCode, Signal: r.Signal, SignalNum: r.SignalNum,
		TimedOut: r.TimedOut, Canceled: r.Canceled, Started: started,
		Ended: started.Add(time.Duration(r.DurationMs * float64(time.Millisecond))), DurationMs: r.DurationMs,
		StdoutBytes: r.StdoutBytes, StderrBytes: r.StderrBytes}
}

// NoteExecStarted announces a command exec.run started for a request
// that carried a Started token: params ExecStarted.
const NoteExecStarted = "exec.started"

// ExecStarted is the params of exec.started: the request's token and the
// command's id (for exec.cancel) and pid.
type ExecStarted struct {
	Token string `json:"token"`
	ID    string `json:"id"`
	PID   int    `json:"pid"`
}

// ExecLogParams reads the agent's command log, newest first.
type ExecLogParams struct {
	Limit int `json:"limit,omitempty" validate:"min=0,max=10000"`
}

// ExecLogEntry is one command in the agent's log. Ended and the result
// fields are zero while Running.
type ExecLogEntry struct {
	ID          string     `json:"id"`
	Argv        []string   `json:"argv"`
	Shell       bool       `json:"shell,omitempty"`
	Running     bool       `json:"running"`
	Started     time.Time  `json:"started"`
	Ended       *time.Time `json:"ended,omitempty"`
	ExitCode    int        `json:"exit_code"`
	Signal      string     `json:"signal,omitempty"`
	TimedOut    bool       `json:"timed_out,omitempty"`
	Canceled    bool       `json:"canceled,omitempty"`
	StdoutBytes int64      `json:"stdout_bytes"`
	StderrBytes int64      `json:"stderr_bytes"`
}

// ExecLogResult is the result of exec.log.
type ExecLogResult struct {
	Entries []ExecLogEntry `json:"entries"`
}

// Beacon is the payload of the agent's beacon frame on an idle serial
// line: the same facts it announces over mDNS, named by the same keys, so a
// host that only listens knows which board is on the port.
type Beacon struct {
	ID           string            `json:"id"`
	Model        string            `json:"model"`
	Protocol     int               `json:"proto"`
	Capabilities []string          `json:"caps,omitempty"`
	Version      string            `json:"ver"`
	BootID       string            `json:"boot"`
	Slot         string            `json:"slot,omitempty"`
	SlotVersion  string            `json:"sver,omitempty"` // the booted slot's image version
	Labels       map[string]string `json:"labels,omitempty"`
	// Fingerprint is the board key's, short form (as the mDNS TXT fp).
	Fingerprint string `json:"fp,omitempty"`
}
