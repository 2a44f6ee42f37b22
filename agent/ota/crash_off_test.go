//go:build !boardlink_testhooks

package ota

import (
	"os"
	"testing"

	"github.com/boardlink/boardlink/proto"
)

// TestCrashFileIgnored: a default build has no crash point. The file the
// test builds use to kill the agent at a phase (crash.go) is left alone
// and the update goes on; with the hook compiled in, this test's own
// process would die at the first save of the prepare.
func TestCrashFileIgnored(t *testing.T) {
	r := newRig(t)
	crash := r.u.st.path("crash-at")
	if err := os.WriteFile(crash, []byte(string(proto.PhasePrepare)), 0o644); err != nil {
		t.Fatal(err)
	}
	r.restart() // the crash point is read at start
	im, _ := r.image("1.0.0", randomBytes(3*4096))
	r.prepare(im)
	if _, err := os.Stat(crash); err != nil {
		t.Fatalf("the crash file: %v, want it untouched", err)
	}
}
