package seriallink

import (
	"context"
	"fmt"
	"net"
	"testing"

	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
)

// runHandler serves exec.run as the agent does at its edge: params
// decoded strictly and validated (proto.DecodeParams), whatever encoding
// they crossed the line in.
var runHandler = transport.HandlerFunc(func(_ context.Context, _ *transport.Conn, r *transport.Request) (any, error) {
	if r.Method != proto.MethodExecRun {
		return nil, proto.Errorf(proto.ReasonMethodNotFound, "method not found: %s", r.Method)
	}
	var p proto.ExecRunParams
	if err := proto.DecodeParams(r.Params, &p); err != nil {
		return nil, err
	}
	return proto.ExecRunResult{ID: "c1-" + p.Argv[0], ExitCode: len(p.Argv), StartedMs: 1764636000123,
		DurationMs: 3.125, Stdout: p.Stdin}, nil
})

// conns runs a JSON-RPC connection on each end of a session; the agent's
// serves runHandler.
func conns(t *testing.T, hl, al transport.Link) (host *transport.Conn) {
	t.Helper()
	host = transport.NewConn(hl, transport.Config{Client: true})
	agent := transport.NewConn(al, transport.Config{Handler: runHandler})
	host.Start()
	agent.Start()
	t.Cleanup(func() { host.Close(); agent.Close() })
	return host
}

// Old and new ends talk in every pairing over a noisy line with console
// text: text messages go compact only when the host offers the encoding
// and the agent accepts it, and requests are validated after decoding
// either way.
func TestCompactNegotiated(t *testing.T) {
	testenv.CheckLeaks(t)
	for _, c := range []struct{ hostJSON, agentJSON bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		t.Run(fmt.Sprintf("hostJSONOnly=%v,agentJSONOnly=%v", c.hostJSON, c.agentJSON), func(t *testing.T) {
			line := linetest.New(linetest.Config{Corrupt: 0.001, Inject: 0.05, Seed: 3})
			hcfg, acfg := testConfig(), testConfig()
			hcfg.JSONOnly, acfg.JSONOnly = c.hostJSON, c.agentJSON
			he, ae, hl, al := openPair(t, line.Host(), line.Board(), hcfg, acfg)
			go drain(he.Console())
			host := conns(t, hl, al)
			ctx := context.Background()
			for i := range 20 {
				stdin := []byte(fmt.Sprintf("input %d", i))
				var res proto.ExecRunResult
				err := host.Call(ctx, proto.MethodExecRun, proto.ExecRunParams{Argv: []string{"echo", "x"}, Stdin: stdin, Started: "r1"}, &res)
				if err != nil {
					t.Fatal(err)
				}
				want := proto.ExecRunResult{ID: "c1-echo", ExitCode: 2, StartedMs: 1764636000123, DurationMs: 3.125, Stdout: stdin}
				if fmt.Sprint(res) != fmt.Sprint(want) {
					t.Fatalf("result %+v, want %+v", res, want)
				}
			}
			err := host.Call(ctx, proto.MethodExecRun, proto.ExecRunParams{Argv: []string{}, KillSignal: "NOPE"}, nil)
			if !proto.IsReason(err, proto.ReasonInvalidParams) {
				t.Fatalf("invalid params answered %v", err)
			}
			for _, f := range []string{"argv", "kill_signal"} {
				if !mentions(err, f) {
					t.Errorf("invalid params error %v does not name %s", err, f)
				}
			}
			hs, as := he.Stats(), ae.Stats()
			compact := !c.hostJSON && !c.agentJSON
			if got := hs.CompactOut > 0 && as.CompactIn > 0 && as.CompactOut > 0 && hs.CompactIn > 0; got != compact {
				t.Errorf("compact messages: host out %d in %d, agent out %d in %d; want some: %v",
					hs.CompactOut, hs.CompactIn, as.CompactOut, as.CompactIn, compact)
			}
			if !compact && hs.CompactIn+hs.CompactOut+as.CompactIn+as.CompactOut > 0 {
				t.Errorf("a compact message in a JSON session")
			}
		})
	}
}

func mentions(err error, field string) bool {
	pe, ok := err.(*proto.Error)
	if !ok || pe.Data == nil {
		return false
	}
	for _, f := range pe.Data.Fields {
		if f.Field == field {
			return true
		}
	}
	return false
}

// A compact message that does not decode is answered as bad JSON is, with
// a parse error, and the session goes on; one whose JSON form is too long
// is answered too_large.
func TestBadCompactAnswered(t *testing.T) {
	testenv.CheckLeaks(t)
	a, b := net.Pipe()
	acfg := testConfig()
	acfg.MaxMessage = 4096
	_, _, hl, al := openPair(t, a, b, testConfig(), acfg)
	agent := transport.NewConn(al, transport.Config{Handler: runHandler})
	agent.Start()
	t.Cleanup(func() { agent.Close() })
	ctx := context.Background()
	long := []byte{0xA1, 0x00, 0x99, 0x01, 0x90} // an array of 400 ...
	for range 400 {
		long = append(long, 0xF8, 37) // ... "session.hello" each
	}
	for _, tc := range []struct {
		msg    []byte
		reason proto.Reason
	}{
		{[]byte{0xA2, 0x00, 0x01}, proto.ReasonParseError},
		{long, proto.ReasonTooLarge},
	} {
		if err := hl.WriteMessage(ctx, transport.Text, tc.msg); err != nil {
			t.Fatal(err)
		}
		_, p, err := hl.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		m, err := proto.Decode(p)
		if err != nil {
			t.Fatalf("answer %s: %v", p, err)
		}
		if m.Error == nil || m.Error.Reason() != tc.reason {
			t.Fatalf("answer to % x...: %s, want %s", tc.msg[:3], p, tc.reason)
		}
	}
	host := transport.NewConn(hl, transport.Config{Client: true})
	host.Start()
	t.Cleanup(func() { host.Close() })
	var res proto.ExecRunResult
	if err := host.Call(ctx, proto.MethodExecRun, proto.ExecRunParams{Argv: []string{"true"}}, &res); err != nil || res.ID != "c1-true" {
		t.Fatalf("after the bad messages: %+v, %v", res, err)
	}
}
