package seriallink

import (
	"context"
	"testing"
	"time"

	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
)

// BenchmarkBulk streams MaxChunk-sized binary messages, as the mux does for
// a file transfer, from host to agent over a paced simulated line, and
// reports payload/wire (payload bytes over line bytes in the data
// direction, retransmissions and probes included) and line-util (goodput
// over the line's byte rate).
func BenchmarkBulk(b *testing.B) {
	for _, c := range []struct {
		name    string
		baud    int
		corrupt float64
	}{
		{"1Mbaud/clean", 1_000_000, 0},
		{"1Mbaud/corrupt0.1%", 1_000_000, 0.001},
		{"115200/clean", 115200, 0},
		{"115200/corrupt0.1%", 115200, 0.001},
	} {
		b.Run(c.name, func(b *testing.B) {
			line := linetest.New(linetest.Config{Baud: c.baud, Corrupt: c.corrupt, Seed: 1})
			he, _, hl, al := openPair(b, line.Host(), line.Board(), Config{}, Config{BeaconInterval: 50 * time.Millisecond})
			msg := make([]byte, hl.(transport.ChunkSizer).MaxChunk()+proto.StreamHeaderLen)
			for i := range msg {
				msg[i] = byte(i * 7)
			}
			b.SetBytes(int64(len(msg)))
			before := he.Stats()
			b.ResetTimer()
			start := time.Now()
			done := make(chan struct{})
			go func() {
				defer close(done)
				for range b.N {
					if _, _, err := al.ReadMessage(); err != nil {
						b.Error(err)
						return
					}
				}
			}()
			for range b.N {
				if err := hl.WriteMessage(context.Background(), transport.Binary, msg); err != nil {
					b.Fatal(err)
				}
			}
			<-done
			elapsed := time.Since(start)
			b.StopTimer()
			after := he.Stats()
			b.ReportMetric(float64(after.PayloadOut-before.PayloadOut)/float64(after.WireOut-before.WireOut), "payload/wire")
			b.ReportMetric(float64(b.N*len(msg))/elapsed.Seconds()/line.LineRate(), "line-util")
		})
	}
}
