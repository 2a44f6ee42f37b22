package agent_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
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

// BenchmarkPushPull measures push and pull of a 64 MiB file over loopback
// WebSocket, in MB/s. Each iteration first removes, outside the timer, the
// copy the previous one made, and checks that the transfer moved every byte:
// nothing resumes and nothing is skipped. bench/transfer compares the same
// transfers with scp.
func BenchmarkPushPull(b *testing.B) {
	const size = 64 << 20
	h := newHarness(b, "")
	c := dialWS(b, h)
	ctx := context.Background()
	dir := b.TempDir()
	removeCopy := func(b *testing.B, path string) {
		b.Helper()
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			b.Fatal(err)
		}
		for _, p := range leftovers(b, filepath.Dir(path)) {
			if err := os.Remove(p); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("push", func(b *testing.B) {
		local := filepath.Join(dir, "push-src.bin")
		sum := writeRandom(b, local, size)
		remote := filepath.Join(h.root, "pushed.bin")
		b.SetBytes(size)
		for b.Loop() {
			b.StopTimer()
			removeCopy(b, remote)
			b.StartTimer()
			res, err := c.Push(ctx, local, remote, dispatcher.TransferOptions{})
			if err != nil || res.Offset != 0 || res.Bytes != size || res.SHA256 != sum {
				b.Fatalf("push: %+v %v", res, err)
			}
		}
	})
	b.Run("pull", func(b *testing.B) {
		remote := filepath.Join(h.root, "served.bin")
		sum := writeRandom(b, remote, size)
		local := filepath.Join(dir, "pulled.bin")
		b.SetBytes(size)
		for b.Loop() {
			b.StopTimer()
			removeCopy(b, local)
			b.StartTimer()
			res, err := c.Pull(ctx, remote, local, dispatcher.TransferOptions{})
			if err != nil || res.Offset != 0 || res.Bytes != size || res.SHA256 != sum {
				b.Fatalf("pull: %+v %v", res, err)
			}
		}
	})
}
