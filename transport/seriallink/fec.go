package seriallink

import (
	"encoding/binary"
	"hash/crc32"
	"math"
)

// Framing 2 protects session frames with Reed-Solomon codes so that a
// corrupted byte costs parity instead of a retransmitted frame. On the line:
//
//	0x00 0xFF L1 L2 P P P B1 ... Bn 0x00
//
// P (three copies, majority wins) is 0x80|p, p the parity bytes per block
// (even, 0..64). The content rate | BODY (as in framing 1, with the CRC
// covering rate too) is cut into pieces of 252-p bytes; each gets p
// Reed-Solomon parity bytes, and the codeword goes on the line as
// M M (codeword XOR M), M a non-zero byte value the codeword lacks, so the
// block holds no 0x00. A block is 254 bytes (the last one shorter); a
// corrupted byte stays one byte error in its block, and a corrupted copy of
// M is outvoted by trying both.
// L1 L2 encode E, the bytes from the first P to the end, as in framing 1.
// rate is the byte error rate the frame's sender sees on its incoming line
// (0: none; else 2^(-rate/16)); the peer picks p from it.
const (
	fecStart     = 0xFF // starts a framing-2 frame; never valid in UTF-8 text
	fecBlockWire = 254  // a full block on the line: two mask bytes and a codeword
	fecCodeword  = fecBlockWire - 2
	fecHdr       = 3 // the copies of P
	// maxFECContent is the longest content: rate byte and the longest body.
	maxFECContent = 1 + headerLen + MaxPayloadLimit + crcLen
	// maxFECEncoded bounds E: the longest content at the most parity.
	maxFECEncoded = fecHdr + maxFECContent +
		(maxFECContent+fecCodeword-maxParity-1)/(fecCodeword-maxParity)*(maxParity+2)
)

// fecLen returns the length a framing-2 candidate must have (length bytes
// plus E) given its length bytes, or 0 if they are not a valid length.
func fecLen(l1, l2 byte) int {
	if l1&0x80 == 0 || l2&0x80 == 0 {
		return 0
	}
	e := int(l1&0x7F)<<7 | int(l2&0x7F)
	if e < fecHdr+1+headerLen+crcLen+1 || e > maxFECEncoded {
		return 0
	}
	return 2 + e
}

// appendFEC appends the framing-2 wire form of one frame with parity bytes
// per block (even, at most maxParity) and the reported error rate.
func (fb *frameBuf) appendFEC(dst []byte, h header, payload []byte, parity int, rate byte) []byte {
	b := appendBody(append(fb.body[:0], rate), 0, h, payload)
	fb.body = b

	dst = append(dst, delim, fecStart, 0, 0)
	lenAt := len(dst) - 2
	p := 0x80 | byte(parity)
	dst = append(dst, p, p, p)
	for d := fecCodeword - parity; len(b) > 0; {
		n := min(d, len(b))
		fb.cw = rsEncode(append(fb.cw[:0], b[:n]...), b[:n], parity)
		dst = appendMasked(dst, fb.cw)
		b = b[n:]
	}
	e := len(dst) - lenAt - 2
	dst[lenAt], dst[lenAt+1] = 0x80|byte(e>>7), 0x80|byte(e&0x7F)
	return append(dst, delim)
}

// fecDecoder decodes framing-2 candidates; it keeps its buffers.
type fecDecoder struct {
	rs            rsScratch
	cw, out       []byte
	lastCorrected int // bytes decode repaired in the last block
}

// parity returns the parity per block from the three copies, or -1.
func fecParity(c []byte) int {
	p := c[0]
	if p != c[1] && p != c[2] {
		p = c[1]
		if p != c[2] {
			return -1
		}
	}
	if p&0x80 == 0 || int(p&0x7F) > maxParity || p&1 != 0 {
		return -1
	}
	return int(p & 0x7F)
}

// appendMasked appends a codeword of at most fecCodeword bytes as M M
// (cw XOR M), M the least non-zero value cw lacks.
func appendMasked(dst, cw []byte) []byte {
	var seen [256]bool
	for _, c := range cw {
		seen[c] = true
	}
	m := byte(1)
	for seen[m] {
		m++
	}
	dst = append(dst, m, m)
	for _, c := range cw {
		dst = append(dst, c^m)
	}
	return dst
}

// block decodes one block's wire bytes and appends its data to out. If the
// mask copies differ, both are tried and the one that needs fewer
// corrections wins (a wrong mask garbles the whole block); strict (after
// cutting text out) requires them to agree.
func (d *fecDecoder) block(out, w []byte, parity int, strict bool) (_ []byte, corrected int, ok bool) {
	if len(w) < parity+3 || len(w) > fecBlockWire || strict && w[0] != w[1] {
		return out, 0, false
	}
	best, bestN := -1, 0
	for i, m := range w[:2] {
		if i == 1 && m == w[0] {
			break
		}
		if n, ok := d.unmask(w, m, parity); ok && (best < 0 || n < bestN) {
			best, bestN = i, n
		}
	}
	if best < 0 {
		return out, 0, false
	}
	if best == 0 && w[1] != w[0] {
		d.unmask(w, w[0], parity) // d.cw holds the other attempt
	}
	return append(out, d.cw[:len(w)-2-parity]...), bestN, true
}

// unmask decodes w's codeword with mask m into d.cw.
func (d *fecDecoder) unmask(w []byte, m byte, parity int) (int, bool) {
	cw := d.cw[:0]
	for _, c := range w[2:] {
		cw = append(cw, c^m)
	}
	d.cw = cw
	return d.rs.rsDecode(cw, parity)
}

