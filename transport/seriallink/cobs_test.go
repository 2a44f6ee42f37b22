package seriallink

import (
	"bytes"
	"testing"
)

func TestCOBSRoundTrip(t *testing.T) {
	run := func(n int, fill func(i int) byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = fill(i)
		}
		return b
	}
	cases := map[string][]byte{
		"empty":        {},
		"zero":         {0},
		"zeros":        {0, 0, 0},
		"mixed":        {1, 0, 2, 3, 0, 0, 4},
		"trailing 0":   {5, 6, 0},
		"253 nonzero":  run(253, func(int) byte { return 7 }),
		"254 nonzero":  run(254, func(int) byte { return 7 }),
		"255 nonzero":  run(255, func(int) byte { return 7 }),
		"254 then 0":   append(run(254, func(int) byte { return 9 }), 0),
		"long counter": run(5000, func(i int) byte { return byte(i) }),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			enc := cobsEncode(nil, in)
			if bytes.IndexByte(enc, 0) >= 0 {
				t.Fatalf("encoding contains 0x00: % x", enc)
			}
			if len(enc) > cobsMaxLen(len(in)) {
				t.Fatalf("encoding is %d bytes, bound %d", len(enc), cobsMaxLen(len(in)))
			}
			dec, err := cobsDecode(nil, enc)
			if err != nil || !bytes.Equal(dec, in) {
				t.Fatalf("decode = % x, %v; want % x", dec, err, in)
			}
		})
	}
}

func TestCOBSDecodeRejects(t *testing.T) {
	for name, in := range map[string][]byte{
		"zero code":    {0},
		"zero in run":  {3, 1, 0},
		"run too long": {5, 1, 2},
	} {
		if _, err := cobsDecode(nil, in); err == nil {
			t.Errorf("%s: decoded % x", name, in)
		}
	}
}

func FuzzCOBS(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0})
	f.Add(bytes.Repeat([]byte{1}, 600))
	f.Fuzz(func(t *testing.T, in []byte) {
		enc := cobsEncode(nil, in)
		if bytes.IndexByte(enc, 0) >= 0 || len(enc) > cobsMaxLen(len(in)) {
			t.Fatalf("bad encoding of % x: % x", in, enc)
		}
		dec, err := cobsDecode(nil, enc)
		if err != nil || !bytes.Equal(dec, in) {
			t.Fatalf("round trip of % x: % x, %v", in, dec, err)
		}
		cobsDecode(nil, in) // arbitrary input must not panic
	})
}
