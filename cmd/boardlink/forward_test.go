package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/boardlink/boardlink/internal/testenv"
)

func TestParseForwardSpec(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want forwardSpec
		err  string
	}{
		{"8080:80", forwardSpec{port: 8080, to: 80}, ""},
		{"0:22", forwardSpec{port: 0, to: 22}, ""},
		{"8080:example.org:80", forwardSpec{port: 8080, host: "example.org", to: 80}, ""},
		{"0.0.0.0:8080:80", forwardSpec{bind: "0.0.0.0", port: 8080, to: 80}, ""},
		{"localhost:8080:10.0.0.2:80", forwardSpec{bind: "localhost", port: 8080, host: "10.0.0.2", to: 80}, ""},
		{"[::1]:8080:[fe80::1]:80", forwardSpec{bind: "::1", port: 8080, host: "fe80::1", to: 80}, ""},
		{"8080:[::1]:80", forwardSpec{port: 8080, host: "::1", to: 80}, ""},
		{"8080", forwardSpec{}, "want [BIND:]PORT:[HOST:]PORT"},
		{"a:b:c:d:e", forwardSpec{}, "want [BIND:]PORT:[HOST:]PORT"},
		{"8080:0", forwardSpec{}, `port "0": want 1 to 65535`},
		{"70000:80", forwardSpec{}, `port "70000": want 0 to 65535`},
		{"8080:", forwardSpec{}, `port ""`},
		{"8080::80", forwardSpec{}, "an empty address"},
		{":8080:host:80", forwardSpec{}, "an empty address"},
		{"[::1:8080:80", forwardSpec{}, "[ADDRESS]"},
		{"[::1]x:8080:80", forwardSpec{}, "[ADDRESS]"},
	} {
		got, err := parseForwardSpec(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %+v %v, want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v %v, want %+v", tc.in, got, err, tc.want)
		}
	}
}

// randomServer serves n random blobs of size bytes at /0 … /n-1 on
// 127.0.0.1, and their sha256 sums.
func randomServer(t *testing.T, n, size int) (addr string, sums [][32]byte) {
	t.Helper()
	blobs := make([][]byte, n)
	for i := range blobs {
		blobs[i] = make([]byte, size)
		rand.Read(blobs[i])
		sums = append(sums, sha256.Sum256(blobs[i]))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if i, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/")); err == nil && i >= 0 && i < n {
			w.Write(blobs[i])
		}
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), sums
}

// download fetches every blob at addr at once, each on a connection of its
// own, and checks their sums.
func download(t *testing.T, addr string, sums [][32]byte) {
	t.Helper()
	var wg sync.WaitGroup
	for i, want := range sums {
		wg.Go(func() {
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := client.Get(fmt.Sprintf("http://%s/%d", addr, i))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			if n, err := io.Copy(h, resp.Body); err != nil || [32]byte(h.Sum(nil)) != want {
				t.Errorf("blob %d: %d bytes, %v, or its sha256 differs", i, n, err)
			}
		})
	}
	wg.Wait()
}

// scheme names a subtest by its link.
func scheme(board string) string {
	s, _, _ := strings.Cut(board, ":")
	return s
}

// forwardRun is boardlink forward running in this process until stop.
type forwardRun struct {
	stdout, stderr testenv.Buffer
	cancel         context.CancelCauseFunc
	done           chan error
}

func startForward(t *testing.T, args ...string) *forwardRun {
	t.Helper()
	ctx, cancel := context.WithCancelCause(context.Background())
	r := &forwardRun{cancel: cancel, done: make(chan error, 1)}
	t.Cleanup(func() { cancel(nil) })
	go func() {
		r.done <- run(ctx, append([]string{"--known-boards", knownBoards(t), "-v", "forward"}, args...), &r.stdout, &r.stderr)
	}()
	return r
}

// listening waits for the address forward prints, from its first line.
func (r *forwardRun) listening(t *testing.T, pattern string) string {
	t.Helper()
	re := regexp.MustCompile(pattern)
	var m []string
	testenv.Eventually(t, "forward to say where it listens", func() bool {
		m = re.FindStringSubmatch(r.stdout.String())
		return m != nil
	})
	return m[1]
}

