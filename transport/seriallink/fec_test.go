package seriallink

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
)

func fecWire(h header, payload []byte, parity int, rate byte) []byte {
	var fb frameBuf
	return fb.appendFEC(nil, h, payload, parity, rate)
}

// fecWant is the header a framing-2 frame decodes to.
func fecWant(h header, rate byte) header {
	h.fec, h.rate = true, rate
	return h
}

func TestFECEncoding(t *testing.T) {
	h := header{typ: typeData, flags: flagMore | flagBinary, tag: 0xBEEF, seq: 65535, ack: 7, wnd: 255}
	payloads := testPayloads()
	payloads["max"] = bytes.Repeat([]byte{0xFE}, MaxPayloadLimit)
	for _, parity := range []int{0, 2, 10, maxParity} {
		for name, pl := range payloads {
			w := fecWire(h, pl, parity, 159)
			if w[0] != delim || w[1] != fecStart || w[len(w)-1] != delim {
				t.Fatalf("%s/%d: frame not delimited: % x...", name, parity, w[:4])
			}
			if bytes.IndexByte(w[2:len(w)-1], delim) >= 0 {
				t.Fatalf("%s/%d: 0x00 inside the frame", name, parity)
			}
			if w[2] == startByte || w[2] == fecStart || fecLen(w[2], w[3]) != len(w)-3 {
				t.Fatalf("%s/%d: bad length bytes % x for %d", name, parity, w[2:4], len(w))
			}
			if len(w) > maxWire {
				t.Fatalf("%s/%d: %d bytes exceeds maxWire %d", name, parity, len(w), maxWire)
			}
			s := newSink()
			s.p.feed(w)
			if len(s.frames) != 1 || s.frames[0].h != fecWant(h, 159) || !bytes.Equal(s.frames[0].payload, pl) {
				t.Fatalf("%s/%d: decoded %+v", name, parity, s.frames)
			}
		}
	}
}

// Up to parity/2 corrupted bytes in every block, and one bad copy of the
// parity byte, are repaired without a retransmission.
func TestFECCorrectsBlocks(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	h := header{typ: typeData, tag: 0x1234, seq: 42, ack: 7, wnd: 16}
	pl := testPayloads()["binary"]
	for _, parity := range []int{2, 10, 32} {
		for trial := range 20 {
			w := fecWire(h, pl, parity, 0)
			w[4+trial%3] ^= 0x01 // one copy of P
			errs := 0
			fecBlocks(len(w)-3, func(s, e int) bool {
				// Offsets in w are those of the candidate plus 2; one
				// mask copy may go too, or a byte become 0x00... not here:
				// a 0x00 ends the candidate.
				data := rng.Perm(e - s)
				if data[0] < 2 && data[1] < 2 { // not both mask copies
					data = data[1:]
				}
				for _, j := range data[:min(parity/2, len(data))] {
					c := w[2+s+j] ^ byte(1+rng.IntN(255))
					if c == 0 {
						c = 0x55
					}
					w[2+s+j] = c
					if j >= 2 { // a mask copy costs no correction
						errs++
					}
				}
				return true
			})
			s := newSink()
			s.p.feed(w)
			if len(s.frames) != 1 || !bytes.Equal(s.frames[0].payload, pl) {
				t.Fatalf("parity %d trial %d: %d errors not repaired", parity, trial, errs)
			}
			if c := s.stats.corrected.Load(); c != uint64(errs) {
				t.Fatalf("parity %d: corrected %d of %d", parity, c, errs)
			}
		}
	}
}

// A console line written at any point of a framing-2 frame is cut out
// again, with and without parity, and with a repaired error elsewhere.
func TestFECTextInsideFrameEveryPosition(t *testing.T) {
	const line = "[   12.345678] usb 1-1: new high-speed USB device number 2\r\n"
	next := fecWire(header{typ: typeAck, tag: 3, ack: 4}, nil, 0, 0)
	pl := testPayloads()["binary"][:400] // two blocks
	h := header{typ: typeData, tag: 0x1234, seq: 42, ack: 7, wnd: 16}
	for _, parity := range []int{0, 2, 4, 10} {
		w := fecWire(h, pl, parity, 7)
		step := 1
		if parity == 2 || parity == 4 || testing.Short() {
			step = 7 // the search is slow; the other parities see every position
		}
		for i := 0; i <= len(w); i += step {
			in := join(w[:i], []byte(line), w[i:], next)
			if parity > 0 && i%2 == 0 {
				// An error the parity repairs, in another block than the
				// text (in the same one, small parity cannot tell the
				// true cut from a wrong one it mends).
				at := 2 + fecHdr + 2 + 10
				if i < 2+2+fecHdr+fecBlockWire {
					at += fecBlockWire
				}
				in[at+len(line)*bool2int(at > i)] ^= 0x10
			}
			s := newSink()
			s.p.feed(in)
			s.wantFrameThenAck(t, fmt.Sprintf("parity %d, text at %d", parity, i), fecWant(h, 7), pl, line)
		}
	}
}

