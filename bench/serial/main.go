// Command serial measures the serial-framed link's bulk throughput as a
// fraction of the line rate, over a simulated serial line (linetest: a
// byte pipe each way paced at the baud rate, 10 bits per byte, with
// seeded random byte corruption and kernel-style console lines written
// into the board's output, between frames and inside them).
//
// The board's agent writes -size bytes in chunk-sized binary messages, as
// the mux does for a pull, and the host reads them; the figure is payload
// bytes over elapsed time over baud/10. Console text shares the line, so
// it counts against the figure. Each case runs with the framings named by
// -framing (1: the original framing; 2: with forward error correction),
// interleaved, and prints the median of -runs runs with min and max.
//
// Run it from the module root:
//
//	go run ./bench/serial                       # all cases
//	go run ./bench/serial -runs 1 -size 16KiB   # quick
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/seriallink"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
)

type lineCase struct {
	name    string
	baud    int
	corrupt float64
	inject  float64
	size    int
}

func main() {
	size := flag.String("size", "256KiB", "bytes per transfer at 1 Mbaud (a quarter of it at 115200)")
	runs := flag.Int("runs", 3, "transfers per case and framing")
	framings := flag.String("framing", "1,2", "comma-separated framing versions to compare")
	inject := flag.Float64("inject", 0.05, "probability that a frame or gap in the board's output gets a console line")
	only := flag.String("case", "", "run only cases whose name contains this")
	flag.Parse()
	n, err := parseSize(*size)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var versions []int
	for _, f := range strings.Split(*framings, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad -framing:", err)
			os.Exit(2)
		}
		versions = append(versions, v)
	}
	var cases []lineCase
	for _, baud := range []int{115200, 1_000_000} {
		sz := n
		if baud < 1_000_000 {
			sz = max(n/4, 1024)
		}
		b := strconv.Itoa(baud)
		cases = append(cases,
			lineCase{b + " clean", baud, 0, 0, sz},
			lineCase{b + " 0.1% corrupt", baud, 0.001, 0, sz},
			lineCase{b + " 0.1% corrupt + console", baud, 0.001, *inject, sz},
		)
	}
	fmt.Printf("%-30s %8s %7s  %s\n", "case", "bytes", "framing", "fraction of line rate: median (min-max), retransmits, console lines")
	for _, c := range cases {
		if !strings.Contains(c.name, *only) {
			continue
		}
		res := make([][]float64, len(versions))
		notes := make([]string, len(versions))
		for r := range *runs {
			for i, v := range versions {
				f, note, err := run(c, v, uint64(r+1))
				if err != nil {
					fmt.Fprintf(os.Stderr, "%s framing %d: %v\n", c.name, v, err)
					os.Exit(1)
				}
				res[i] = append(res[i], f)
				notes[i] = note
			}
		}
		for i, v := range versions {
			s := slices.Sorted(slices.Values(res[i]))
			fmt.Printf("%-30s %8d %7d  %.3f (%.3f-%.3f)  %s\n", c.name, c.size, v, s[len(s)/2], s[0], s[len(s)-1], notes[i])
		}
	}
}

// run makes one transfer and returns the fraction of the line rate.
func run(c lineCase, framing int, seed uint64) (float64, string, error) {
	line := linetest.New(linetest.Config{Baud: c.baud, Corrupt: c.corrupt, Inject: c.inject, Seed: seed})
	cfg := seriallink.Config{BeaconInterval: 50 * time.Millisecond, Framing: framing}
	acfg := cfg
	acfg.Beacon = func() []byte { return []byte(`{"id":"bench"}`) }
	ae := seriallink.NewEndpoint(line.Board(), acfg)
	he := seriallink.NewEndpoint(line.Host(), cfg)
	defer ae.Close()
	defer he.Close()
	go io.Copy(io.Discard, he.Console())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	accepted := make(chan transport.Link, 1)
	go func() {
		l, err := ae.Accept(ctx)
		if err != nil {
			l = nil
		}
		accepted <- l
	}()
	hl, err := he.Dial(ctx)
	if err != nil {
		return 0, "", fmt.Errorf("dial: %w", err)
	}
	al := <-accepted
	if al == nil {
		return 0, "", errors.New("accept failed")
	}
	chunk := al.(transport.ChunkSizer).MaxChunk() + proto.StreamHeaderLen // one stream frame, as the mux sends
	msg := make([]byte, chunk)
	for i := range msg {
		msg[i] = byte(i*7 + i>>8)
	}
	start := time.Now()
	werr := make(chan error, 1)
	go func() {
		for sent := 0; sent < c.size; sent += chunk {
			if err := al.WriteMessage(ctx, transport.Binary, msg[:min(chunk, c.size-sent)]); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	for got := 0; got < c.size; {
		_, p, err := hl.ReadMessage()
		if err != nil {
			return 0, "", fmt.Errorf("read after %d bytes: %w", got, err)
		}
		got += len(p)
	}
	elapsed := time.Since(start)
	if err := <-werr; err != nil {
		return 0, "", err
	}
	st := ae.Stats()
	hs := he.Stats()
	note := fmt.Sprintf("retx %d, corrected %d, corrupt %d, lines %d, recovered %d, wire/payload %.3f", st.Retransmits, hs.Corrected, hs.Corrupt, line.Stats().Lines, hs.Recovered, float64(st.WireOut)/float64(st.PayloadOut))
	if os.Getenv("SERIALBENCH_V") != "" {
		fmt.Fprintln(os.Stderr, c.name, framing, elapsed, note)
	}
	return float64(c.size) / elapsed.Seconds() / line.LineRate(), note, nil
}

func parseSize(s string) (int, error) {
	mult := 1
	for suf, m := range map[string]int{"KiB": 1 << 10, "MiB": 1 << 20} {
		if strings.HasSuffix(s, suf) {
			s, mult = strings.TrimSuffix(s, suf), m
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}
