package agent_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/wslink"
)

// upgradeSession dials the harness with hello on the upgrade (p, as the
// header's JSON, or raw when p is a string) and bearer as the upgrade's
// token; it returns the session and the agent's answer, decoded ("" and a
// zero result when there was none).
func upgradeSession(t *testing.T, h *harness, p any, bearer string) (*transport.Conn, string, proto.HelloResult) {
	t.Helper()
	v, ok := p.(string)
	if !ok {
		var err error
		if v, err = proto.EncodeHelloHeader(p); err != nil {
			t.Fatal(err)
		}
	}
	l, err := wslink.Dial(context.Background(), h.wsURL(), bearer, wslink.Config{
		VerifyKey: func(ed25519.PublicKey) error { return nil }, Header: http.Header{proto.HelloHeader: {v}}})
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewConn(l, transport.Config{Client: true})
	c.Start()
	t.Cleanup(func() { c.Close() })
	answer := l.Peer().Answered.Get(proto.HelloHeader)
	var res proto.HelloResult
	if answer != "" {
		raw, err := proto.HelloHeaderJSON(answer)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			t.Fatal(err)
		}
	}
	return c, answer, res
}

// session.hello on the upgrade (protocol.md 2.7) opens the session as the
// in-band hello does: the board's proof over the nonce sent, the version
// both speak, and nothing served before session.auth proves the token
// over those nonces; with a Bearer token the session is authenticated.
func TestHelloOnUpgrade(t *testing.T) {
	h := newHarness(t, "")
	ctx := context.Background()
	nonce := auth.NewNonce()
	c, answer, hello := upgradeSession(t, h, proto.HelloParams{Protocol: 4, Client: "test", Nonce: nonce}, "")
	if answer == "" || hello.Auth == nil || hello.Protocol != 4 || hello.BoardID != "test-board" || hello.Authenticated {
		t.Fatalf("the upgrade's hello: %q %+v, want protocol 4, test-board, a proof, not authenticated", answer, hello)
	}
	key, err := auth.KeyFromBytes(hello.Auth.Key)
	if err != nil {
		t.Fatal(err)
	}
	s := auth.Session{HostNonce: nonce, BoardNonce: hello.Auth.Nonce, Board: auth.FingerprintOf(key)}
	if err := s.VerifyBoard(key, hello.Auth.Proof); err != nil {
		t.Fatalf("the board's proof over the upgrade's nonces: %v", err)
	}
	if err := c.Call(ctx, proto.MethodBoardInfo, nil, nil); !proto.IsReason(err, proto.ReasonUnauthorized) {
		t.Fatalf("board.info before session.auth: %v, want unauthorized", err)
	}
	if err := c.Call(ctx, proto.MethodAuth, proto.AuthParams{TokenProof: s.TokenProof(h.token)}, nil); err != nil {
		t.Fatalf("session.auth over the upgrade's nonces: %v", err)
	}
	if err := c.Call(ctx, proto.MethodBoardInfo, nil, nil); err != nil {
		t.Fatalf("board.info after session.auth: %v", err)
	}
	// The session speaks the version the upgrade's hello negotiated.
	err = c.Call(ctx, proto.MethodExecRun, proto.ExecStartParams{Argv: []string{"true"}}, nil)
	if want := "exec.run needs protocol 5; this session speaks 4"; !isVersionRefusal(err, want) {
		t.Fatalf("exec.run at protocol 4: %v, want method_not_found %q", err, want)
	}

	_, answer, hello = upgradeSession(t, h, proto.HelloParams{Protocol: proto.Version, Nonce: auth.NewNonce()}, h.token)
	if answer == "" || !hello.Authenticated || hello.Protocol != proto.Version {
		t.Fatalf("the upgrade's hello with a Bearer token: %q %+v, want authenticated at protocol %d", answer, hello, proto.Version)
	}
}

// What the agent does not serve on the upgrade gets no answer there, and
// the session goes on in-band: a token never rides in the header, and a
// hello without a nonce, from too old a client, or malformed, is said
// (and refused, if it must be) in-band.
func TestHelloOnUpgradeNotAnswered(t *testing.T) {
	h := newHarness(t, "")
	for _, c := range []struct {
		what string
		p    any
	}{
		{"a token", proto.HelloParams{Protocol: proto.Version, Nonce: auth.NewNonce(), Token: h.token}},
		{"no nonce", proto.HelloParams{Protocol: proto.Version}},
		{"protocol 0", proto.HelloParams{Protocol: 0, Nonce: auth.NewNonce()}},
		{"a short nonce", proto.HelloParams{Protocol: proto.Version, Nonce: []byte("short")}},
		{"an unknown field", map[string]any{"protocol": proto.Version, "nonce": auth.NewNonce(), "x": 1}},
		{"not base64", "!!!"},
		{"not JSON", "bm90IGpzb24"},
	} {
		conn, answer, _ := upgradeSession(t, h, c.p, "")
		if answer != "" {
			t.Errorf("%s: answered on the upgrade: %q", c.what, answer)
		}
		var hello proto.HelloResult
		if err := conn.Call(context.Background(), proto.MethodHello, proto.HelloParams{Protocol: proto.Version, Nonce: auth.NewNonce()}, &hello); err != nil || hello.Auth == nil {
			t.Errorf("%s: the in-band hello after it: %+v, %v", c.what, hello, err)
		}
	}
}
