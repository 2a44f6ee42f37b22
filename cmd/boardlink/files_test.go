package main

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/proto"
)

func TestPushPullCLI(t *testing.T) {
	d := startBoard(t)
	local := filepath.Join(t.TempDir(), "payload.bin")
	data := make([]byte, 200<<10)
	rand.Read(data)
	if err := os.WriteFile(local, data, 0o750); err != nil {
		t.Fatal(err)
	}
	for _, board := range []string{d.ws.URL(), "unix://" + d.sock} {
		t.Run(strings.SplitN(board, ":", 2)[0], func(t *testing.T) {
			dir := filepath.Join(d.files, t.Name())
			stdout, stderr, code := cli(t, "", "push", board, local, dir+"/", "--parents", "--json")
			if code != 0 {
				t.Fatalf("push: %d %s", code, stderr)
			}
			var res proto.FileResult
			if err := json.Unmarshal([]byte(stdout), &res); err != nil || res.Size != int64(len(data)) {
				t.Fatalf("push --json: %q %v", stdout, err)
			}
			remote := filepath.Join(dir, "payload.bin")
			if res.Path != remote {
				t.Fatalf("pushed to %s, want %s", res.Path, remote)
			}
			back := t.TempDir()
			stdout, stderr, code = cli(t, "", "pull", board, remote, back)
			if code != 0 || !strings.Contains(stdout, "pulled "+remote) || !strings.Contains(stdout, res.SHA256) {
				t.Fatalf("pull: %d %q %s", code, stdout, stderr)
			}
			got, err := os.ReadFile(filepath.Join(back, "payload.bin"))
			if err != nil || string(got) != string(data) {
				t.Fatalf("pulled file differs (%v)", err)
			}
			if st, _ := os.Stat(filepath.Join(back, "payload.bin")); st.Mode().Perm() != 0o750 {
				t.Fatalf("mode %v, want 0750", st.Mode())
			}
		})
	}
	board := d.ws.URL()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"outside the roots", []string{"push", board, local, "/etc/boardlink-test"}, 2, "outside the agent's file roots"},
		{"relative path", []string{"push", board, local, "tmp/x"}, 2, "absolute, clean path"},
		{"missing local", []string{"push", board, "/nonexistent/file", d.files + "/x"}, 1, "no such file"},
		{"missing remote", []string{"pull", board, d.files + "/nope", t.TempDir()}, 1, "no such file"},
		{"bad sha256", []string{"download", board, "http://127.0.0.1:1/x", d.files + "/x", "--sha256", "abc"}, 2, "64 hex digits"},
		{"too few args", []string{"pull", board}, 2, "takes at least 3 arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := cli(t, "", tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, tc.code, tc.want)
			}
		})
	}
}

// TestDownloadCLI: the board fetches a tarball itself and unpacks it; the
// second time nothing is fetched.
func TestDownloadCLI(t *testing.T) {
	d := startBoard(t)
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	for name, body := range map[string]string{"suite/run.sh": "#!/bin/sh\necho ok\n", "suite/data.txt": "data\n"} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	tw.Close()
	sum := sha256.Sum256(tarball.Bytes())
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Write(tarball.Bytes())
	}))
	defer srv.Close()
	board := d.ws.URL()
	dest := filepath.Join(d.files, "suite")
	args := []string{"download", board, srv.URL + "/suite.tar", dest, "--extract", "--sha256", hex.EncodeToString(sum[:])}
	stdout, stderr, code := cli(t, "", args...)
	if code != 0 || !strings.Contains(stdout, "downloaded "+dest) || !strings.Contains(stdout, "extracted 2 entries") {
		t.Fatalf("download: %d %q %s", code, stdout, stderr)
	}
	if got, err := os.ReadFile(filepath.Join(dest, "suite", "run.sh")); err != nil || !strings.Contains(string(got), "echo ok") {
		t.Fatalf("extracted file: %q %v", got, err)
	}
	stdout, stderr, code = cli(t, "", append(args, "--json")...)
	var res proto.DownloadResult
	if code != 0 || json.Unmarshal([]byte(stdout), &res) != nil || !res.Skipped || hits.Load() != 1 {
		t.Fatalf("second download: %d %q %s (server hit %d times)", code, stdout, stderr, hits.Load())
	}
	wrong := strings.Repeat("0", 64)
	_, stderr, code = cli(t, "", "download", board, srv.URL+"/suite.tar", filepath.Join(d.files, "other"), "--sha256", wrong)
	if code != 1 || !strings.Contains(stderr, "checksum_mismatch") {
		t.Fatalf("download with the wrong sha256: %d %s", code, stderr)
	}
}

// TestDownloadCLIBounds: --max-size, --size and --timeout reach the board,
// which stops the download at once; the exit status says whose fault.
func TestDownloadCLIBounds(t *testing.T) {
	d := startBoard(t)
	body := []byte(strings.Repeat("payload\n", 4096))
	sum := sha256.Sum256(body)
	mux := http.NewServeMux()
	mux.HandleFunc("/pkg", func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
	mux.HandleFunc("/endless", func(w http.ResponseWriter, r *http.Request) {
		for r.Context().Err() == nil {
			if _, err := w.Write(body); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/trickle", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := range body {
			w.Write(body[i : i+1])
			w.(http.Flusher).Flush()
			select {
			case <-tick.C:
			case <-r.Context().Done():
				return
			}
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	board := d.ws.URL()
	dest := filepath.Join(d.files, "pkg.bin")
	for _, tc := range []struct {
		name, path string
		flags      []string
		code       int
		want       string
	}{
		{"endless body", "/endless", []string{"--max-size", "64KiB"}, 2, "max_size"},
		{"another size", "/pkg", []string{"--size", strconv.Itoa(len(body) + 1)}, 2, "size given"},
		{"trickle", "/trickle", []string{"--timeout", "300ms"}, 1, "timeout_ms"},
		{"bad size", "/pkg", []string{"--max-size", "lots"}, 2, "not a size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"download", board, srv.URL + tc.path, dest, "--sha256", hex.EncodeToString(sum[:])}, tc.flags...)
			_, stderr, code := cli(t, "", args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, tc.code, tc.want)
			}
			if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s: %v", dest, err)
			}
		})
	}
	stdout, stderr, code := cli(t, "", "download", board, srv.URL+"/pkg", dest, "--sha256", hex.EncodeToString(sum[:]),
		"--size", strconv.Itoa(len(body)), "--max-size", "1MiB", "--timeout", "1m")
	if code != 0 || !strings.Contains(stdout, "downloaded "+dest) {
		t.Fatalf("a download within its bounds: %d %q %s", code, stdout, stderr)
	}
}
