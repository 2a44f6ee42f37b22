package auth

import (
	"crypto/rand"
	"strings"
)

// A pairing code is 8 characters of Crockford's base32 (40 bits), shown
// as XXXX-XXXX. SPAKE2 leaves an attacker one online guess per exchange,
// and the agent allows few exchanges per code and few codes per hour, so
// 40 bits are far out of reach while still easy to type.
const (
	codeAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	codeLen      = 8
)

// NewCode returns a fresh pairing code, as XXXX-XXXX.
func NewCode() string {
	var b [codeLen]byte
	_, _ = rand.Read(b[:])
	out := make([]byte, 0, codeLen+1)
	for i, c := range b {
		if i == codeLen/2 {
			out = append(out, '-')
		}
		out = append(out, codeAlphabet[c%byte(len(codeAlphabet))]) // 256 is a multiple of 32: no bias
	}
	return string(out)
}

// NormalizeCode is the canonical form of what a person typed: upper case,
// without separators, with the letters Crockford's base32 reads as digits
// (O as 0, I and L as 1).
func NormalizeCode(s string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(s) {
		switch r {
		case '-', ' ', '\t':
			continue
		case 'O':
			r = '0'
		case 'I', 'L':
			r = '1'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// ValidCode reports whether s (normalized) is a well-formed code.
func ValidCode(s string) bool {
	n := NormalizeCode(s)
	if len(n) != codeLen {
		return false
	}
	for i := range len(n) {
		if !strings.ContainsRune(codeAlphabet, rune(n[i])) {
			return false
		}
	}
	return true
}
