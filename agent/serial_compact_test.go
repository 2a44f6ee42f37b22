package agent_test

import (
	"context"
	"testing"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/seriallink"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
)

// serveLine has the agent serve the board's side of a new simulated line
// with link's settings, and returns the line.
func (h *harness) serveLine(t *testing.T, link seriallink.Config) *linetest.Line {
	t.Helper()
	line := linetest.New(linetest.Config{})
	s := agent.NewLineSerialServer(h.agent, "test-line", line.Board())
	s.Link = link
	h.startSerial(t, s)
	return line
}

// A host that offers the compact encoding gets the same answers from an
// agent that accepts it and from one that speaks only JSON (an older
// agent), with fewer bytes on the line from the first; requests it sends
// compact are validated by the agent as JSON ones are.
func TestSerialCompactNewHost(t *testing.T) {
	h := newHarness(t, "")
	ctx := context.Background()
	lineBytes := map[bool]uint64{}
	for _, oldAgent := range []bool{false, true} {
		line := h.serveLine(t, seriallink.Config{JSONOnly: oldAgent})
		c, err := dispatcher.DialLine(ctx, line.Host(), h.opts())
		if err != nil {
			t.Fatal(err)
		}
		o := run(t, c, dispatcher.ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
		if o.stdout != "out\n" || o.stderr != "err\n" || o.res.ExitCode != 3 {
			t.Errorf("old agent %v: stdout %q stderr %q exit %d", oldAgent, o.stdout, o.stderr, o.res.ExitCode)
		}
		err = c.Conn().Call(ctx, proto.MethodExecRun, proto.ExecRunParams{Argv: []string{"true"}, KillSignal: "NOPE"}, nil)
		if !proto.IsReason(err, proto.ReasonInvalidParams) || !mentionsField(err, "kill_signal") {
			t.Errorf("old agent %v: invalid params answered %v", oldAgent, err)
		}
		before := line.Stats()
		for range 5 {
			if o := run(t, c, dispatcher.ExecRequest{Argv: []string{"true"}}); o.res.ExitCode != 0 {
				t.Fatalf("true: %+v", o.res)
			}
		}
		after := line.Stats()
		lineBytes[oldAgent] = after.Bytes[0] + after.Bytes[1] - before.Bytes[0] - before.Bytes[1]
		c.Close()
	}
	t.Logf("5 × true: %d bytes on the line in the compact encoding, %d in JSON", lineBytes[false], lineBytes[true])
	if lineBytes[false] >= lineBytes[true] {
		t.Errorf("the compact encoding took %d bytes, JSON %d", lineBytes[false], lineBytes[true])
	}
}

func mentionsField(err error, field string) bool {
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

// A host that does not offer the compact encoding (an older host: its
// hello has no such byte) is answered in JSON by a new agent.
func TestSerialCompactOldHost(t *testing.T) {
	h := newHarness(t, "")
	ctx := context.Background()
	line := h.serveLine(t, seriallink.Config{})
	ep := seriallink.NewEndpoint(line.Host(), seriallink.Config{JSONOnly: true})
	defer ep.Close()
	link, err := ep.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewConn(link, transport.Config{Client: true})
	c.Start()
	defer c.Close()
	// The legacy hello brings the token, as hosts before protocol 4 did.
	if err := c.Call(ctx, proto.MethodHello, proto.HelloParams{Protocol: proto.Version, Token: h.token}, nil); err != nil {
		t.Fatal(err)
	}
	var res proto.ExecRunResult
	if err := c.Call(ctx, proto.MethodExecRun, proto.ExecRunParams{Argv: []string{"sh", "-c", "printf hi; exit 4"}, MaxOutput: 64}, &res); err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "hi" || res.ExitCode != 4 {
		t.Fatalf("exec.run: %+v", res)
	}
	err = c.Call(ctx, proto.MethodExecRun, proto.ExecRunParams{Argv: []string{}}, nil)
	if !proto.IsReason(err, proto.ReasonInvalidParams) || !mentionsField(err, "argv") {
		t.Fatalf("invalid params answered %v", err)
	}
	if st := ep.Stats(); st.CompactIn != 0 || st.CompactOut != 0 {
		t.Fatalf("compact messages with a host that did not offer them: %+v", st)
	}
}
