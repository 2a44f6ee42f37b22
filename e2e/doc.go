// Package e2e holds the end-to-end tests: real boards booted by QEMU
// (internal/qemuboard: OVMF, GRUB choosing the slot with the grub.cfg of
// docs/boot.md, Debian's kernel, a busybox initramfs running boardlinkd
// --board linux --boot grub), driven only through the boardlink CLI, as a
// built binary, and the dispatcher library. And the compatibility tests:
// this tree's host against protocol 5's agent and protocol 5's CLI
// against this tree's agent, both built from the git history
// (compat_test.go).
//
// They are long (QEMU runs on TCG): they run with BOARDLINK_E2E=1 only
// (`just e2e`, .ci/run), where a missing tool or a failed download is a
// failure. They live in a package of their own, outside internal/ and
// cmd/, so that .ci/run's race-detector pass over those does not boot
// every board a second time, and so that `go test ./e2e` runs them alone.
package e2e
