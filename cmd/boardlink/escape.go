package main

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// escape makes a string that came from a board (or anyone on the
// network: a TXT value, a model, a label) safe to print for a person:
// control characters (an escape sequence that would recolour or clear
// the terminal, a newline that would forge a line), invalid UTF-8 and
// the backslash itself come out as Go escapes (\x1b, \n, \xff, \\).
// Printable text, accents included, is left alone. JSON output is never
// escaped this way: its encoder keeps the bytes as they are.
func escape(s string) string {
	if !needsEscape(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			b.WriteString(`\x`)
			b.WriteString(strconv.FormatUint(uint64(s[i])|0x100, 16)[1:])
		case r == '\\':
			b.WriteString(`\\`)
		case unicode.IsPrint(r) || r == ' ':
			b.WriteString(s[i : i+n])
		default:
			q := strconv.QuoteRune(r) // '\x1b', '\n', '\u200b'
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

func needsEscape(s string) bool {
	for _, r := range s {
		if r == '\\' || r == utf8.RuneError || !unicode.IsPrint(r) && r != ' ' {
			return true
		}
	}
	return false
}
