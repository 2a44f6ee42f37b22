package seriallink

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

func TestRSCorrectsUpToHalfTheParity(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var sc rsScratch
	for _, p := range []int{2, 4, 10, 32, maxParity} {
		for _, n := range []int{1, 17, 180, 255 - p} {
			for trial := range 50 {
				msg := make([]byte, n)
				for i := range msg {
					msg[i] = byte(rng.IntN(256))
				}
				cw := rsEncode(bytes.Clone(msg), msg, p)
				s := make([]byte, p)
				if !syndromes(s, cw) {
					t.Fatalf("p=%d n=%d: encoded codeword has non-zero syndromes", p, n)
				}
				errs := trial % (p/2 + 1)
				bad := bytes.Clone(cw)
				for _, j := range rng.Perm(len(cw))[:errs] {
					bad[j] ^= byte(1 + rng.IntN(255))
				}
				got, ok := sc.rsDecode(bad, p)
				if !ok || got != errs || !bytes.Equal(bad, cw) {
					t.Fatalf("p=%d n=%d errs=%d: corrected %d ok=%v, equal=%v", p, n, errs, got, ok, bytes.Equal(bad, cw))
				}
			}
		}
	}
}

// Beyond the capacity the decoder fails or miscorrects (the frame CRC
// catches that), but it never panics and never claims more than p/2.
func TestRSTooManyErrors(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var sc rsScratch
	failed := 0
	for trial := range 2000 {
		p := 2 * (1 + trial%8)
		cw := rsEncode(make([]byte, 100), make([]byte, 100), p)
		for _, j := range rng.Perm(len(cw))[:p/2+1+trial%5] {
			cw[j] ^= byte(1 + rng.IntN(255))
		}
		n, ok := sc.rsDecode(cw, p)
		if !ok {
			failed++
		} else if n > p/2 {
			t.Fatalf("claims %d corrections with %d parity bytes", n, p)
		}
	}
	if failed < 1000 {
		t.Errorf("only %d of 2000 overloaded codewords were refused", failed)
	}
}
