package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
)

// TestSignInLimit: past signinPerAddress failed sign-ins from one address
// within the window, every sign-in from it is answered 429 with
// Retry-After, the right token included; another address is not held
// back until the failures of all of them reach signinOverall; the limit
// lifts as the failures age out (a clock of the test's).
func TestSignInLimit(t *testing.T) {
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute})
	c := newDashClient(t, l.srv.URL)
	for i := range signinPerAddress {
		if resp, _ := c.do("POST", "/signin", url.Values{"token": {"wrong"}}, c.sameSite()); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("failure %d: %s", i+1, resp.Status)
		}
	}
	resp, _ := c.do("POST", "/signin", url.Values{"token": {l.tokens["alice"]}, "next": {"/"}}, c.sameSite())
	if after, err := strconv.Atoi(resp.Header.Get("Retry-After")); resp.StatusCode != http.StatusTooManyRequests || err != nil ||
		after < 1 || after > int(signinWindow/time.Second) || len(resp.Cookies()) != 0 {
		t.Fatalf("past the bound: %s, Retry-After %q, cookies %v", resp.Status, resp.Header.Get("Retry-After"), resp.Cookies())
	}

	now := time.Unix(1e9, 0)
	lim := newSigninLimit()
	lim.now = func() time.Time { return now }
	from := func(addr string) *http.Request { return &http.Request{RemoteAddr: addr + ":40000"} }
	for range signinPerAddress {
		lim.failed(from("10.77.0.1"))
		now = now.Add(time.Second)
	}
	if w := lim.wait(from("10.77.0.1")); w != signinWindow-time.Duration(signinPerAddress)*time.Second {
		t.Fatalf("wait %v", w)
	}
	if w := lim.wait(from("10.77.0.2")); w != 0 {
		t.Fatalf("another address waits %v", w)
	}
	now = now.Add(signinWindow)
	if w := lim.wait(from("10.77.0.1")); w != 0 {
		t.Fatalf("after the window: wait %v", w)
	}
	for i := range signinOverall {
		lim.failed(from(fmt.Sprintf("10.77.1.%d", i)))
	}
	if w := lim.wait(from("10.77.2.1")); w <= 0 {
		t.Fatal("past the overall bound, a new address is not held back")
	}
}

// TestUploadsPerUser: a user sends at most MaxUploadsPerUser uploads at
// once; one more is refused busy (429), another user's is not, and once
// one ended the next goes through.
func TestUploadsPerUser(t *testing.T) {
	o := startOTALab(t, 1, false)
	ctx := context.Background()
	alice, bob := o.clients["alice"], o.clients["bob"]
	sb := o.sim.Boards[0]
	local := filepath.Join(t.TempDir(), "small.bin")
	if err := os.WriteFile(local, []byte("small"), 0o644); err != nil {
		t.Fatal(err)
	}
	var held []*io.PipeWriter
	ended := make(chan error, MaxUploadsPerUser)
	for i := range MaxUploadsPerUser {
		pr, pw := io.Pipe()
		held = append(held, pw)
		r := PushRequest{Path: filepath.Join(sb.Dir(), fmt.Sprintf("held-%d", i)), Size: 1 << 20, SHA256: strings.Repeat("0", 64)}
		go func() {
			resp, err := alice.uploadFrom(ctx, boardPath(sb.ID, "files"), "", r, "held", pr, r.Size)
			if err == nil {
				resp.Body.Close()
			}
			ended <- err
		}()
	}
	uploading := func(n int) func() bool {
		return func() bool {
			o.svc.uploads.mu.Lock()
			defer o.svc.uploads.mu.Unlock()
			return o.svc.uploads.per["alice"] == n
		}
	}
	testenv.Eventually(t, "alice's uploads under way", uploading(MaxUploadsPerUser))
	var ae *APIError
	_, err := alice.Push(ctx, sb.ID, "", local, PushRequest{Path: filepath.Join(sb.Dir(), "one-more")})
	if !errors.As(err, &ae) || ae.Status != http.StatusTooManyRequests || ae.Reason != ReasonBusy {
		t.Fatalf("one upload more: %v", err)
	}
	if _, err := bob.Push(ctx, sb.ID, "", local, PushRequest{Path: filepath.Join(sb.Dir(), "bobs")}); err != nil {
		t.Fatalf("bob's upload: %v", err)
	}
	held[0].CloseWithError(errors.New("the client gave up"))
	<-ended
	testenv.Eventually(t, "one of alice's uploads ended", uploading(MaxUploadsPerUser-1))
	if _, err := alice.Push(ctx, sb.ID, "", local, PushRequest{Path: filepath.Join(sb.Dir(), "one-more")}); err != nil {
		t.Fatalf("the next upload: %v", err)
	}
	for _, pw := range held[1:] {
		pw.CloseWithError(errors.New("the client gave up"))
		<-ended
	}
}

// TestSpoolCleanedAtStart: the spooled uploads a killed service left are
// removed when the service starts; one of a service still running (this
// process, which shares the directory) stays.
func TestSpoolCleanedAtStart(t *testing.T) {
	o := startOTALab(t, 1, true)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	spool := filepath.Join(o.dir, "spool")
	if err := os.MkdirAll(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	left := []string{fmt.Sprintf("upload-%d-123", dead.Process.Pid), "upload-4567890"}
	kept := fmt.Sprintf("upload-%d-456", os.Getpid())
	for _, name := range append(left, kept) {
		if err := os.WriteFile(filepath.Join(spool, name), []byte("half an image"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	o.start(nil)
	ents, err := os.ReadDir(spool)
	if err != nil || len(ents) != 1 || ents[0].Name() != kept {
		t.Fatalf("the spool after the start: %v %v", ents, err)
	}
}

// TestSignOutEndsStreams: signing out ends the live streams opened under
// that sign-in at once, not at their 10-minute bound.
func TestSignOutEndsStreams(t *testing.T) {
	l := startLab(t, labOptions{boards: 1, ttl: time.Minute})
	l.waitIdle()
	c := newDashClient(t, l.srv.URL)
	c.signIn(l.tokens["alice"])
	csrf := c.csrf("/")
	resp, sc := openStream(t, c, "/live/")
	defer resp.Body.Close()
	nextEvent(t, sc)
	if resp, _ := c.do("POST", "/signout", url.Values{"csrf": {csrf}}, c.sameSite()); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-out: %s", resp.Status)
	}
	for sc.Scan() { // what was sent before the end, then the end
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("the stream ended with %v, want its end", err)
	}
}
