// Command client is heldexec's client: `client exec URL --token-file F --
// ARGV...`, the arguments of `boardlink exec`. It sends ARGV to the holder
// of URL's session (started, next to this binary, when none answers) and
// exits with the command's exit code.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/boardlink/boardlink/bench/heldexec"
)

func main() {
	code, err := run(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "heldexec:", err)
		os.Exit(255)
	}
	os.Exit(code)
}

func run(args []string) (int, error) {
	if len(args) < 5 || args[0] != "exec" || args[2] != "--token-file" {
		return 0, fmt.Errorf("usage: client exec URL --token-file F -- ARGV")
	}
	url, tokenFile, argv := args[1], args[3], args[5:]
	if args[4] != "--" || len(argv) == 0 {
		return 0, fmt.Errorf("usage: client exec URL --token-file F -- ARGV")
	}
	sock := heldexec.Socket(url)
	c, err := net.Dial("unix", sock)
	if err != nil {
		if c, err = startHolder(url, tokenFile, sock); err != nil {
			return 0, err
		}
	}
	defer c.Close()
	if _, err := io.WriteString(c, strings.Join(argv, "\x00")+"\x00\x00"); err != nil {
		return 0, err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, fmt.Errorf("the holder's answer: %w", err)
	}
	return int(b[0]), nil
}

// startHolder starts the holder, in a session of its own, and waits for its
// socket (the holder dials the board first).
func startHolder(url, tokenFile, sock string) (net.Conn, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(filepath.Dir(self), "heldexec-holder"), url, tokenFile, sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			return c, nil
		}
		select {
		case err := <-done:
			return nil, fmt.Errorf("the holder exited: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
