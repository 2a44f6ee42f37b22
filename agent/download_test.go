package agent_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

// TestDownloadThroughAgent drives file.download end to end: the agent
// fetches from a local HTTP server, reports progress, and skips a second
// download of the same content without a request.
func TestDownloadThroughAgent(t *testing.T) {
	body := make([]byte, 2<<20)
	rand.Read(body)
	sum := sha256.Sum256(body)
	hexSum := hex.EncodeToString(sum[:])
	var (
		hits     atomic.Int32
		notified atomic.Pointer[chan struct{}] // closed by the first download progress
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		// Half the body, then the rest once the client has seen progress:
		// the client handles notifications apart from results, so one
		// sent before the result may be seen after it.
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		<-*notified.Load()
		w.Write(body[len(body)/2:])
	}))
	defer srv.Close()

	for _, tr := range []via{{"ws", dialWS}, {"serial-unix", dialUnix}} {
		t.Run(tr.name, func(t *testing.T) {
			h := newHarness(t, "")
			c := tr.dial(t, h)
			ctx := ctxTimeout(t, time.Minute)
			before := hits.Load()
			progressed := make(chan struct{})
			notified.Store(&progressed)
			var once sync.Once
			dest := filepath.Join(h.root, "pkgs", "pkg.bin")
			res, err := c.Download(ctx, dispatcher.DownloadRequest{URL: srv.URL + "/pkg.bin", Path: dest, SHA256: hexSum,
				Parents: true, Mode: 0o600, Progress: func(p proto.Progress) {
					if p.Phase == "download" {
						once.Do(func() { close(progressed) })
					}
				}})
			if err != nil {
				t.Fatal(err)
			}
			if res.Skipped || res.Source != "network" || res.Size != int64(len(body)) || res.SHA256 != hexSum || res.Mode != 0o600 {
				t.Fatalf("first download %+v", res)
			}
			if fileSum(t, dest) != hexSum {
				t.Fatal("downloaded file hashes wrong")
			}
			if hits.Load() != before+1 {
				t.Fatalf("%d requests for one download", hits.Load()-before)
			}
			again, err := c.Download(ctx, dispatcher.DownloadRequest{URL: srv.URL + "/pkg.bin", Path: dest, SHA256: hexSum})
			if err != nil || !again.Skipped || again.Source != "destination" {
				t.Fatalf("second download %+v %v, want skipped from the destination", again, err)
			}
			if hits.Load() != before+1 {
				t.Fatal("a skipped download reached the server")
			}
			_, err = c.Download(ctx, dispatcher.DownloadRequest{URL: srv.URL + "/pkg.bin", Path: "/etc/pkg.bin", SHA256: hexSum})
			if !proto.IsReason(err, proto.ReasonInvalidParams) {
				t.Fatalf("download outside the roots: %v", err)
			}
			if _, err := os.Stat("/etc/pkg.bin"); err == nil {
				t.Fatal("a download outside the roots was written")
			}
		})
	}
}

// limitedAgent serves an agent with the given limits and a package cache;
// it returns a client over WebSocket, the agent's file root and its cache.
func limitedAgent(t *testing.T, limits agent.Limits) (c *dispatcher.Client, root, cache string) {
	t.Helper()
	cache = filepath.Join(t.TempDir(), "cache")
	h := newHarnessConfig(t, "", agent.Config{CacheDir: cache, Limits: limits})
	return dialWS(t, h), h.root, cache
}

// endlessBody writes a body without a length that never ends, until the
// client goes away.
func endlessBody(w http.ResponseWriter, r *http.Request) {
	chunk := make([]byte, 64<<10)
	rand.Read(chunk)
	for r.Context().Err() == nil {
		if _, err := w.Write(chunk); err != nil {
			return
		}
	}
}

// trickle sends one byte of a 1 MiB body every 5ms.
func trickle(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Length", strconv.Itoa(1<<20))
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for range 1 << 20 {
		if _, err := w.Write([]byte{'x'}); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-tick.C:
		case <-r.Context().Done():
			return
		}
	}
}

// wantInvalid checks that err is invalid_params on field, naming rule.
func wantInvalid(t *testing.T, err error, field, rule string) {
	t.Helper()
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Reason() != proto.ReasonInvalidParams || len(pe.Data.Fields) != 1 ||
		pe.Data.Fields[0].Field != field || pe.Data.Fields[0].Rule != rule {
		t.Fatalf("error %v: want invalid_params on %s (%s)", err, field, rule)
	}
}

