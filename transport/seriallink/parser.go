package seriallink

import (
	"bytes"
	"slices"
)

// maxInjected bounds the console text the parser will cut out of one frame.
// A kernel line is far shorter; a larger intrusion costs a retransmission.
const maxInjected = 2048

// maxCuts bounds the cuts the parser decodes whole in one framing-2
// candidate: the true cut and those up to parity/2 bytes off, which parity
// mends.
const maxCuts = maxParity + 8

// maxCandidate bounds a frame candidate; beyond it the parser resyncs.
const maxCandidate = maxWire + maxInjected

// parser splits the byte stream from the line into frames and console
// text. It runs in one goroutine; the slices it hands out are only valid
// during the callback.
type parser struct {
	onFrame func(h header, payload []byte)
	onText  func(text []byte) // nil discards text
	stats   *counters

	inFrame bool
	fec     bool   // the candidate started with 0xFF: framing 2
	cand    []byte // bytes after 0xFE or 0xFF
	hdr     bool   // cand has its two length bytes
	want    int    // length cand must have, from its length bytes; 0 if invalid
	tried   bool   // cand was checked at exactly want bytes
	// deferred: cand decoded at want bytes but its parity repaired its last
	// block, which text written into the frame's tail also looks like; it
	// is taken at the closing 0x00 unless cutting text out explains it.
	deferred bool

	scratch, joined []byte
	dec             fecDecoder
	meter           rateMeter
}

func newParser(stats *counters, onFrame func(header, []byte), onText func([]byte)) *parser {
	return &parser{stats: stats, onFrame: onFrame, onText: onText}
}

func (p *parser) text(b []byte) {
	if len(b) > 0 && p.onText != nil {
		p.onText(b)
	}
}

// feed consumes bytes read from the line.
func (p *parser) feed(b []byte) {
	for len(b) > 0 {
		if !p.inFrame {
			i := 0
			for i < len(b) && b[i] != delim && b[i] != startByte && b[i] != fecStart {
				i++
			}
			p.text(b[:i])
			if i == len(b) {
				return
			}
			if b[i] != delim {
				p.inFrame, p.cand, p.hdr, p.want, p.tried, p.deferred = true, p.cand[:0], false, 0, false, false
				p.fec = b[i] == fecStart
			}
			b = b[i+1:]
			continue
		}
		end := bytes.IndexByte(b, delim)
		if end < 0 {
			end = len(b)
		}
		// Stop at the expected length so a frame whose closing 0x00 was
		// lost is still found, and what follows it is text again.
		n := end
		switch {
		case !p.hdr:
			n = min(n, 2-len(p.cand))
		case p.want > len(p.cand):
			n = min(n, p.want-len(p.cand))
		}
		p.cand = append(p.cand, b[:n]...)
		b = b[n:]
		if !p.hdr && len(p.cand) == 2 {
			p.hdr, p.want = true, p.lenOf(p.cand[0], p.cand[1])
		}
		if !p.tried && p.want != 0 && len(p.cand) == p.want {
			p.tried = true
			if p.try(p.cand, 0, 0, false) {
				p.inFrame = false
				continue
			}
		}
		if len(p.cand) > maxCandidate {
			p.inFrame = false
			p.reject(p.cand)
			continue
		}
		if len(b) > 0 && b[0] == delim {
			b = b[1:]
			p.finish()
		}
	}
}

// finish handles a candidate ended by 0x00 that was not already a frame at
// its expected length. If it is longer, console text may have been written
// into the middle of the frame: cut out each window of the excess length
// and keep the one that leaves a valid frame.
func (p *parser) finish() {
	p.inFrame = false
	c := p.cand
	n := len(c)
	if p.want != 0 && n == p.want { // already checked at this length
		if !p.deferred || !p.try(c, 0, 0, true) {
			p.reject(c)
		}
		return
	}
	if p.want != 0 && n > p.want {
		k := n - p.want
		if k <= maxInjected && p.cut(c, k) {
			return
		}
		if p.deferred && p.try(c[:p.want], 0, 0, true) {
			p.text(c[p.want:])
			return
		}
	}
	// The text may also sit before or between the two length bytes.
	for k := 1; k <= maxInjected && k+2 <= n; k++ {
		if p.lenOf(c[k], c[k+1]) == n-k && p.try(c, 0, k, true) {
			return
		}
		if k+1 < n && p.lenOf(c[0], c[k+1]) == n-k && p.try(c, 1, k, true) {
			return
		}
	}
	p.reject(c)
}

