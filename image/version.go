package image

import "strings"

// ValidVersion reports whether v is a version an image may carry: one or
// more decimal numbers separated by dots ("1", "1.4", "2026.03.1"),
// optionally followed by "-" and a pre-release suffix of dot-separated
// identifiers made of ASCII letters, digits and '-' ("2.0.0-rc.1",
// "1.4-beta2"); at most 128 bytes. There is no leading "v" and no "+build"
// part.
func ValidVersion(v string) bool {
	if v == "" || len(v) > maxVersionLen {
		return false
	}
	core, pre, hasPre := strings.Cut(v, "-")
	for part := range strings.SplitSeq(core, ".") {
		if part == "" || !allDigits(part) {
			return false
		}
	}
	if !hasPre {
		return true
	}
	for id := range strings.SplitSeq(pre, ".") {
		if id == "" {
			return false
		}
		for i := 0; i < len(id); i++ {
			c := id[i]
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-') {
				return false
			}
		}
	}
	return true
}

// CompareVersions orders versions (see ValidVersion) and returns -1, 0 or
// +1 as a is older than, the same as, or newer than b. The rule is
// semver's, generalised to any number of parts:
//
//   - The numeric parts are compared as numbers from the left; a missing
//     part counts as 0, so 1.2.10 > 1.2.9, 2.0 == 2.0.0 and 1.02 == 1.2.
//   - With equal numbers, a version with a pre-release suffix is older
//     than the one without: 2.0.0-rc.1 < 2.0.0.
//   - Two suffixes are compared identifier by identifier (split at dots):
//     numeric identifiers as numbers, others as ASCII strings, a numeric
//     one older than a non-numeric one, and a shorter list older when one
//     is a prefix of the other: alpha < alpha.1 < alpha.beta < beta <
//     beta.2 < beta.11 < rc.1.
//
// An invalid version is older than every valid one; two invalid versions
// compare as strings, so that the order stays total.
func CompareVersions(a, b string) int {
	va, vb := ValidVersion(a), ValidVersion(b)
	switch {
	case !va && !vb:
		return strings.Compare(a, b)
	case !va:
		return -1
	case !vb:
		return +1
	}
	coreA, preA, hasPreA := strings.Cut(a, "-")
	coreB, preB, hasPreB := strings.Cut(b, "-")
	pa, pb := strings.Split(coreA, "."), strings.Split(coreB, ".")
	for i := range max(len(pa), len(pb)) {
		x, y := "0", "0"
		if i < len(pa) {
			x = pa[i]
		}
		if i < len(pb) {
			y = pb[i]
		}
		if c := compareNumbers(x, y); c != 0 {
			return c
		}
	}
	switch {
	case !hasPreA && !hasPreB:
		return 0
	case !hasPreA:
		return +1
	case !hasPreB:
		return -1
	}
	ia, ib := strings.Split(preA, "."), strings.Split(preB, ".")
	for i := range min(len(ia), len(ib)) {
		x, y := ia[i], ib[i]
		nx, ny := allDigits(x), allDigits(y)
		var c int
		switch {
		case nx && ny:
			c = compareNumbers(x, y)
		case nx:
			c = -1
		case ny:
			c = +1
		default:
			c = strings.Compare(x, y)
		}
		if c != 0 {
			return c
		}
	}
	switch {
	case len(ia) < len(ib):
		return -1
	case len(ia) > len(ib):
		return +1
	}
	return 0
}

// compareNumbers compares two non-empty strings of decimal digits as
// numbers of any size.
func compareNumbers(x, y string) int {
	x, y = strings.TrimLeft(x, "0"), strings.TrimLeft(y, "0")
	if len(x) != len(y) {
		if len(x) < len(y) {
			return -1
		}
		return +1
	}
	return strings.Compare(x, y)
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
