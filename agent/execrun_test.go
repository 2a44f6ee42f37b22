package agent_test

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

// exec.run answers with the output that went to no stream, cut at
// max_output and counted whole, and takes stdin inline.
func TestExecRunInline(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	ctx := context.Background()
	var res proto.ExecRunResult
	err := c.Conn().Call(ctx, proto.MethodExecRun, proto.ExecRunParams{
		Argv: []string{"sh", "-c", "cat; printf 12345 >&2; exit 7"}, Stdin: []byte("abc"), MaxOutput: 4}, &res)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "abc" || string(res.Stderr) != "1234" || !res.Truncated ||
		res.StdoutBytes != 3 || res.StderrBytes != 5 || res.ExitCode != 7 || res.ID == "" || res.StartedMs == 0 {
		t.Fatalf("result %+v, stdout %q, stderr %q", res, res.Stdout, res.Stderr)
	}
	// Without max_output the output is only counted.
	res = proto.ExecRunResult{}
	if err := c.Conn().Call(ctx, proto.MethodExecRun, proto.ExecRunParams{Argv: []string{"echo", "hi"}}, &res); err != nil {
		t.Fatal(err)
	}
	if res.Stdout != nil || res.Truncated || res.StdoutBytes != 3 {
		t.Fatalf("result %+v, stdout %q", res, res.Stdout)
	}
	// The log has both, ended.
	log, err := c.ExecLog(ctx, 0)
	if err != nil || len(log) != 2 || log[0].Running || log[1].ExitCode != 7 {
		t.Fatalf("log %+v %v", log, err)
	}
}

// A request exec.run cannot serve as given is refused before anything
// runs.
func TestExecRunRefuses(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	ctx := context.Background()
	st, err := c.Conn().OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, tc := range []struct {
		name   string
		p      proto.ExecRunParams
		reason proto.Reason
	}{
		{"no argv", proto.ExecRunParams{}, proto.ReasonInvalidParams},
		{"stdin stream without started", proto.ExecRunParams{Argv: []string{"cat"}, StdinStream: st.ID()}, proto.ReasonInvalidParams},
		{"stdin both ways", proto.ExecRunParams{Argv: []string{"cat"}, Stdin: []byte("x"), StdinStream: st.ID(), Started: "t"}, proto.ReasonInvalidParams},
		{"a stream of the agent's", proto.ExecRunParams{Argv: []string{"true"}, Stdout: 2}, proto.ReasonInvalidParams},
		{"output beyond the bound", proto.ExecRunParams{Argv: []string{"true"}, MaxOutput: 2 << 20}, proto.ReasonInvalidParams},
		{"no such program", proto.ExecRunParams{Argv: []string{"/no/such/program"}}, proto.ReasonNotFound},
	} {
		err := c.Conn().Call(ctx, proto.MethodExecRun, tc.p, nil)
		if !proto.IsReason(err, tc.reason) {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.reason)
		}
	}
	if log, err := c.ExecLog(ctx, 0); err != nil || len(log) != 0 {
		t.Fatalf("log %+v %v: nothing should have run", log, err)
	}
}

// calls records the methods a client calls, from its debug log.
type calls struct {
	mu      sync.Mutex
	methods []string
}

func (c *calls) Enabled(context.Context, slog.Level) bool { return true }
func (c *calls) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *calls) WithGroup(string) slog.Handler            { return c }
func (c *calls) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "call" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "method" {
			c.mu.Lock()
			c.methods = append(c.methods, a.Value.String())
			c.mu.Unlock()
		}
		return true
	})
	return nil
}

// Client.Exec with an agent of protocol 5 is one request, exec.run, with
// and without a context that can be canceled, with streamed stdin too;
// a detached command still takes exec.start and exec.wait.
func TestExecIsOneRequest(t *testing.T) {
	h := newHarness(t, "")
	rec := &calls{}
	opts := h.opts()
	opts.Logger = slog.New(rec)
	dialed, err := dispatcher.Dial(context.Background(), h.wsURL(), opts)
	c := connected(t, dialed, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	for _, tc := range []struct {
		ctx context.Context
		req dispatcher.ExecRequest
	}{
		{context.Background(), dispatcher.ExecRequest{Argv: []string{"true"}}},
		{ctx, dispatcher.ExecRequest{Argv: []string{"echo", "out"}, Stdout: &out}},
		{ctx, dispatcher.ExecRequest{Argv: []string{"cat"}, Stdin: strings.NewReader("in\n"), Stdout: &out}},
	} {
		rec.mu.Lock()
		rec.methods = nil
		rec.mu.Unlock()
		if res, err := c.Exec(tc.ctx, tc.req); err != nil || res.ExitCode != 0 {
			t.Fatalf("%q: %+v %v", tc.req.Argv, res, err)
		}
		rec.mu.Lock()
		got := slices.Clone(rec.methods)
		rec.mu.Unlock()
		if !slices.Equal(got, []string{proto.MethodExecRun}) {
			t.Errorf("%q called %v, want exec.run alone", tc.req.Argv, got)
		}
	}
	if out.String() != "out\nin\n" {
		t.Errorf("output %q", out.String())
	}
	rec.mu.Lock()
	rec.methods = nil
	rec.mu.Unlock()
	if _, err := c.Exec(ctx, dispatcher.ExecRequest{Argv: []string{"true"}, Detach: true}); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if !slices.Equal(rec.methods, []string{proto.MethodExecStart, proto.MethodExecWait}) {
		t.Errorf("detached: called %v", rec.methods)
	}
}
