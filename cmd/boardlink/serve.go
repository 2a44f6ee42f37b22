package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher/service"
	"github.com/boardlink/boardlink/dispatcher/store"
)

// serveStopTimeout bounds the service's clean stop: the HTTP server's
// shutdown, then the boards' connections and the last writes.
const serveStopTimeout = 15 * time.Second

func newServeCmd(g *globals) *cobra.Command {
	var listen, db, config, tlsCert, tlsKey, owner, advertise string
	cmd := &cobra.Command{
		Use:   "serve --config FILE [--listen ADDR] [--db PATH]",
		Short: "Run the lab service: inventory, heartbeats, leases, an HTTP API",
		Long: `serve runs the lab service: it keeps the lab's boards (the static ones of
its config, and those mDNS and the serial ports find when the config turns
discovery on) connected, with a heartbeat, and hands them out in leases
(boardlink lease). Its HTTP JSON API lives under /api/v1 (docs/service.md).

The config (YAML) names the users and their tokens, the static boards, the
lease bounds and the quarantine threshold; the database keeps the
inventory, the leases and the audit log, so a restarted service keeps its
leases. Stop it with SIGTERM or Ctrl-C.`,
		Example: `  boardlink serve --config /etc/boardlink/serve.yaml
  boardlink serve --config lab.yaml --listen 0.0.0.0:7300 --tls-cert lab.crt --tls-key lab.key --db /var/lib/boardlink/lab.db`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if config == "" {
				return &usageError{errors.New("serve needs --config FILE: the users, their tokens and the boards")}
			}
			cfg, err := service.LoadConfig(config)
			if err != nil {
				return &usageError{err}
			}
			if db == "" {
				db = filepath.Join(filepath.Dir(store.DefaultPath()), "lab.db")
			}
			st, err := store.Open(ctx, db)
			if err != nil {
				return err
			}
			defer st.Close()
			level := slog.LevelInfo
			if g.verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: level}))
			if !cmd.Flags().Changed("listen") {
				listen = cfg.Listen
			}
			cfg.Owner, cfg.Advertise = cmp.Or(owner, cfg.Owner), cmp.Or(advertise, cfg.Advertise)
			if (tlsCert == "") != (tlsKey == "") {
				return &usageError{errors.New("--tls-cert and --tls-key go together")}
			}
			if tlsCert == "" && !service.LoopbackListen(listen) {
				return &usageError{fmt.Errorf("--listen %s without --tls-cert and --tls-key: the users' tokens would cross the network in the clear", listen)}
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			scheme := "http"
			if tlsCert != "" {
				cert, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
				if err != nil {
					ln.Close()
					return &usageError{fmt.Errorf("--tls-cert, --tls-key: %w", err)}
				}
				ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
				scheme = "https"
			}
			// The owner's default follows the address asked, the
			// advertised URL's the address served.
			svc, err := service.New(ctx, service.Options{Config: cfg, Store: st, Logger: log,
				Listen: listen, URL: scheme + "://" + ln.Addr().String()})
			if err != nil {
				ln.Close()
				return &usageError{err}
			}
			if err := svc.Start(ctx); err != nil {
				ln.Close()
				return err
			}
			service.ManageMemory(ctx, cfg.Memory, log)
			srv := &http.Server{Handler: svc.Handler(), ReadHeaderTimeout: 10 * time.Second,
				ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(ln) }()
			log.Info("serving", "listen", scheme+"://"+ln.Addr().String(), "db", st.Path())
			fmt.Fprintf(cmd.OutOrStdout(), "boardlink serve: listening on %s://%s\n", scheme, ln.Addr())
			select {
			case <-ctx.Done():
			case err = <-served:
			}
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), serveStopTimeout)
			defer cancel()
			// Long polls and running commands end with the service.
			go func() { <-stopCtx.Done(); srv.Close() }()
			err = errors.Join(err, shutdown(stopCtx, srv, svc))
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			log.Info("stopped")
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", service.DefaultListen, "address of the HTTP API (default: the config's listen, else 127.0.0.1:7300)")
	f.StringVar(&db, "db", "", "the service's database (default lab.db beside boardlink's own, $XDG_STATE_HOME/boardlink)")
	f.StringVar(&config, "config", "", "the service's YAML config (docs/service.md)")
	f.StringVar(&tlsCert, "tls-cert", "", "serve https with this certificate (PEM); needed to listen beyond loopback")
	f.StringVar(&tlsKey, "tls-key", "", "the private key of --tls-cert (PEM)")
	f.StringVar(&owner, "owner", "", "this service's name among those sharing the database (default: the config's owner, else HOST@LISTEN)")
	f.StringVar(&advertise, "advertise", "", "the URL the other services on the database reach this one at (default: the config's advertise, else http://LISTEN)")
	return cmd
}

// shutdown stops the HTTP server and the service together: the service
// first cancels the commands it runs, so that their requests can end.
func shutdown(ctx context.Context, srv *http.Server, svc *service.Service) error {
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctx) }()
	err := svc.Stop(ctx)
	return errors.Join(err, <-done)
}
