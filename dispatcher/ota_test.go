package dispatcher_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/proto"
)

// imageFile builds a signed image of random bytes for models (default
// the sim model) and returns its bytes, opened.
func imageFile(t *testing.T, key ed25519.PrivateKey, version string, models ...string) ([]byte, *image.Image) {
	t.Helper()
	if models == nil {
		models = []string{simlab.DefaultModel}
	}
	payload := make([]byte, 64<<10)
	rand.Read(payload)
	var buf bytes.Buffer
	if _, err := image.Build(&buf, bytes.NewReader(payload), int64(len(payload)), image.BuildOptions{Key: key,
		Models: models, Version: version, ChunkSize: 4096}); err != nil {
		t.Fatal(err)
	}
	im, err := image.Open(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), im
}

// TestUpdate: an update fetched by the board from a URL commits with no
// chunk crossing the link; an image whose bytes do not match its signed
// manifest fails and is aborted, so the next update is not blocked; a
// prepared update can be aborted before its activation.
func TestUpdate(t *testing.T) {
	pub, priv, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	lab := otaLab(t, 1, pub)
	c := dial(t, lab.Boards[0].Addr())
	ctx := context.Background()

	raw, im := imageFile(t, priv, "2.0.0")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "image", time.Time{}, bytes.NewReader(raw))
	}))
	defer srv.Close()
	var phases []string
	rep, err := c.Update(ctx, im, dispatcher.OTAOptions{URL: srv.URL, Progress: func(p dispatcher.OTAProgress) {
		phases = append(phases, p.Phase)
	}})
	if err != nil || rep.Update.Result != proto.ResultCommitted || rep.BytesSent != 0 || rep.Reboots != 1 {
		t.Fatalf("update from a URL: %+v %v", rep, err)
	}
	// Every wait after the prepare is told: the activation, the reboot
	// into the trial, the end.
	if !inOrder(phases, string(proto.PhaseActivate), dispatcher.OTAReboot, string(proto.PhaseDone)) ||
		phases[len(phases)-1] != string(proto.PhaseDone) {
		t.Fatalf("progress went through %v", phases)
	}

	raw, _ = imageFile(t, priv, "3.0.0")
	good, err := image.Open(bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(raw)
	bad[good.PayloadOffset()+100] ^= 0xff
	corrupt, err := image.Open(bytes.NewReader(bad), int64(len(bad)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Update(ctx, corrupt, dispatcher.OTAOptions{}); !proto.IsReason(err, proto.ReasonChecksumMismatch) {
		t.Fatalf("a corrupt image: %v", err)
	}
	prep, err := c.Prepare(ctx, good, dispatcher.OTAOptions{})
	if err != nil || prep.Update.Phase != proto.PhasePrepared {
		t.Fatalf("prepare after the corrupt image: %+v %v", prep, err)
	}
	st, err := c.OTAAbort(ctx, prep.Plan.ID)
	if err != nil || st.Update.Result != proto.ResultAborted {
		t.Fatalf("abort: %+v %v", st, err)
	}
	plan, err := c.OTAPlan(ctx, good, false)
	if err != nil || plan.FromVersion != "2.0.0" {
		t.Fatalf("plan after the abort: %+v %v", plan, err)
	}
}

// inOrder reports whether steps holds want, in that order.
func inOrder(steps []string, want ...string) bool {
	for _, s := range steps {
		if len(want) > 0 && s == want[0] {
			want = want[1:]
		}
	}
	return len(want) == 0
}
