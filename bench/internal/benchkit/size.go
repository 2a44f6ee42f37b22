package benchkit

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// units are the suffixes a size flag accepts, in the order they are tried:
// the longer ones first, so that "KiB" is not read as "B".
var units = []struct {
	suffix string
	mult   int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}}

// cutUnit splits v into its number and the multiplier of its unit suffix
// (1 when it has none).
func cutUnit(v string) (string, int64) {
	for _, u := range units {
		if s, ok := strings.CutSuffix(v, u.suffix); ok {
			return s, u.mult
		}
	}
	return v, 1
}

// Size is a byte count flag (a flag.Value) that accepts unit suffixes:
// KiB, MiB, GiB, K, M and G are powers of 1024, KB, MB and GB powers of
// 1000, and B is one byte. The number is read as a float64, so it may
// have a fraction ("1.5MiB") as long as the size comes to a whole number
// of bytes (a count above 2^53 bytes may round); it may not be negative or
// above 2^62. Use it with flag.Var.
type Size int64

// String returns the size in bytes, as the flag package prints a default.
func (s *Size) String() string { return strconv.FormatInt(int64(*s), 10) }

// Set parses v as described on Size.
func (s *Size) Set(v string) error {
	v, mult := cutUnit(v)
	n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || n < 0 || n*float64(mult) > 1<<62 || n*float64(mult) != math.Trunc(n*float64(mult)) {
		return fmt.Errorf("not a size: %q", v)
	}
	*s = Size(int64(n * float64(mult)))
	return nil
}

// IntSize is a byte count flag like Size, with the same suffixes and
// limits, whose number must be an integer: "1536KiB", not "1.5MiB".
type IntSize int64

// String returns the size in bytes, as the flag package prints a default.
func (s *IntSize) String() string { return strconv.FormatInt(int64(*s), 10) }

// Set parses v as described on IntSize.
func (s *IntSize) Set(v string) error {
	v, mult := cutUnit(v)
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return fmt.Errorf("not a size: %q", v)
	}
	*s = IntSize(n * mult)
	return nil
}

// Human formats a byte count in the largest of GiB, MiB and KiB that
// divides it, as "256 MiB", or else in bytes, as "1000 bytes".
func Human(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// MiB formats a byte count in MiB with two decimals, as "4.02 MiB".
func MiB(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }
