package service

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher/store"
)

// TestAPIRequests: a request without a user's token is refused; a wrong
// request is refused naming its fields; an unknown endpoint is a
// structured 404.
func TestAPIRequests(t *testing.T) {
	l := startLab(t, labOptions{boards: 1, ttl: 5 * time.Second})
	ctx := context.Background()
	for _, auth := range []string{"", "Bearer ", "Bearer token-of-mallory", "Basic token-of-alice", "Bearer token-of-alice-"} {
		req, _ := http.NewRequest("GET", l.srv.URL+"/api/v1/boards", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.Contains(string(body), `"reason":"unauthorized"`) || resp.Header.Get("WWW-Authenticate") == "" {
			t.Fatalf("%q: %d %s", auth, resp.StatusCode, body)
		}
	}
	alice := l.clients["alice"]
	board := l.sim.Boards[0].ID
	tests := []struct {
		name   string
		err    error
		fields []string
	}{
		{"no argv", func() error {
			_, err := alice.Exec(ctx, board, "", ExecRequest{}, nil, nil)
			return err
		}(), []string{"argv"}},
		{"negative count and ttl", func() error {
			_, err := alice.Acquire(ctx, AcquireRequest{Count: -1, TTLMs: -5})
			return err
		}(), []string{"count", "ttl_ms"}},
		{"ttl past the bound", func() error {
			_, err := alice.Acquire(ctx, AcquireRequest{TTLMs: int64(time.Hour / time.Millisecond)})
			return err
		}(), []string{"ttl_ms"}},
		{"more boards than named", func() error {
			_, err := alice.Acquire(ctx, AcquireRequest{Boards: []string{board}, Count: 2})
			return err
		}(), []string{"count"}},
		{"unknown power action", alice.Power(ctx, board, "", "boom"), []string{"action"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ae *APIError
			if !errors.As(tc.err, &ae) || ae.Status != 400 || ae.Reason != "invalid_params" {
				t.Fatalf("%v", tc.err)
			}
			var got []string
			for _, f := range ae.Fields {
				got = append(got, f.Field)
			}
			if strings.Join(got, ",") != strings.Join(tc.fields, ",") {
				t.Fatalf("fields %q, want %q: %v", got, tc.fields, ae)
			}
		})
	}
	for _, tc := range []struct {
		err    error
		status int
		reason string
	}{
		{func() error { _, err := alice.Lease(ctx, "l-nope"); return err }(), 404, "not_found"},
		{func() error { _, err := alice.Board(ctx, "nope"); return err }(), 404, "not_found"},
		{alice.Console(ctx, board, "5m", false, io.Discard), 404, "not_found"}, // a board on the network has no console
		{func() error { _, err := alice.Acquire(ctx, AcquireRequest{Count: 2}); return err }(), 409, ReasonUnsatisfiable},
		{func() error {
			_, err := alice.Acquire(ctx, AcquireRequest{Select: map[string]string{"model": "imx8"}})
			return err
		}(), 409, ReasonUnsatisfiable},
	} {
		var ae *APIError
		if !errors.As(tc.err, &ae) || ae.Status != tc.status || ae.Reason != tc.reason {
			t.Errorf("%v: want %d %s", tc.err, tc.status, tc.reason)
		}
	}
	resp, err := http.Get(l.srv.URL + "/api/v1/nope")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("%d", resp.StatusCode)
	}
	// A lease ended is told as such; another user cannot end one.
	l.waitIdle()
	held, err := acquire(ctx, alice, AcquireRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ae *APIError
	if _, err := l.clients["bob"].Release(ctx, held.ID); !errors.As(err, &ae) || ae.Reason != ReasonForbidden {
		t.Fatalf("%v", err)
	}
	if _, err := alice.Release(ctx, held.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Renew(ctx, held.ID); !errors.As(err, &ae) || ae.Reason != ReasonLeaseEnded || !strings.Contains(ae.Message, "released") {
		t.Fatalf("%v", err)
	}
	got, err := alice.Lease(ctx, held.ID)
	if err != nil || got.State != store.LeaseReleased || got.Ended.IsZero() {
		t.Fatalf("%+v %v", got, err)
	}
}
