package agent_test

import (
	"context"
	"os/exec"
	"testing"

	"github.com/boardlink/boardlink/dispatcher"
)

// BenchmarkExecRoundTrip measures one `true` run through the agent, per
// transport, beside the peer it stands in for: a local fork/exec of the same
// command (os/exec), measured first in the same run. The x_local metric is
// the round trip divided by the local fork/exec.
func BenchmarkExecRoundTrip(b *testing.B) {
	var localNs float64
	b.Run("local-forkexec", func(b *testing.B) {
		for b.Loop() {
			if err := exec.Command("true").Run(); err != nil {
				b.Fatal(err)
			}
		}
		localNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	for _, tr := range []via{{"ws", dialWS}, {"serial-unix", dialUnix}} {
		b.Run(tr.name, func(b *testing.B) {
			c := tr.dial(b, newHarness(b, ""))
			ctx := context.Background()
			req := dispatcher.ExecRequest{Argv: []string{"true"}}
			for b.Loop() {
				if res, err := c.Exec(ctx, req); err != nil || res.ExitCode != 0 {
					b.Fatalf("%+v %v", res, err)
				}
			}
			if localNs > 0 {
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/localNs, "x_local")
			}
		})
	}
}
