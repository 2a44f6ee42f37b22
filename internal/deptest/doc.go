// Package deptest holds no code: its test guards the layering of the
// module's packages (docs/architecture.md), as tailscale's tstest/deptest
// does, so that a forbidden import fails a test the day it appears.
package deptest