// TestDownloadBounds: the caller's size, max_size and timeout_ms bound a
// download; a refused body leaves nothing in the cache or the root.
func TestDownloadBounds(t *testing.T) {
	body := make([]byte, 256<<10)
	rand.Read(body)
	sum := sha256.Sum256(body)
	hexSum := hex.EncodeToString(sum[:])
	mux := http.NewServeMux()
	mux.HandleFunc("/endless", endlessBody)
	mux.HandleFunc("/trickle", trickle)
	mux.HandleFunc("/pkg", func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "pkg", time.Time{}, bytes.NewReader(body))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	// No download limit of the agent's in the way of the caller's.
	c, root, cache := limitedAgent(t, agent.Limits{MaxDownload: 1 << 60})
	dest := filepath.Join(root, "out.bin")
	for _, tc := range []struct {
		name   string
		params proto.FileDownloadParams
		check  func(t *testing.T, err error)
	}{
		{"endless body, max_size", proto.FileDownloadParams{URL: srv.URL + "/endless", MaxSize: 1 << 20},
			func(t *testing.T, err error) { wantInvalid(t, err, "max_size", "max") }},
		{"another size", proto.FileDownloadParams{URL: srv.URL + "/pkg", Size: int64(len(body)) + 1},
			func(t *testing.T, err error) { wantInvalid(t, err, "size", "size") }},
		{"size beyond max_size", proto.FileDownloadParams{URL: srv.URL + "/pkg", Size: 2 << 20, MaxSize: 1 << 20},
			func(t *testing.T, err error) { wantInvalid(t, err, "size", "max_size") }},
		{"negative max_size", proto.FileDownloadParams{URL: srv.URL + "/pkg", MaxSize: -1},
			func(t *testing.T, err error) { wantInvalid(t, err, "max_size", "min") }},
		{"no room", proto.FileDownloadParams{URL: srv.URL + "/pkg", Size: 1 << 50},
			func(t *testing.T, err error) {
				if !proto.IsReason(err, proto.ReasonNoSpace) {
					t.Fatalf("error %v: want no_space for a petabyte", err)
				}
			}},
		{"trickle, timeout_ms", proto.FileDownloadParams{URL: srv.URL + "/trickle", TimeoutMs: 300},
			func(t *testing.T, err error) {
				if !proto.IsReason(err, proto.ReasonTimeout) || !strings.Contains(err.Error(), "timeout_ms") {
					t.Fatalf("error %v: want reason timeout naming timeout_ms", err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.params
			p.Path, p.SHA256 = dest, hexSum
			err := c.Conn().Call(ctxTimeout(t, time.Minute), proto.MethodFileDownload, p, nil)
			tc.check(t, err)
			if ents, err := os.ReadDir(root); err != nil || len(ents) != 0 {
				t.Fatalf("a refused download left %v in the root (%v)", ents, err)
			}
			if parts, _ := filepath.Glob(filepath.Join(cache, "*.part")); len(parts) != 0 && !strings.Contains(tc.name, "timeout") {
				t.Fatalf("a refused download left its partial: %v", parts)
			}
		})
	}
}

// TestDownloadAgentLimits: the agent's own Limits bound every download:
// its size, its deadline, and what an archive unpacks to (a gzip bomb).
func TestDownloadAgentLimits(t *testing.T) {
	var bomb bytes.Buffer
	zw := gzip.NewWriter(&bomb)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: "zeros", Mode: 0o644, Size: 16 << 20, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(make([]byte, 16<<20)); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(tw.Close(), zw.Close()); err != nil {
		t.Fatal(err)
	}
	bombSum := sha256.Sum256(bomb.Bytes())
	mux := http.NewServeMux()
	mux.HandleFunc("/endless", endlessBody)
	mux.HandleFunc("/trickle", trickle)
	mux.HandleFunc("/bomb.tar.gz", func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "bomb.tar.gz", time.Time{}, bytes.NewReader(bomb.Bytes()))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c, root, _ := limitedAgent(t, agent.Limits{MaxDownload: 1 << 20, MaxUnpack: 1 << 20, DownloadDeadline: 300 * time.Millisecond})
	ctx := ctxTimeout(t, time.Minute)
	any := strings.Repeat("ab", 32)

	_, err := c.Download(ctx, dispatcher.DownloadRequest{URL: srv.URL + "/endless", Path: filepath.Join(root, "endless"), SHA256: any})
	wantInvalid(t, err, "url", "max_size")

	_, err = c.Download(ctx, dispatcher.DownloadRequest{URL: srv.URL + "/trickle", Path: filepath.Join(root, "trickle"), SHA256: any})
	if !proto.IsReason(err, proto.ReasonTimeout) || !strings.Contains(err.Error(), "the agent's download deadline") {
		t.Fatalf("trickle: %v, want reason timeout naming the agent's deadline", err)
	}

	t.Logf("gzip bomb: %d bytes unpacking to 16 MiB", bomb.Len())
	dest := filepath.Join(root, "pkg")
	_, err = c.Download(ctx, dispatcher.DownloadRequest{URL: srv.URL + "/bomb.tar.gz", Path: dest,
		SHA256: hex.EncodeToString(bombSum[:]), Extract: true})
	wantInvalid(t, err, "url", "archive")
	if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused archive left %s: %v", dest, err)
	}
}
