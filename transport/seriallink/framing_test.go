package seriallink

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/transport"
	"github.com/boardlink/boardlink/transport/seriallink/linetest"
)

// An endpoint limited to framing 1 and JSON writes exactly what the
// original framing did: the SYN of the recorded session in
// docs/protocol.md 9.5.
func TestFraming1HelloOnTheWire(t *testing.T) {
	cfg := Config{Framing: 1, JSONOnly: true}.withDefaults()
	var fb frameBuf
	got := fb.appendFrame(nil, header{typ: typeSyn, tag: 0x819e}, hello(&cfg, offer(&cfg)))
	want, _ := hex.DecodeString(strings.ReplaceAll("00 fe 80 92 02 03 03 81 9e 01 01 01 01 03 01 04 06 20 ff 7a 3e 56 00", " ", ""))
	if !bytes.Equal(got, want) {
		t.Fatalf("framing-1 SYN\n got % x\nwant % x", got, want)
	}
	if h := hello(&Config{Framing: 2}, 0); len(h) != 5 || h[0] != protoVersion || h[4] != 2 {
		t.Fatalf("framing-2 hello % x", h)
	}
	if h := hello(&Config{Framing: 1}, 1); len(h) != 6 || h[4] != 1 || h[5] != 1 {
		t.Fatalf("framing-1 hello offering the compact encoding % x", h)
	}
}

// Every pairing of an old-framing end and a new one talks over a noisy
// line with console text; FEC frames flow only when both ends offer
// framing 2, and an old-framing end never receives one (an old parser
// would take their 0xFF start for console text).
func TestFramingNegotiated(t *testing.T) {
	testenv.CheckLeaks(t)
	for _, c := range []struct{ host, agent int }{{1, 1}, {1, 2}, {2, 1}, {2, 2}} {
		t.Run(fmt.Sprintf("host%d-agent%d", c.host, c.agent), func(t *testing.T) {
			line := linetest.New(linetest.Config{Corrupt: 0.001, Inject: 0.05, Seed: uint64(10*c.host + c.agent)})
			hcfg, acfg := testConfig(), testConfig()
			hcfg.Framing, acfg.Framing = c.host, c.agent
			hcfg.ConsoleBuffer = 1 << 20
			he, ae, hl, al := openPair(t, line.Host(), line.Board(), hcfg, acfg)
			console := drain(he.Console())
			go echo(al)
			msg := bytes.Repeat([]byte("0123456789abcdef"), 250)
			for i := range 40 {
				if err := hl.WriteMessage(context.Background(), transport.Binary, msg[:100*i]); err != nil {
					t.Fatal(err)
				}
				if _, got, err := hl.ReadMessage(); err != nil || !bytes.Equal(got, msg[:100*i]) {
					t.Fatalf("exchange %d: %d bytes, %v", i, len(got), err)
				}
			}
			ae.Close()
			testenv.Eventually(t, "the host to read all the board sent", func() bool { return he.Stats().WireIn >= line.Stats().Bytes[1] })
			he.Close()
			if missing, ok := inOrder(console(), line.Injected()); !ok {
				t.Errorf("console line %s missing", missing)
			}
			hs, as := he.Stats(), ae.Stats()
			both := c.host == 2 && c.agent == 2
			if both != (hs.FECFramesIn > 0) || both != (as.FECFramesIn > 0) {
				t.Errorf("FEC frames in: host %d, agent %d; want some only with framing 2 on both ends", hs.FECFramesIn, as.FECFramesIn)
			}
			if both && hs.Corrected+as.Corrected == 0 {
				t.Errorf("framing 2 on a noisy line corrected nothing")
			}
			t.Logf("host %+v", hs)
		})
	}
}
