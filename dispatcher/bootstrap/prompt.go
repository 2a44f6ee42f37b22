package bootstrap

import (
	"bytes"
	"regexp"
	"sync"
)

// Prompt is what a board's console text ends in.
type Prompt int

// The prompts Detect tells apart.
const (
	NoPrompt       Prompt = iota
	ShellPrompt           // "# " or "$ "
	LoginPrompt           // "login: "
	PasswordPrompt        // "Password: "
)

func (p Prompt) String() string {
	switch p {
	case ShellPrompt:
		return "shell prompt"
	case LoginPrompt:
		return "login prompt"
	case PasswordPrompt:
		return "password prompt"
	}
	return "no prompt"
}

// escapes are terminal control sequences a prompt may carry (colours,
// bracketed paste, a window title) and that do not show. Both regexps are
// compiled on first use: every CLI start links this package.
var escapes = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>])`)
})

// kernelLines are kernel messages on a console ("[   12.345678] usb
// 1-1: ..." and its line end), which land anywhere, right after a prompt
// too.
var kernelLines = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`\[ *\d+\.\d+\] [^\r\n]*[\r\n]+`) })

// Detect reports whether console text ends in a prompt, and which: the
// last line, control sequences removed, ends in "# " or "$ " (a shell),
// "login: " (a login), or "Password: " (a login asking for the password).
// A boot loader's "=> " is none of them. A prompt is never followed by a
// newline: text that ends in one is no prompt. Kernel messages (with
// their timestamps) are not text of the prompt's line: they are skipped.
//
// The serial dial path uses it when an agent does not answer on a line:
// a prompt there means a shell, and `boardlink bootstrap ADDRESS` puts an
// agent on it.
func Detect(text []byte) Prompt {
	text = kernelLines().ReplaceAll(text, nil)
	if i := bytes.LastIndexAny(text, "\r\n"); i >= 0 {
		text = text[i+1:]
	}
	text = escapes().ReplaceAll(text, nil)
	if len(text) < 2 || text[len(text)-1] != ' ' {
		return NoPrompt
	}
	last := bytes.TrimRight(text, " ")
	low := bytes.ToLower(last)
	switch {
	case bytes.HasSuffix(low, []byte("login:")):
		return LoginPrompt
	case bytes.HasSuffix(low, []byte("password:")):
		return PasswordPrompt
	}
	switch last[len(last)-1] {
	case '#', '$':
		return ShellPrompt
	}
	return NoPrompt
}

// HintError is the error the serial dial path returns when no agent
// answers on a line whose console text ends in a prompt.
type HintError struct {
	Addr   string
	Prompt Prompt
	Err    error // why the dial failed
}

func (e *HintError) Error() string {
	return "the agent on " + e.Addr + " does not answer but a " + e.Prompt.String() +
		" is there: run `boardlink bootstrap " + e.Addr + "` to start one (" + e.Err.Error() + ")"
}

func (e *HintError) Unwrap() error { return e.Err }

// Hint wraps err, a failed dial of addr, in a *HintError when console,
// the text heard on the line meanwhile, ends in a prompt; otherwise it
// returns err unchanged. It only reads what was heard: it never types.
func Hint(addr string, console []byte, err error) error {
	if err == nil {
		return nil
	}
	p := Detect(console)
	if p == NoPrompt {
		return err
	}
	return &HintError{Addr: addr, Prompt: p, Err: err}
}
