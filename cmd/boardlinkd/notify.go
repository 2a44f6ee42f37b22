package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
)

// notifySocketEnv names the service manager's notification socket, set by
// systemd for a unit of Type=notify (sd_notify(3)).
const notifySocketEnv = "NOTIFY_SOCKET"

// takeNotifySocket returns the notification socket and removes it from
// the environment, so that the commands the agent runs do not inherit it
// and cannot speak for the agent.
func takeNotifySocket() string {
	s := os.Getenv(notifySocketEnv)
	os.Unsetenv(notifySocketEnv)
	return s
}

// sdNotify sends state (e.g. "READY=1") to the service manager's
// notification socket, a unix datagram socket given as a path or, with a
// leading '@', an abstract name; with no socket it does nothing.
func sdNotify(socket, state string) error {
	if socket == "" {
		return nil
	}
	if socket[0] != '/' && socket[0] != '@' {
		return fmt.Errorf("%s=%q: not a unix socket", notifySocketEnv, socket)
	}
	// net turns a leading '@' into the abstract namespace's NUL.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("%s: %w", notifySocketEnv, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("%s: %w", notifySocketEnv, err)
	}
	return nil
}

// notifyReady tells systemd that the agent serves. A failure is logged,
// not fatal: the agent serves all the same, and systemd, which waits for
// the word, says why the start timed out.
func notifyReady(socket string) {
	if err := sdNotify(socket, "READY=1"); err != nil {
		slog.New(slog.NewTextHandler(os.Stderr, nil)).Warn("could not tell systemd the agent is ready", "err", err)
	}
}
