// Package units reads and writes byte sizes the way people type them, for
// the flags and config files of both binaries.
package units

import (
	"fmt"
	"strconv"
	"strings"
)

// sizeUnits are ParseSize's suffixes, longest first so that "KiB" is not
// taken for "B".
var sizeUnits = []struct {
	suffix string
	n      int64
}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40}, {"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40}, {"b", 1}}

// ParseSize reads a size in bytes: a whole number with an optional suffix,
// KiB, MiB, GiB, TiB (or K, M, G, T) for powers of 1024 and KB, MB, GB, TB
// for powers of 1000, in any case.
func ParseSize(s string) (int64, error) {
	num, mult := strings.TrimSpace(s), int64(1)
	lower := strings.ToLower(num)
	for _, u := range sizeUnits {
		if strings.HasSuffix(lower, u.suffix) {
			num, mult = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.n
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (e.g. 65536, 64KiB, 1MiB, 4GiB)", s)
	}
	return n * mult, nil
}

// FormatSize prints a size as KiB, MiB, GiB or TiB when it is a whole
// number of them, else in bytes.
func FormatSize(n int64) string {
	for _, u := range []struct {
		name string
		n    int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.n && n%u.n == 0 {
			return fmt.Sprintf("%d %s", n/u.n, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// Size is a byte size as a flag (pflag.Value) and a YAML scalar: a
// number, or a string that ParseSize reads.
type Size int64

// String prints the size as FormatSize does, without the space, so that
// it parses back.
func (s *Size) String() string {
	return strings.ReplaceAll(strings.TrimSuffix(FormatSize(int64(*s)), " bytes"), " ", "")
}

// Set parses a flag's value.
func (s *Size) Set(v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}

// Type names the flag's value in help.
func (s *Size) Type() string { return "size" }

// UnmarshalText reads the value of a YAML key (yaml.v3 uses it for
// scalars).
func (s *Size) UnmarshalText(b []byte) error { return s.Set(string(b)) }
