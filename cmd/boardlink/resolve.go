package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/service"
	"github.com/boardlink/boardlink/proto"
)

// resolver finds boards by id as ls lists them (mDNS on --iface, and
// serial ports), with the id cache; doubts go to stderr.
func (g *globals) resolver() *dispatcher.Resolver {
	cache, _ := dispatcher.DefaultResolveCachePath() // no cache dir: no cache
	return &dispatcher.Resolver{Ifaces: g.ifaces, CacheFile: cache, Logger: g.logger(), Warn: g.warn}
}

func (g *globals) warn(msg string) { fmt.Fprintf(g.stderr, "boardlink: warning: %s\n", msg) }

// resolve turns BOARD into an address without opening a session: a name
// from the boards file, an address (checked, in the form Dial uses), or a
// board id, found by discovery.
func (g *globals) resolve(ctx context.Context, board string) (string, error) {
	addr, _, err := g.target(board)
	if err != nil {
		return "", err
	}
	if a, err := dispatcher.ParseAddress(addr); !errors.Is(err, dispatcher.ErrNeedsDiscovery) {
		if err != nil {
			return "", &usageError{err}
		}
		return a, nil
	}
	start := time.Now()
	rec, err := g.resolver().Resolve(ctx, addr)
	if errors.Is(err, dispatcher.ErrUnknownBoard) {
		return "", &usageError{err}
	}
	if err != nil {
		return "", err
	}
	g.debug("resolved", "board", addr, "id", rec.ID, "address", rec.Address, "source", rec.Source,
		"took", time.Since(start).Round(time.Millisecond))
	return rec.Address, nil
}

// serverURL is the lab service to go through: --server, else
// $BOARDLINK_SERVER; "" talks to boards directly.
func (g *globals) serverURL() string {
	if g.server != "" {
		return g.server
	}
	return os.Getenv("BOARDLINK_SERVER")
}

// serviceClient is the client of the lab service, authenticated with the
// token of --token-file or $BOARDLINK_TOKEN (a user's token of the
// service).
func (g *globals) serviceClient() (*service.Client, error) {
	server := g.serverURL()
	if server == "" {
		return nil, &usageError{errors.New("this needs the lab service: give --server URL or set BOARDLINK_SERVER")}
	}
	if _, err := g.boards(); err != nil {
		return nil, err
	}
	tok, err := g.token(nil)
	if err != nil {
		return nil, err
	}
	var roots *x509.CertPool
	if ca := os.Getenv("BOARDLINK_SERVER_CA"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, &usageError{fmt.Errorf("$BOARDLINK_SERVER_CA: %w", err)}
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, &usageError{fmt.Errorf("$BOARDLINK_SERVER_CA: %s holds no PEM certificate", ca)}
		}
	}
	c, err := service.NewClient(server, tok, roots)
	if err != nil {
		return nil, &usageError{err}
	}
	return c, nil
}

// serviceFailure maps an error of the lab service to an exit status: a
// request the service refused as wrong is a usage error (2), a refusal
// (a lease holds the board, no such board) is 1, and the service or the
// link failing is 255.
func serviceFailure(err error) error {
	var ae *service.APIError
	if !errors.As(err, &ae) {
		return linkFailure(err)
	}
	switch {
	case ae.Reason == string(proto.ReasonInvalidParams):
		return &usageError{err}
	case ae.Status/100 == 4:
		return &exitError{code: 1, err: err}
	}
	return &exitError{code: exitLink, err: err}
}

// execViaServer runs req on board through the lab service, under the
// lease of $BOARDLINK_LEASE if set, and exits as exec does. It sends no
// stdin (exec -n); exec.go's execThroughService streams it.
func (g *globals) execViaServer(ctx context.Context, board string, req dispatcher.ExecRequest) error {
	c, err := g.serviceClient()
	if err != nil {
		return err
	}
	out, err := c.Exec(ctx, board, os.Getenv("BOARDLINK_LEASE"), service.ExecRequest{Argv: req.Argv, Shell: req.Shell,
		Env: req.Env, Cwd: req.Cwd, TimeoutMs: req.Timeout.Milliseconds(), KillSignal: req.KillSignal},
		req.Stdout, req.Stderr)
	return serverExecStatus(out, err, req.Timeout)
}

// consoleViaServer writes what the lab service recorded of board's
// console since since ("5m", an RFC 3339 time; "" all it keeps) to w, and
// then what comes, until ctx ends.
func (g *globals) consoleViaServer(ctx context.Context, board, since string, w io.Writer) error {
	c, err := g.serviceClient()
	if err != nil {
		return err
	}
	if err := c.Console(ctx, board, since, true, w); err != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return serviceFailure(err) // the end of --timeout is not a failure
	}
	return nil
}
