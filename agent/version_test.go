package agent_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/agent/ota"
	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/wslink"
)

// newOTAHarness is a harness whose agent serves every method family, so
// that a refusal can only come from the session's version.
func newOTAHarness(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	boot, err := sim.NewBootControl(dir, "A")
	if err != nil {
		t.Fatal(err)
	}
	u := ota.New(ota.Config{Dir: filepath.Join(dir, "ota"), Boot: boot, Model: "sim", BootID: "boot-1"})
	if err := u.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Stop(context.Background()) })
	return newHarnessConfig(t, "", agent.Config{OTA: u})
}

// versionCalls calls one method of each family on c; each names the
// version that added it.
func versionCalls(t *testing.T, h *harness, c *transport.Conn) map[string]error {
	t.Helper()
	ctx := context.Background()
	errs := map[string]error{}
	errs[proto.MethodBoardInfo] = c.Call(ctx, proto.MethodBoardInfo, nil, nil)
	errs[proto.MethodExecLog] = c.Call(ctx, proto.MethodExecLog, proto.ExecLogParams{Limit: 1}, nil)
	var started proto.ExecStartResult
	errs[proto.MethodExecStart] = c.Call(ctx, proto.MethodExecStart, proto.ExecStartParams{Argv: []string{"true"}}, &started)
	if errs[proto.MethodExecStart] == nil {
		var res proto.ExecResult
		errs[proto.MethodExecWait] = c.Call(ctx, proto.MethodExecWait, proto.ExecWaitParams{ID: started.ID}, &res)
		if errs[proto.MethodExecWait] == nil && res.ExitCode != 0 {
			t.Errorf("exec true: %+v", res)
		}
	}
	errs[proto.MethodFileStat] = c.Call(ctx, proto.MethodFileStat, proto.FileStatParams{Path: h.root}, nil)
	errs[proto.MethodOTAStatus] = c.Call(ctx, proto.MethodOTAStatus, nil, nil)
	return errs
}

// checkServed checks that a session speaking version was served exactly
// the methods of that version, and refused the newer ones naming the
// version that added them.
func checkServed(t *testing.T, version int, errs map[string]error) {
	t.Helper()
	for method, err := range errs {
		added, _ := proto.MethodVersion(method)
		if added <= version {
			if err != nil {
				t.Errorf("protocol %d, %s (protocol %d): %v", version, method, added, err)
			}
			continue
		}
		if want := fmt.Sprintf("%s needs protocol %d; this session speaks %d", method, added, version); !isVersionRefusal(err, want) {
			t.Errorf("protocol %d, %s: %v, want method_not_found %q", version, method, err, want)
		}
	}
}

// isVersionRefusal reports whether err is method_not_found with message msg.
func isVersionRefusal(err error, msg string) bool {
	var perr *proto.Error
	return errors.As(err, &perr) && perr.Reason() == proto.ReasonMethodNotFound && perr.Message == msg
}

// A session is served the methods of the version it said hello with, and
// nothing newer. Clients older than protocol 4 authenticate with the token
// in the hello.
func TestSessionVersionGatesMethods(t *testing.T) {
	h := newOTAHarness(t)
	ctx := context.Background()
	for version := proto.MinVersion; version < 4; version++ {
		t.Run(fmt.Sprint("protocol", version), func(t *testing.T) {
			c := rawSession(t, h.wsURL())
			var hello proto.HelloResult
			if err := c.Call(ctx, proto.MethodHello, proto.HelloParams{Protocol: version, Token: h.token}, &hello); err != nil {
				t.Fatal(err)
			}
			if hello.Protocol != version || !hello.Authenticated {
				t.Fatalf("hello: %+v", hello)
			}
			checkServed(t, version, versionCalls(t, h, c))
		})
	}
	t.Run("a later hello", func(t *testing.T) {
		c := rawSession(t, h.wsURL())
		for _, version := range []int{3, 1} {
			if err := c.Call(ctx, proto.MethodHello, proto.HelloParams{Protocol: version, Token: h.token}, nil); err != nil {
				t.Fatal(err)
			}
		}
		checkServed(t, 1, versionCalls(t, h, c))
	})
	t.Run("protocol 4", func(t *testing.T) {
		c, err := dispatcher.Dial(ctx, h.wsURL(), h.opts())
		connected(t, c, err)
		if c.Hello().Protocol != proto.Version {
			t.Fatalf("hello: %+v", c.Hello())
		}
		checkServed(t, proto.Version, versionCalls(t, h, c.Conn()))
	})
}

// A session authenticated by a Bearer token on the upgrade may skip
// session.hello: it speaks the agent's version.
func TestSessionWithoutHelloSpeaksAgentVersion(t *testing.T) {
	h := newOTAHarness(t)
	l, err := wslink.Dial(context.Background(), h.wsURL(), h.token, wslink.Config{VerifyKey: func(ed25519.PublicKey) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewConn(l, transport.Config{Client: true})
	c.Start()
	t.Cleanup(func() { c.Close() })
	checkServed(t, proto.Version, versionCalls(t, h, c))
}

// session.auth arrived with protocol 4: a session that said hello with an
// older version authenticates with the token in its hello, or not at all.
func TestSessionAuthNeedsProtocol4(t *testing.T) {
	h := newHarness(t, "")
	ctx := context.Background()
	c := rawSession(t, h.wsURL())
	nonce := auth.NewNonce()
	var hello proto.HelloResult
	if err := c.Call(ctx, proto.MethodHello, proto.HelloParams{Protocol: 3, Nonce: nonce}, &hello); err != nil {
		t.Fatal(err)
	}
	key, err := auth.KeyFromBytes(hello.Auth.Key)
	if err != nil {
		t.Fatal(err)
	}
	s := auth.Session{HostNonce: nonce, BoardNonce: hello.Auth.Nonce, Board: auth.FingerprintOf(key)}
	err = c.Call(ctx, proto.MethodAuth, proto.AuthParams{TokenProof: s.TokenProof(h.token)}, nil)
	if want := "session.auth needs protocol 4; this session speaks 3"; !isVersionRefusal(err, want) {
		t.Fatalf("session.auth at protocol 3: %v, want method_not_found %q", err, want)
	}
	if err := c.Call(ctx, proto.MethodBoardInfo, nil, nil); !proto.IsReason(err, proto.ReasonUnauthorized) {
		t.Fatalf("board.info after the refused session.auth: %v, want unauthorized", err)
	}
}