// cut looks for k bytes of text inside c after the length bytes. With
// parity, the text starts between the first block that needed repair and
// the end of the first that fails on its own (parity may hide a short
// shift, or even mistake a shifted block for a codeword). Cuts there are
// checked on their block alone first, and of those that leave a frame the
// one that needs the fewest corrections wins: parity could also mend a cut
// a few bytes off the text.
func (p *parser) cut(c []byte, k int) bool {
	hi := len(c) - k
	// Without parity (or with the text in the parity bytes) a block has no
	// check of its own: try every cut, as in framing 1.
	if !p.fec || fecParity(c[2:2+fecHdr]) <= 0 {
		for q := 2; q <= hi; q++ {
			if p.try(c, q, k, true) {
				return true
			}
		}
		return false
	}
	lo, hi2, ok := p.dec.suspectRange(c, p.want)
	if !ok {
		return false // no block shows a shift
	}
	type cut struct{ q, n int }
	var cands []cut // cuts whose own block decodes, and its corrections
	if lo == 2+fecHdr {
		lo = 2 // the text may sit among the parity copies
	}
	for q := lo; q <= min(hi, hi2); q++ {
		if q < 2+fecHdr {
			cands = append(cands, cut{q, 0})
			continue
		}
		bs := 2 + fecHdr + (q-2-fecHdr)/fecBlockWire*fecBlockWire
		if n, ok := p.blockAfterCut(c, q, k, bs, min(bs+fecBlockWire, p.want)); ok {
			cands = append(cands, cut{q, n})
		}
	}
	// Small parity lets many wrong cuts pass as miscorrected blocks; those
	// need all the corrections the parity allows, the true cut fewer.
	// Then rank by the corrections the whole frame needs: a cut at a block
	// boundary after the text can leave its own block clean while the
	// block before mends the text as errors.
	slices.SortStableFunc(cands, func(a, b cut) int { return a.n - b.n })
	best, bestN := -1, 0
	for _, cd := range cands[:min(len(cands), maxCuts)] {
		r := append(append(p.joined[:0], c[:cd.q]...), c[cd.q+k:]...)
		p.joined = r
		if _, _, n, ok := p.decode(r, true); ok && (best < 0 || n < bestN) {
			best, bestN = cd.q, n
		}
	}
	return best >= 0 && p.try(c, best, k, true)
}

// blockAfterCut decodes the block at [s,e) of the frame once c[q:q+k] is
// cut out (s <= q <= e) and returns the bytes it corrected.
func (p *parser) blockAfterCut(c []byte, q, k, s, e int) (int, bool) {
	if q < s || q > e {
		return 0, false
	}
	parity := fecParity(c[2 : 2+fecHdr])
	if parity < 0 || e+k > len(c) {
		return 0, false
	}
	w := append(append(p.joined[:0], c[s:q]...), c[q+k:e+k]...)
	p.joined = w
	var n int
	var ok bool
	p.dec.out, n, ok = p.dec.block(p.dec.out[:0], w, parity, true)
	return n, ok
}

// lenOf returns the candidate length its length bytes announce, 0 if none.
func (p *parser) lenOf(l1, l2 byte) int {
	if p.fec {
		return fecLen(l1, l2)
	}
	return frameLen(l1, l2)
}

// decode checks a whole candidate of either framing, strictly after a cut
// (see fecDecoder.decode).
func (p *parser) decode(r []byte, strict bool) (h header, payload []byte, corrected int, ok bool) {
	if !p.fec {
		var body []byte
		h, payload, body, ok = decodeFrame(p.scratch, r)
		p.scratch = body[:0]
		return h, payload, 0, ok
	}
	content, corrected, ok := p.dec.decode(r, strict)
	if !ok || len(content) < 1 {
		return h, nil, corrected, false
	}
	h, payload, ok = parseBody(content, 1)
	h.fec, h.rate = true, content[0]
	return h, payload, corrected, ok
}

// try decodes c without c[q:q+k]; on success it emits the cut-out text and
// the frame. Unless final, a frame whose last block was repaired is
// deferred instead.
func (p *parser) try(c []byte, q, k int, final bool) bool {
	r := c
	if k > 0 {
		p.joined = append(append(p.joined[:0], c[:q]...), c[q+k:]...)
		r = p.joined
	}
	h, payload, corrected, ok := p.decode(r, k > 0)
	if !ok {
		return false
	}
	if !final && p.dec.lastCorrected > 0 {
		p.deferred = true
		return false
	}
	p.errors(len(r), float64(corrected))
	p.stats.corrected.Add(uint64(corrected))
	if h.fec {
		p.stats.fecIn.Add(1)
	}
	if k > 0 {
		s := lineCut(c, q, k)
		p.text(c[s : s+k])
		p.stats.recovered.Add(1)
	}
	p.onFrame(h, payload)
	return true
}

// lineCut is where the k bytes of text cut out of c at q start, among the
// cuts that leave the same frame: when the text's edge bytes equal the
// frame bytes beside it (a line starting with "[" cut out just before a
// frame byte "["), the cuts from a to b all do, and the one whose text
// ends a line, nearest q, is the text that was written.
func lineCut(c []byte, q, k int) int {
	if c[q+k-1] == '\n' {
		return q
	}
	a, b := q, q
	for a > 0 && c[a-1] == c[a-1+k] {
		a--
	}
	for b+k < len(c) && c[b] == c[b+k] {
		b++
	}
	for d := 1; q-d >= a || q+d <= b; d++ {
		if q-d >= a && c[q-d+k-1] == '\n' {
			return q - d
		}
		if q+d <= b && c[q+d+k-1] == '\n' {
			return q + d
		}
	}
	return q
}

// reject drops a candidate that is no frame. If its first byte cannot be a
// length byte, the 0xFE was console text (Latin-1 "þ", say) and all of it
// goes out as text.
func (p *parser) reject(c []byte) {
	if len(c) > 0 && c[0]&0x80 == 0 {
		start := byte(startByte)
		if p.fec {
			start = fecStart
		}
		p.text([]byte{start})
		p.text(c)
		return
	}
	p.stats.corrupt.Add(1)
	// At least one error; a framing-2 frame more than its parity mends.
	errs := 1.0
	if p.fec && len(c) >= 2+fecHdr {
		errs = float64(max(fecParity(c[2:2+fecHdr]), 0)/2 + 1)
	}
	p.errors(len(c), errs)
}

// errors feeds the error rate meter and publishes its report.
func (p *parser) errors(n int, errs float64) {
	p.meter.add(n, errs)
	p.stats.rxRate.Store(uint32(p.meter.report()))
}
