package seriallink

import "bytes"

// maxInjected bounds the console text the parser will cut out of one frame.
// A kernel line is far shorter; a larger intrusion costs a retransmission.
const maxInjected = 2048

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
	cand    []byte // bytes after 0xFE
	hdr     bool   // cand has its two length bytes
	want    int    // length cand must have, from its length bytes; 0 if invalid
	tried   bool   // cand was checked at exactly want bytes

	scratch, joined []byte
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
			for i < len(b) && b[i] != delim && b[i] != startByte {
				i++
			}
			p.text(b[:i])
			if i == len(b) {
				return
			}
			if b[i] == startByte {
				p.inFrame, p.cand, p.hdr, p.want, p.tried = true, p.cand[:0], false, 0, false
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
			p.hdr, p.want = true, frameLen(p.cand[0], p.cand[1])
		}
		if !p.tried && p.want != 0 && len(p.cand) == p.want {
			p.tried = true
			if p.try(p.cand, 0, 0) {
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
		p.reject(c)
		return
	}
	if p.want != 0 && n > p.want {
		k := n - p.want
		if k <= maxInjected {
			for q := 2; q+k <= n; q++ {
				if p.try(c, q, k) {
					return
				}
			}
		}
	}
	// The text may also sit before or between the two length bytes.
	for k := 1; k <= maxInjected && k+2 <= n; k++ {
		if frameLen(c[k], c[k+1]) == n-k && p.try(c, 0, k) {
			return
		}
		if k+1 < n && frameLen(c[0], c[k+1]) == n-k && p.try(c, 1, k) {
			return
		}
	}
	p.reject(c)
}

// try decodes c without c[q:q+k]; on success it emits the cut-out text and
// the frame.
func (p *parser) try(c []byte, q, k int) bool {
	r := c
	if k > 0 {
		p.joined = append(append(p.joined[:0], c[:q]...), c[q+k:]...)
		r = p.joined
	}
	h, payload, body, ok := decodeFrame(p.scratch, r)
	p.scratch = body[:0]
	if !ok {
		return false
	}
	if k > 0 {
		// When the text's edge bytes equal the frame bytes beside it, several
		// cuts leave the same frame; prefer the one that ends a line.
		s := q
		if c[q+k-1] != '\n' {
			for i := q; i+k < len(c) && c[i] == c[i+k]; i++ {
				if c[i+k] == '\n' {
					s = i + 1
					break
				}
			}
		}
		p.text(c[s : s+k])
		p.stats.recovered.Add(1)
	}
	p.onFrame(h, payload)
	return true
}

// reject drops a candidate that is no frame. If its first byte cannot be a
// length byte, the 0xFE was console text (Latin-1 "þ", say) and all of it
// goes out as text.
func (p *parser) reject(c []byte) {
	if len(c) > 0 && c[0]&0x80 == 0 {
		p.text([]byte{startByte})
		p.text(c)
		return
	}
	p.stats.corrupt.Add(1)
}
