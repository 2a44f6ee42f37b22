package benchkit

import (
	"fmt"
	"slices"
	"time"
)

// Number is what Median works on: integers, durations among them, and
// floats.
type Number interface {
	~int | ~int32 | ~int64 | ~float32 | ~float64
}

// Median returns the median of xs: the middle value, or for an even
// count the mean of the two middle values (rounded toward zero for
// integers and durations). It returns zero for no values. xs is not
// modified.
func Median[N Number](xs []N) N {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// Seconds formats a duration in seconds with millisecond precision, as
// "1.234s".
func Seconds(d time.Duration) string { return fmt.Sprintf("%.3fs", d.Seconds()) }
