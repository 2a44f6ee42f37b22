// Command servicepush measures a push through the lab service against
// the same push made directly, in the same run: one simulated board
// (internal/simlab, the real agent on 127.0.0.1), a service in this
// process over it with its API on 127.0.0.1, and a file of -size random
// bytes. Each of -runs rounds pushes the file directly
// (dispatcher.Client.Push) and through the service (service.Client.Push:
// the client hashes the file, uploads it, the service passes it on to
// the board), each to a new path, and the medians and their ratio are
// printed.
//
//	go run ./bench/servicepush -size 1GiB -runs 3
//
// Only 127.0.0.1 is used. Everything it writes is removed when it ends.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"

	"github.com/boardlink/boardlink/bench/internal/benchkit"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/service"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/units"
)

func main() {
	size := units.Size(256 << 20)
	flag.Var(&size, "size", "file size in bytes; suffixes KiB, MiB, GiB are accepted")
	runs := flag.Int("runs", 3, "timed pushes per path; the median is reported")
	flag.Parse()
	benchkit.Run("servicepush", func(ctx context.Context) error { return run(ctx, int64(size), *runs) })
}

func run(ctx context.Context, size int64, runs int) error {
	dir, err := os.MkdirTemp("", "boardlink-servicepush-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lab, err := simlab.Start(ctx, simlab.Options{Boards: 1, Dir: filepath.Join(dir, "boards")})
	if err != nil {
		return err
	}
	defer lab.Stop(context.WithoutCancel(ctx))
	b := lab.Boards[0]

	local := filepath.Join(dir, "file.bin")
	if err := benchkit.WriteRandom(local, size); err != nil {
		return err
	}

	svc, url, err := startService(ctx, dir, lab)
	if err != nil {
		return err
	}
	defer svc.Stop(context.WithoutCancel(ctx))
	c, err := service.NewClient(url, "bench-token", nil)
	if err != nil {
		return err
	}
	for {
		bs, err := c.Board(ctx, b.ID)
		if err == nil && bs.State == service.Idle {
			break
		}
		select { // a poll of the API: the board's first heartbeat is its own
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	direct, err := dispatcher.Dial(ctx, b.Addr(), lab.DialOptions())
	if err != nil {
		return err
	}
	defer direct.Close()

	var tDirect, tService []time.Duration
	for i := range runs {
		remote := filepath.Join(b.Dir(), fmt.Sprintf("direct-%d.bin", i))
		start := time.Now()
		if _, err := direct.Push(ctx, local, remote, dispatcher.TransferOptions{}); err != nil {
			return fmt.Errorf("direct push: %w", err)
		}
		tDirect = append(tDirect, time.Since(start))
		os.Remove(remote)

		remote = filepath.Join(b.Dir(), fmt.Sprintf("service-%d.bin", i))
		start = time.Now()
		if _, err := c.Push(ctx, b.ID, "", local, service.PushRequest{Path: remote}); err != nil {
			return fmt.Errorf("push through the service: %w", err)
		}
		tService = append(tService, time.Since(start))
		os.Remove(remote)
		fmt.Printf("run %d: direct %v, through the service %v\n", i+1, tDirect[i].Round(time.Millisecond), tService[i].Round(time.Millisecond))
	}
	md, ms := benchkit.Median(tDirect), benchkit.Median(tService)
	mib := float64(size) / (1 << 20)
	fmt.Printf("push of %.0f MiB, median of %d: direct %v (%.0f MiB/s), through the service %v (%.0f MiB/s), ratio %.2f\n",
		mib, runs, md.Round(time.Millisecond), mib/md.Seconds(), ms.Round(time.Millisecond), mib/ms.Seconds(), ms.Seconds()/md.Seconds())
	return nil
}

// startService runs a service over lab's board, its API on loopback, one
// user whose token is bench-token.
func startService(ctx context.Context, dir string, lab *simlab.Lab) (*service.Service, string, error) {
	boardTok, userTok := filepath.Join(dir, "board.token"), filepath.Join(dir, "user.token")
	if err := os.WriteFile(boardTok, []byte(lab.Token()), 0o600); err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(userTok, []byte("bench-token"), 0o600); err != nil {
		return nil, "", err
	}
	cfg := service.Config{TokenFile: boardTok, QuarantineAfter: -1,
		Users:  []service.UserConfig{{Name: "bench", TokenFile: userTok}},
		Boards: []service.BoardConfig{{ID: lab.Boards[0].ID, Address: lab.Boards[0].Addr()}}}
	st, err := store.Open(ctx, filepath.Join(dir, "lab.db"))
	if err != nil {
		return nil, "", err
	}
	svc, err := service.New(ctx, service.Options{Config: cfg, Store: st, Trust: lab.DialOptions().Trust, MaxUpload: 64 << 30})
	if err != nil {
		return nil, "", err
	}
	if err := svc.Start(ctx); err != nil {
		return nil, "", err
	}
	hs := httptest.NewServer(svc.Handler())
	context.AfterFunc(ctx, hs.Close)
	return svc, hs.URL, nil
}
