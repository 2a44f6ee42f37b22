package agent_test

import (
	"context"
	"io"
	"strconv"
	"testing"

	"github.com/boardlink/boardlink/proto"
)

// The commands a connection starts keep their results until it waits for
// them: 150 started at once on one connection, more than the log holds,
// all ended before the first exec.wait, each still gets its own result.
func TestConnectionCollectsEveryResult(t *testing.T) {
	const n = 150
	h := newHarness(t, "")
	conn := dialWS(t, h).Conn()
	ctx := context.Background()
	ids := make([]string, n)
	outs := make([]io.Reader, n)
	for i := range n {
		out, err := conn.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		outs[i] = out
		var started proto.ExecStartResult
		p := proto.ExecStartParams{Argv: []string{`echo "out $0"; exit $(($0 % 100))`, strconv.Itoa(i)}, Shell: true, Stdout: out.ID()}
		if err := conn.Call(ctx, proto.MethodExecStart, p, &started); err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
		ids[i] = started.ID
	}
	// The agent ends a command's streams once its result is final.
	got := make([]string, n)
	for i, out := range outs {
		b, err := io.ReadAll(out)
		if err != nil {
			t.Fatalf("command %d output: %v", i, err)
		}
		got[i] = string(b)
	}
	for i, id := range ids {
		var res proto.ExecResult
		if err := conn.Call(ctx, proto.MethodExecWait, proto.ExecWaitParams{ID: id}, &res); err != nil {
			t.Errorf("command %d (%s): %v", i, id, err)
			continue
		}
		want := "out " + strconv.Itoa(i) + "\n"
		if res.ID != id || res.ExitCode != i%100 || got[i] != want || res.StdoutBytes != int64(len(want)) {
			t.Errorf("command %d: %+v, output %q; want exit %d, output %q", i, res, got[i], i%100, want)
		}
	}
}
