package agent_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.ServeContent(w, r, "pkg.bin", time.Time{}, bytes.NewReader(body))
	}))
	defer srv.Close()

	for _, tr := range []via{{"ws", dialWS}, {"serial-unix", dialUnix}} {
		t.Run(tr.name, func(t *testing.T) {
			h := newHarness(t, "")
			c := tr.dial(t, h)
			ctx := ctxTimeout(t, time.Minute)
			before := hits.Load()
			var (
				mu     sync.Mutex
				phases = map[string]bool{}
			)
			dest := filepath.Join(h.root, "pkgs", "pkg.bin")
			res, err := c.Download(ctx, dispatcher.DownloadRequest{URL: srv.URL + "/pkg.bin", Path: dest, SHA256: hexSum,
				Parents: true, Mode: 0o600, Progress: func(p proto.Progress) {
					mu.Lock()
					phases[p.Phase] = true
					mu.Unlock()
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
			mu.Lock()
			sawDownload := phases["download"]
			mu.Unlock()
			if !sawDownload {
				t.Fatalf("no download progress notification arrived (phases %v)", phases)
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
