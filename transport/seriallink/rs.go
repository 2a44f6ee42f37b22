package seriallink

// Reed-Solomon over GF(2^8) (polynomial 0x11D, generator 2), correcting
// byte errors at unknown positions: with p parity bytes a codeword of up to
// 255 bytes survives up to p/2 corrupted bytes. The generator's roots are
// 2^0 .. 2^(p-1). A codeword's first byte is the coefficient of the highest
// power.

const (
	gfPoly = 0x11D
	// maxParity bounds the parity bytes per codeword.
	maxParity = 64
)

var (
	gfExp [512]byte
	gfLog [256]byte
	// rsGen[p] is the generator polynomial for p parity bytes, highest
	// power first, without its leading 1.
	rsGen [maxParity + 1][]byte
)

func init() {
	x := 1
	for i := range 255 {
		gfExp[i] = byte(x)
		gfLog[x] = byte(i)
		x <<= 1
		if x&0x100 != 0 {
			x ^= gfPoly
		}
	}
	for i := 255; i < len(gfExp); i++ {
		gfExp[i] = gfExp[i-255]
	}
	g := []byte{1}
	for p := 1; p <= maxParity; p++ {
		// g *= (x - 2^(p-1))
		r := gfExp[p-1]
		n := make([]byte, len(g)+1)
		for i, c := range g {
			n[i] ^= c
			n[i+1] ^= gfMul(c, r)
		}
		g = n
		rsGen[p] = g[1:]
	}
}

func gfMul(a, b byte) byte {
	if a == 0 || b == 0 {
		return 0
	}
	return gfExp[int(gfLog[a])+int(gfLog[b])]
}

func gfInv(a byte) byte { return gfExp[255-int(gfLog[a])] }

// rsEncode appends the p parity bytes of msg to dst.
func rsEncode(dst, msg []byte, p int) []byte {
	if p == 0 {
		return dst
	}
	gen := rsGen[p]
	at := len(dst)
	dst = append(dst, make([]byte, p)...)
	par := dst[at:]
	for _, m := range msg {
		fb := m ^ par[0]
		copy(par, par[1:])
		par[p-1] = 0
		if fb != 0 {
			lf := int(gfLog[fb])
			for i, g := range gen {
				if g != 0 {
					par[i] ^= gfExp[lf+int(gfLog[g])]
				}
			}
		}
	}
	return dst
}

// rsScratch holds the decoder's working polynomials, so that decoding
// allocates nothing once warm.
type rsScratch struct {
	synd, lam, prev, tmp, omega [maxParity + 1]byte
}

// syndromes fills s with cw evaluated at 2^0 .. 2^(p-1) and reports
// whether all are zero.
func syndromes(s []byte, cw []byte) bool {
	clean := true
	for i := range s {
		var v byte
		for _, c := range cw {
			if v != 0 {
				v = gfExp[int(gfLog[v])+i]
			}
			v ^= c
		}
		s[i] = v
		if v != 0 {
			clean = false
		}
	}
	return clean
}

// rsDecode corrects cw (message then p parity bytes, at most 255 bytes) in
// place. It returns how many bytes it corrected, or ok false when there
// are more errors than it can correct (cw is then unspecified).
func (sc *rsScratch) rsDecode(cw []byte, p int) (corrected int, ok bool) {
	if p == 0 {
		return 0, true
	}
	if p > maxParity || len(cw) > 255 || len(cw) <= p {
		return 0, false
	}
	s := sc.synd[:p]
	if syndromes(s, cw) {
		return 0, true
	}
	// Berlekamp-Massey: the error locator lam(x) = prod(1 - X_k x),
	// lowest power first.
	lam, prev := sc.lam[:], sc.prev[:]
	clear(lam)
	clear(prev)
	lam[0], prev[0] = 1, 1
	L, m, b := 0, 1, byte(1)
	for n := range p {
		d := s[n]
		for i := 1; i <= L; i++ {
			d ^= gfMul(lam[i], s[n-i])
		}
		if d == 0 {
			m++
			continue
		}
		coef := gfMul(d, gfInv(b))
		if 2*L <= n {
			copy(sc.tmp[:], lam)
			for i := 0; i+m <= p; i++ {
				lam[i+m] ^= gfMul(coef, prev[i])
			}
			L, b, m = n+1-L, d, 1
			copy(prev, sc.tmp[:])
		} else {
			for i := 0; i+m <= p; i++ {
				lam[i+m] ^= gfMul(coef, prev[i])
			}
			m++
		}
	}
	if 2*L > p {
		return 0, false
	}
	// omega(x) = s(x) lam(x) mod x^p, the error evaluator.
	omega := sc.omega[:p]
	for i := range p {
		var v byte
		for j := 0; j <= min(i, L); j++ {
			v ^= gfMul(lam[j], s[i-j])
		}
		omega[i] = v
	}
	// Chien search over the positions cw has: byte j stands for the power
	// e = len-1-j, its locator X = 2^e is a root of lam at X^-1.
	n := len(cw)
	found := 0
	for e := range n {
		xinv := gfExp[(255-e)%255]
		var v byte
		for i := L; i >= 0; i-- {
			v = gfMul(v, xinv) ^ lam[i]
		}
		if v != 0 {
			continue
		}
		found++
		// Forney, first root 2^0: Y = X omega(X^-1) / lam'(X^-1).
		var num, den byte
		for i := p - 1; i >= 0; i-- {
			num = gfMul(num, xinv) ^ omega[i]
		}
		x2 := gfMul(xinv, xinv)
		for i := L - 1 + L%2; i >= 1; i -= 2 { // odd terms of lam
			den = gfMul(den, x2) ^ lam[i]
		}
		if den == 0 {
			return 0, false
		}
		cw[n-1-e] ^= gfMul(gfMul(num, gfInv(den)), gfExp[e])
	}
	if found != L || !syndromes(s, cw) {
		return 0, false
	}
	return L, true
}
