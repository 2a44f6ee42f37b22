// Command heldexec-holder holds one session to a board (`heldexec-holder
// URL TOKENFILE SOCKET`, the board's key pinned as the CLI pins it) and
// runs each client's command on it; it ends after 30 s without a client.
package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
)

const idle = 30 * time.Second

func main() {
	if len(os.Args) != 4 {
		log.Fatal("usage: heldexec-holder URL TOKENFILE SOCKET")
	}
	if err := run(context.Background(), os.Args[1], os.Args[2], os.Args[3]); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, url, tokenFile, sock string) error {
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	known, err := dispatcher.DefaultKnownBoardsPath()
	if err != nil {
		return err
	}
	c, err := dispatcher.Dial(ctx, url, dispatcher.DialOptions{Token: strings.TrimSpace(string(tok)), Trust: dispatcher.NewKnownBoards(known)})
	if err != nil {
		return err
	}
	defer c.Close()
	os.Remove(sock) // a stale one from a holder that died
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	defer ln.Close()
	var (
		mu     sync.Mutex
		active int
		wg     sync.WaitGroup
	)
	var timer *time.Timer
	timer = time.AfterFunc(idle, func() {
		mu.Lock()
		defer mu.Unlock()
		if active > 0 {
			timer.Reset(idle)
			return
		}
		ln.Close()
	})
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return nil // closed after the idle time
		}
		mu.Lock()
		active++
		timer.Reset(idle)
		mu.Unlock()
		wg.Go(func() {
			serve(ctx, c, conn)
			mu.Lock()
			active--
			mu.Unlock()
		})
	}
}

// serve runs one client's command: its argv, NUL-separated and ended by
// an empty element; the answer is the exit code in one byte.
func serve(ctx context.Context, c *dispatcher.Client, conn net.Conn) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	raw, err := r.ReadBytes(0)
	var argv []string
	for err == nil && len(raw) > 1 {
		argv = append(argv, string(bytes.TrimSuffix(raw, []byte{0})))
		raw, err = r.ReadBytes(0)
	}
	if err != nil || len(argv) == 0 {
		return
	}
	res, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: argv})
	code := byte(255)
	if err == nil {
		code = byte(res.ExitCode)
	} else {
		fmt.Fprintln(os.Stderr, "exec:", err)
	}
	conn.Write([]byte{code})
}