// fecBlocks calls f with the wire range of each block of a framing-2
// candidate (the bytes after 0xFF) n bytes long, until f returns false.
func fecBlocks(n int, f func(start, end int) bool) {
	for s := 2 + fecHdr; s < n; s += fecBlockWire {
		if !f(s, min(s+fecBlockWire, n)) {
			return
		}
	}
}

// decode checks a framing-2 candidate (the bytes after 0xFF) and returns
// its content, aliasing d's buffer, and the bytes it corrected. strict, for
// a candidate text was cut out of, takes no majority vote or mask choice:
// those could make a cut a few bytes off the text look right.
func (d *fecDecoder) decode(c []byte, strict bool) (content []byte, corrected int, ok bool) {
	if len(c) < 2+fecHdr || fecLen(c[0], c[1]) != len(c) {
		return nil, 0, false
	}
	if strict && (c[2] != c[3] || c[3] != c[4]) {
		return nil, 0, false
	}
	parity := fecParity(c[2 : 2+fecHdr])
	if parity < 0 {
		return nil, 0, false
	}
	out := d.out[:0]
	ok = true
	fecBlocks(len(c), func(s, e int) bool {
		out, d.lastCorrected, ok = d.block(out, c[s:e], parity, strict)
		corrected += d.lastCorrected
		return ok
	})
	d.out = out[:0]
	if !ok || len(out) > maxFECContent {
		return nil, corrected, false
	}
	return out, corrected, true
}

// suspectRange returns the wire range of c (a candidate after 0xFF, maybe
// longer than the want bytes its length announces) where text written into
// the frame must start: the first bad block (one that fails on its own or
// needs all the corrections its parity allows) and the one before it if
// that one needed repair (its parity may have mended a short shift as
// errors), or, if none is bad, the last block that needed repair. ok is false if no block
// is suspect or the parity copies disagree. With more than 2 parity bytes
// the range spans at most two blocks, which bounds the work a cut search
// does.
func (d *fecDecoder) suspectRange(c []byte, want int) (lo, hi int, ok bool) {
	parity := fecParity(c[2 : 2+fecHdr])
	if parity < 0 {
		return 0, 0, false
	}
	if parity <= 2 {
		// Almost any shifted block passes as a codeword one correction
		// away: no block tells where the text is.
		return 2 + fecHdr, want, true
	}
	repaired := -1 // the previous block, if it needed repair
	fecBlocks(want, func(s, e int) bool {
		var n int
		var good bool
		d.out, n, good = d.block(d.out[:0], c[s:e], parity, false)
		// A shifted block may also pass as a codeword, with small parity
		// often: it then needs all parity/2 corrections it can make.
		bad := !good || n >= max(parity/2, 1)
		switch {
		case bad:
			lo, hi, ok = s, e, true
			if repaired >= 0 {
				lo = repaired
			}
		case n > 0:
			lo, hi, ok = s, e, true
		}
		repaired = -1
		if n > 0 {
			repaired = s
		}
		return !bad
	})
	return lo, hi, ok
}

// appendBody appends header|payload|crc32c, a frame's BODY, the CRC
// covering b from crcFrom on (in framing 2 the rate byte too).
func appendBody(b []byte, crcFrom int, h header, payload []byte) []byte {
	b = append(b, h.typ, h.flags)
	b = binary.BigEndian.AppendUint16(b, h.tag)
	b = binary.BigEndian.AppendUint16(b, h.seq)
	b = binary.BigEndian.AppendUint16(b, h.ack)
	b = append(b, h.wnd)
	b = append(b, payload...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[crcFrom:], castagnoli))
}

// Error rate reports: rate byte r stands for 2^(-r/16) errors per byte.
const rateScale = 16

func encodeRate(r float64) byte {
	if r <= 0 {
		return 0
	}
	return byte(min(max(math.Round(-rateScale*math.Log2(r)), 1), 255))
}

func decodeRate(b byte) float64 {
	if b == 0 {
		return 0
	}
	return math.Exp2(-float64(b) / rateScale)
}

// parityFor picks the parity per block for a line with byte error rate r:
// the least that leaves a full block uncorrectable with probability below
// 1e-4, assuming 1.5 times the rate (the estimate lags and is noisy).
func parityFor(r float64) int {
	if r <= 0 {
		return 0
	}
	lambda := 1.5 * r * fecBlockWire
	// Poisson tail P(X > t), summed from the head.
	term := math.Exp(-lambda)
	cdf := term
	for t := 0; 2*t < maxParity; t++ {
		if 1-cdf < 1e-4 && t > 0 {
			return 2 * t
		}
		term *= lambda / float64(t+1)
		cdf += term
	}
	return maxParity
}

// rateMeter estimates the byte error rate of the incoming line from what
// the decoder corrected and what it failed on, over roughly the last 64 KiB.
type rateMeter struct{ errs, bytes float64 }

func (m *rateMeter) add(n int, errs float64) {
	d := math.Exp(-float64(n) / 65536)
	m.errs = m.errs*d + errs
	m.bytes = m.bytes*d + float64(n)
}

// report is the rate byte to send: none until an error was seen lately.
func (m *rateMeter) report() byte {
	if m.errs < 0.5 || m.bytes == 0 {
		return 0
	}
	return encodeRate(m.errs / m.bytes)
}
