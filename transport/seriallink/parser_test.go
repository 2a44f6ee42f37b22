package seriallink

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

type gotFrame struct {
	h       header
	payload []byte
}

// sink collects what a parser emits.
type sink struct {
	p      *parser
	stats  *counters
	frames []gotFrame
	text   bytes.Buffer
}

func newSink() *sink {
	s := &sink{stats: new(counters)}
	s.p = newParser(s.stats, func(h header, payload []byte) {
		s.frames = append(s.frames, gotFrame{h, bytes.Clone(payload)})
	}, func(b []byte) { s.text.Write(b) })
	return s
}

func wire(h header, payload []byte) []byte {
	var fb frameBuf
	return fb.appendFrame(nil, h, payload)
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func testPayloads() map[string][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	bin := make([]byte, 600)
	for i := range bin {
		bin[i] = byte(r.Uint32())
	}
	return map[string][]byte{
		"empty":  nil,
		"binary": bin,
		"json":   []byte("{\"jsonrpc\":\"2.0\",\"method\":\"exec.output\",\"params\":{\"data\":\"line one\nline two\n[ok]\n\"}}\n"),
		"fe+00":  bytes.Repeat([]byte{0xFE, 0x00, 0x0A}, 100),
	}
}

func TestFrameEncoding(t *testing.T) {
	hs := []header{
		{typ: typeData, flags: flagMore | flagBinary, tag: 0xBEEF, seq: 65535, ack: 7, wnd: 255},
		{typ: typeAck, tag: 1, seq: 0, ack: 0, wnd: 0},
		{typ: typeBeacon},
	}
	payloads := testPayloads()
	payloads["max"] = bytes.Repeat([]byte{0xFE}, MaxPayloadLimit)
	for _, h := range hs {
		for name, pl := range payloads {
			w := wire(h, pl)
			if w[0] != delim || w[1] != startByte || w[len(w)-1] != delim {
				t.Fatalf("%s: frame not delimited: % x...", name, w[:4])
			}
			if bytes.IndexByte(w[2:len(w)-1], delim) >= 0 {
				t.Fatalf("%s: 0x00 inside the frame", name)
			}
			if w[2] == startByte || w[3] == startByte || frameLen(w[2], w[3]) != len(w)-3 {
				t.Fatalf("%s: bad length bytes % x for %d", name, w[2:4], len(w))
			}
			if len(w) > maxWire {
				t.Fatalf("%s: %d bytes exceeds maxWire %d", name, len(w), maxWire)
			}
			s := newSink()
			s.p.feed(w)
			if len(s.frames) != 1 || s.frames[0].h != h || !bytes.Equal(s.frames[0].payload, pl) {
				t.Fatalf("%s: decoded %+v", name, s.frames)
			}
		}
	}
}

func TestParserTextBetweenFrames(t *testing.T) {
	f1 := wire(header{typ: typeData, tag: 9, seq: 1}, []byte("one"))
	f2 := wire(header{typ: typeData, tag: 9, seq: 2}, []byte("two"))
	in := join([]byte("U-Boot 2024.01\r\n"), f1, []byte("login: "), f2, []byte("\x00x\n"))
	for _, step := range []int{1, 3, 7, len(in)} {
		s := newSink()
		for b := in; len(b) > 0; b = b[min(step, len(b)):] {
			s.p.feed(b[:min(step, len(b))])
		}
		if got := s.text.String(); got != "U-Boot 2024.01\r\nlogin: x\n" {
			t.Errorf("step %d: text %q", step, got)
		}
		if len(s.frames) != 2 || string(s.frames[0].payload) != "one" || string(s.frames[1].payload) != "two" {
			t.Errorf("step %d: frames %+v", step, s.frames)
		}
	}
}

// A console line written at any point of a frame is cut out again: the
// frame arrives and the line comes out as text.
func TestParserTextInsideFrameEveryPosition(t *testing.T) {
	const line = "[   12.345678] usb 1-1: new high-speed USB device number 2\r\n"
	next := wire(header{typ: typeAck, tag: 3, ack: 4}, nil)
	for name, pl := range testPayloads() {
		h := header{typ: typeData, tag: 0x1234, seq: 42, ack: 7, wnd: 16}
		w := wire(h, pl)
		for i := 0; i <= len(w); i++ {
			in := join(w[:i], []byte(line), w[i:], next)
			s := newSink()
			if i%97 == 0 { // sometimes one byte at a time
				for _, c := range in {
					s.p.feed([]byte{c})
				}
			} else {
				s.p.feed(in)
			}
			s.wantFrameThenAck(t, fmt.Sprintf("%s, text at %d", name, i), h, pl, line)
		}
	}
}

// wantFrameThenAck checks that s got the frame h with payload pl, then an
// ACK, and exactly text as console text, with nothing dropped as corrupt.
func (s *sink) wantFrameThenAck(t *testing.T, what string, h header, pl []byte, text string) {
	t.Helper()
	if len(s.frames) != 2 || s.frames[0].h != h || !bytes.Equal(s.frames[0].payload, pl) || s.frames[1].h.typ != typeAck {
		t.Fatalf("%s: frames %d", what, len(s.frames))
	}
	if s.text.String() != text {
		t.Fatalf("%s: console %q", what, s.text.String())
	}
	if c := s.stats.corrupt.Load(); c != 0 {
		t.Fatalf("%s: %d corrupt", what, c)
	}
}

func TestParserDamage(t *testing.T) {
	h := header{typ: typeData, tag: 5, seq: 1}
	good := wire(header{typ: typeData, tag: 5, seq: 2}, []byte("after"))
	f := wire(h, bytes.Repeat([]byte("payload "), 40))
	flip := func(i int) []byte {
		b := bytes.Clone(f)
		b[i] ^= 0x40
		return b
	}
	r := rand.New(rand.NewPCG(3, 4))
	noise := make([]byte, 3000)
	for i := range noise {
		noise[i] = byte(r.Uint32())
	}
	cases := []struct {
		name      string
		in        []byte
		frames    int    // frames before the good one
		text      string // console text wanted, if checked
		corrupt   bool   // whether a corrupt candidate must be counted
		anyCount  bool   // don't check the corrupt count
		checkText bool
	}{
		{name: "truncated", in: f[:len(f)/2], corrupt: true},
		{name: "corrupted byte", in: flip(len(f) / 2), corrupt: true},
		{name: "corrupted length byte", in: flip(3), corrupt: true},
		{name: "lost closing 0x00, then text", in: join(f[:len(f)-1], []byte("oops\n")), frames: 1, text: "oops\n", checkText: true},
		{name: "lost start", in: f[2:], anyCount: true},
		{name: "random bytes", in: noise, anyCount: true},
		{name: "two lines in one frame", in: join(f[:100], []byte("a\n"), f[100:200], []byte("b\n"), f[200:]), corrupt: true},
		{name: "text too long to cut out", in: join(f[:100], bytes.Repeat([]byte("x"), maxInjected+1), f[100:]), corrupt: true},
		{name: "endless candidate", in: join([]byte{delim, startByte}, f[2:4], bytes.Repeat([]byte{0xAA}, maxCandidate+10)), corrupt: true},
		{name: "latin-1 thorn", in: []byte("caf\xfe au lait\n"), text: "caf\xfe au lait\n", checkText: true},
		{name: "lone start byte", in: []byte{startByte}, corrupt: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSink()
			s.p.feed(join(c.in, good))
			if len(s.frames) != c.frames+1 {
				t.Fatalf("got %d frames, want %d", len(s.frames), c.frames+1)
			}
			if last := s.frames[len(s.frames)-1]; string(last.payload) != "after" {
				t.Fatalf("last frame %q, want the good one", last.payload)
			}
			if c.checkText && s.text.String() != c.text {
				t.Errorf("text %q, want %q", s.text.String(), c.text)
			}
			if !c.anyCount && c.corrupt != (s.stats.corrupt.Load() > 0) {
				t.Errorf("corrupt count %d", s.stats.corrupt.Load())
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("plain console text\n"), uint16(3))
	f.Add(wire(header{typ: typeData, tag: 1}, []byte("x")), uint16(5))
	f.Add([]byte{startByte, 0x80, 0x8e, 1, 2, 3}, uint16(1))
	f.Add(join(wire(header{typ: typeAck, tag: 2}, nil)[:8], []byte("text\n")), uint16(9))
	good := wire(header{typ: typeData, tag: 7, seq: 9}, []byte("the frame after"))
	f.Fuzz(func(t *testing.T, junk []byte, split uint16) {
		in := join(junk, good)
		whole := newSink()
		whole.p.feed(in)
		// Whatever came before, the frame after it gets through.
		if n := len(whole.frames); n == 0 || string(whole.frames[n-1].payload) != "the frame after" {
			t.Fatalf("frame after junk % x lost", junk)
		}
		// Read boundaries do not change the outcome.
		cut := int(split) % (len(in) + 1)
		parts := newSink()
		parts.p.feed(in[:cut])
		parts.p.feed(in[cut:])
		if !slices.EqualFunc(whole.frames, parts.frames, func(a, b gotFrame) bool {
			return a.h == b.h && bytes.Equal(a.payload, b.payload)
		}) || whole.text.String() != parts.text.String() {
			t.Fatalf("split at %d changed the result", cut)
		}
	})
}