// closed waits until -v logged n connections closed.
func (r *forwardRun) closed(t *testing.T, n int) {
	t.Helper()
	testenv.Eventually(t, fmt.Sprintf("%d connections closed", n), func() bool {
		return strings.Count(r.stderr.String(), "forward: connection closed") >= n
	})
}

// interrupt stops forward as Ctrl-C does and returns its exit status and
// last words.
func (r *forwardRun) interrupt() (int, string) {
	r.cancel(&signalError{os.Interrupt})
	var msg strings.Builder
	code := exitStatus(<-r.done, &msg)
	return code, msg.String()
}

// TestForwardVerb: boardlink forward BOARD 0:PORT picks a port, says so,
// and carries 20 downloads at once from a web server on the board's
// loopback, intact, over WebSocket and the serial link; -v logs each
// connection; Ctrl-C closes the one left open and says so.
func TestForwardVerb(t *testing.T) {
	d := startBoard(t)
	web, sums := randomServer(t, 20, 1<<20)
	_, port, _ := net.SplitHostPort(web)
	for _, board := range []string{d.ws.URL(), "unix://" + d.sock} {
		t.Run(scheme(board), func(t *testing.T) {
			r := startForward(t, board, "0:"+port)
			local := r.listening(t, `^listening on (127\.0\.0\.1:\d+), forwarding to localhost:`+port+` on demo-board\n`)
			download(t, local, sums)
			r.closed(t, len(sums))

			// One connection stays open: a keep-alive after its answer.
			conn, err := net.Dial("tcp", local)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "GET /0 HTTP/1.1\r\nHost: board\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := io.Copy(io.Discard, resp.Body); n != 1<<20 || err != nil {
				t.Fatalf("%d bytes, %v", n, err)
			}
			code, msg := r.interrupt()
			if code != 130 || !strings.Contains(msg, "interrupted: closed 1 open connection(s); 21 forwarded in all, 0 failed") {
				t.Fatalf("after Ctrl-C: %d %q\n%s", code, msg, r.stderr.String())
			}
			if !strings.Contains(r.stderr.String(), "waiting for connections to "+local+" (Ctrl-C stops)") {
				t.Fatalf("stderr:\n%s", r.stderr.String())
			}
		})
	}
}

// TestForwardReverseVerb: boardlink forward --reverse BOARD 0:PORT listens
// on the board's loopback and carries 20 downloads at once from a web
// server on the host, intact, over both links.
func TestForwardReverseVerb(t *testing.T) {
	d := startBoard(t)
	web, sums := randomServer(t, 20, 1<<20)
	_, port, _ := net.SplitHostPort(web)
	for _, board := range []string{d.ws.URL(), "unix://" + d.sock} {
		t.Run(scheme(board), func(t *testing.T) {
			r := startForward(t, "--reverse", board, "0:127.0.0.1:"+port)
			remote := r.listening(t, `^listening on (127\.0\.0\.1:\d+) on demo-board, forwarding to 127\.0\.0\.1:`+port+`\n`)
			download(t, remote, sums) // from the board's side: the board is this process
			r.closed(t, len(sums))
			code, msg := r.interrupt()
			if code != 130 || !strings.Contains(msg, "closed 0 open connection(s); 20 forwarded in all") {
				t.Fatalf("after Ctrl-C: %d %q", code, msg)
			}
		})
	}
}

// TestForwardVerbErrors: a malformed spec is a usage error; a port the
// host cannot listen on fails before waiting.
func TestForwardVerbErrors(t *testing.T) {
	d := startBoard(t)
	if _, stderr, code := cli(t, "", "forward", d.ws.URL(), "80"); code != 2 || !strings.Contains(stderr, "[BIND:]PORT:[HOST:]PORT") {
		t.Fatalf("a malformed spec: %d %q", code, stderr)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	if _, stderr, code := cli(t, "", "forward", d.ws.URL(), port+":80"); code != 1 || !strings.Contains(stderr, "address already in use") {
		t.Fatalf("a port in use: %d %q", code, stderr)
	}
}
