//go:build race

package testenv

// Race is true when the race detector is on: tests that move hundreds of
// megabytes scale down, since the detector slows every byte tenfold.
const Race = true
