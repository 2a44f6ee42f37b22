package ota

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardlink/boardlink/proto"
)

// serve serves file at /image.img on loopback, through handle.
func serve(t *testing.T, handle func(w http.ResponseWriter, r *http.Request, file []byte), file []byte) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handle(w, r, file) }))
	t.Cleanup(srv.Close)
	return srv.URL + "/image.img"
}

// withRange serves the file as a file server does, Range requests too.
func withRange(w http.ResponseWriter, r *http.Request, file []byte) {
	http.ServeContent(w, r, "image.img", time.Time{}, bytes.NewReader(file))
}

// TestFetchFailuresHalt: a server that cannot give the image halts the
// update at once, with the reason in the status (failed_phase prepare);
// the chunks fetched are kept, and the same image from a good server
// resumes it to prepared.
func TestFetchFailuresHalt(t *testing.T) {
	for _, tc := range []struct {
		name   string
		handle func(w http.ResponseWriter, r *http.Request, file []byte)
		want   string
	}{
		{"short file", func(w http.ResponseWriter, r *http.Request, file []byte) {
			withRange(w, r, file[:len(file)*2/3])
		}, "shorter than the image"},
		{"short file without Range", func(w http.ResponseWriter, r *http.Request, file []byte) {
			w.Write(file[:len(file)*2/3])
		}, "shorter than the image"},
		{"other bytes", func(w http.ResponseWriter, r *http.Request, file []byte) {
			other := bytes.Clone(file)
			for i := len(other) / 2; i < len(other)*2/3; i++ {
				other[i] ^= 0x5a
			}
			withRange(w, r, other)
		}, "not this image"},
		{"500 forever", func(w http.ResponseWriter, r *http.Request, file []byte) {
			http.Error(w, "broken", http.StatusInternalServerError)
		}, "500 Internal Server Error (5 tries)"},
		{"not found", func(w http.ResponseWriter, r *http.Request, file []byte) {
			http.NotFound(w, r)
		}, "404 Not Found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			payload := randomBytes(16 * 4096)
			im, file := r.image("1.0.0", payload)
			p := paramsOf(im)
			p.URL, p.PayloadOffset = serve(t, tc.handle, file), im.PayloadOffset()
			plan, err := r.u.Begin(context.Background(), p, FetchLimits{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			u := r.waitFor(proto.PhaseHalted)
			if u.FailedPhase != proto.PhasePrepare || u.Result != "" || !strings.Contains(u.Reason, tc.want) ||
				!strings.Contains(u.Reason, p.URL) {
				t.Fatalf("halted: %+v, want a reason with %q and the URL", u, tc.want)
			}
			held := u.ChunksDone
			t.Logf("held %d chunks; reason: %s", held, u.Reason)
			// Another image is refused while this one waits; the same
			// image, from a good server, resumes it.
			other, _ := r.image("1.0.1", randomBytes(4096))
			if _, err := r.u.Begin(context.Background(), paramsOf(other), FetchLimits{}, nil); !proto.IsReason(err, proto.ReasonBusy) {
				t.Fatalf("another image while halted: %v, want busy", err)
			}
			p.URL = serve(t, withRange, file)
			again, err := r.u.Begin(context.Background(), p, FetchLimits{}, nil)
			if err != nil || again.ID != plan.ID || again.Have != held {
				t.Fatalf("resumed: %+v %v, want %s holding %d chunks", again, err, plan.ID, held)
			}
			u = r.waitFor(proto.PhasePrepared)
			if u.Reason != "" || u.FailedPhase != "" || u.BytesURL != int64(len(payload)) {
				t.Fatalf("prepared after the resume: %+v", u)
			}
		})
	}
}

// TestFetchWithoutRange: a server that ignores Range (answers 200 with the
// whole file, as python3 -m http.server does) is read from the start, in
// one request, and the update prepares.
func TestFetchWithoutRange(t *testing.T) {
	r := newRig(t)
	payload := randomBytes(16*4096 + 10)
	im, file := r.image("1.0.0", payload)
	var requests atomic.Int32
	p := paramsOf(im)
	p.URL = serve(t, func(w http.ResponseWriter, _ *http.Request, file []byte) {
		requests.Add(1)
		w.Write(file)
	}, file)
	p.PayloadOffset = im.PayloadOffset()
	if _, err := r.u.Begin(context.Background(), p, FetchLimits{}, nil); err != nil {
		t.Fatal(err)
	}
	u := r.waitFor(proto.PhasePrepared)
	if u.BytesURL != int64(len(payload)) || u.BytesLink != 0 || requests.Load() != 1 {
		t.Fatalf("prepared %+v with %d requests, want every byte from one request", u, requests.Load())
	}
}

// TestFetchLimits: the board's download limit refuses an update that
// would fetch more, naming the url; its deadline halts a fetch from a
// server that never answers.
func TestFetchLimits(t *testing.T) {
	r := newRig(t)
	im, file := r.image("1.0.0", randomBytes(16*4096))
	p := paramsOf(im)
	p.URL, p.PayloadOffset = serve(t, withRange, file), im.PayloadOffset()
	_, err := r.u.Begin(context.Background(), p, FetchLimits{MaxBytes: 4096}, nil)
	var perr *proto.Error
	if !errors.As(err, &perr) || perr.Reason() != proto.ReasonInvalidParams || len(perr.Data.Fields) != 1 ||
		perr.Data.Fields[0].Field != "url" {
		t.Fatalf("over the download limit: %v, want invalid_params on url", err)
	}
	if st, _ := r.u.Status(context.Background()); st.Update != nil {
		t.Fatalf("a refused update began: %+v", st.Update)
	}

	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	p.URL = serve(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		select { // never answers
		case <-r.Context().Done():
		case <-release:
		}
	}, file)
	if _, err := r.u.Begin(context.Background(), p, FetchLimits{Deadline: 50 * time.Millisecond}, nil); err != nil {
		t.Fatal(err)
	}
	if u := r.waitFor(proto.PhaseHalted); !strings.Contains(u.Reason, "not done within 50ms") {
		t.Fatalf("halted: %+v", u)
	}
}