// A Latin-1 "ÿ" in console text is text, not a frame.
func TestFECStartInText(t *testing.T) {
	s := newSink()
	s.p.feed([]byte("caf\xff ok\n"))
	s.p.feed([]byte{0})
	if s.text.String() != "caf\xff ok\n" || len(s.frames) != 0 {
		t.Fatalf("text %q, frames %d", s.text.String(), len(s.frames))
	}
}

func TestParityAdapts(t *testing.T) {
	if p := parityFor(0); p != 0 {
		t.Errorf("clean line: parity %d", p)
	}
	prev := 0
	for _, r := range []float64{1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1} {
		p := parityFor(decodeRate(encodeRate(r)))
		if p < prev || p%2 != 0 || p > maxParity || p == 0 {
			t.Errorf("rate %g: parity %d after %d", r, p, prev)
		}
		prev = p
	}
	if p := parityFor(1e-3); p < 6 || p > 16 {
		t.Errorf("0.1%% errors: parity %d", p)
	}
	var m rateMeter
	if m.report() != 0 {
		t.Error("a fresh meter reports errors")
	}
	for range 100 {
		m.add(1000, 1)
	}
	if r := decodeRate(m.report()); r < 0.0008 || r > 0.0012 {
		t.Errorf("meter: %g, want 0.001", r)
	}
}

// FuzzFECDecode feeds arbitrary bytes as a framing-2 candidate: the parser
// never panics, and what it accepts decodes to a body within the limits.
func FuzzFECDecode(f *testing.F) {
	h := header{typ: typeData, tag: 1, seq: 2}
	for _, parity := range []int{0, 4, maxParity} {
		w := fecWire(h, []byte("seed payload"), parity, 3)
		f.Add(w)
		f.Add(append(w[:len(w)/2:len(w)/2], append([]byte("text\n"), w[len(w)/2:]...)...))
	}
	f.Add([]byte{0xFF, 0xAB, 0xFF, 0xC0, 0xC0, 0xC0})
	f.Fuzz(func(t *testing.T, in []byte) {
		var d fecDecoder
		if len(in) > 1 {
			if content, n, ok := d.decode(in[1:], false); ok && (len(content) > maxFECContent || n > maxParity/2*len(in)) {
				t.Fatalf("accepted %d content bytes, %d corrections", len(content), n)
			}
		}
		s := newSink()
		s.p.feed(in)
		s.p.feed([]byte{0})
		for _, fr := range s.frames {
			if len(fr.payload) > MaxPayloadLimit {
				t.Fatalf("payload of %d bytes", len(fr.payload))
			}
		}
		if cap(s.p.cand) > maxCandidate+len(in) {
			t.Fatalf("candidate buffer grew to %d", cap(s.p.cand))
		}
	})
}

func bool2int(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Text cut out of a frame whose first byte equals the frame byte right
// after it (a kernel line's "[" before a frame byte "[") leaves the same
// frame cut one byte later; the text that comes out is still the line as
// written, not shifted by a byte.
func TestTextEdgeLikeFrameByte(t *testing.T) {
	next := wire(header{typ: typeAck, tag: 3, ack: 4}, nil)
	pl := testPayloads()["binary"][:400]
	h := header{typ: typeData, tag: 0x1234, seq: 42, ack: 7, wnd: 16}
	for _, parity := range []int{-1, 0, 4} { // -1: framing 1
		w, want := wire(h, pl), h
		if parity >= 0 {
			w, want = fecWire(h, pl, parity, 7), fecWant(h, 7)
		}
		tested := 0
		// From the first block (text among the header's bytes costs the
		// frame, a retransmission, not the line) to before the frame's last
		// byte: text there whose first byte is that byte makes a frame
		// complete at its length, and the byte goes out after the text.
		for i := 1 + 2 + fecHdr; i < len(w)-2; i++ {
			if w[i] == delim || w[i] == startByte || w[i] == fecStart || w[i] == '\n' {
				continue
			}
			line := string(w[i]) + "   1.000000] edge\r\n"
			s := newSink()
			s.p.feed(join(w[:i], []byte(line), w[i:], next))
			s.wantFrameThenAck(t, fmt.Sprintf("parity %d, text at %d", parity, i), want, pl, line)
			tested++
		}
		if tested < 100 {
			t.Fatalf("parity %d: only %d positions", parity, tested)
		}
	}
}
