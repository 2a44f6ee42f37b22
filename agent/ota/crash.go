//go:build boardlink_testhooks

package ota

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/boardlink/boardlink/internal/atomicfile"
	"github.com/boardlink/boardlink/proto"
)

// crashFile, when present in the state directory, holds a crash point
// "PHASE[:N]": right after the N-th save (default 1) of the update in that
// phase, the agent removes the file and kills itself with SIGKILL; or
// "hash[:N]": right after it hashed the N-th chunk of a slot. It is a
// power cut at an exact state, for the kill-in-every-state tests (as
// Mender's Killed_in_<State> tests). Only a build with the tag
// boardlink_testhooks has it (testenv.BuildTestHooks); crash_off.go is
// every other build's.
const crashFile = "crash-at"

// crashHash is the crash point in the read of a slot (hash.go), not a phase.
const crashHash proto.Phase = "hash"

// crashHook is the crash point read at Start.
type crashHook struct {
	at    proto.Phase
	after int
}

// loadCrashPoint reads the crash point, if any.
func (u *Updater) loadCrashPoint() {
	raw, err := os.ReadFile(u.st.path(crashFile))
	if err != nil {
		return
	}
	phase, n, _ := strings.Cut(strings.TrimSpace(string(raw)), ":")
	u.crash = crashHook{at: proto.Phase(phase), after: 1}
	if k, err := strconv.Atoi(n); err == nil && k > 0 {
		u.crash.after = k
	}
	u.log.Warn("ota: crash point set: this agent will kill itself", "phase", phase, "after_saves", u.crash.after)
}

// crashPoint is called after every save of the state.
func (u *Updater) crashPoint() {
	if u.crash.at == "" || u.upd.Phase != u.crash.at {
		return
	}
	u.crashCount()
}

// crashHashed is called after every chunk hashed: one read of a slot at a
// time, with the machine's lock not held.
func (u *Updater) crashHashed() {
	if u.crash.at == crashHash {
		u.crashCount()
	}
}

// crashCount counts a pass at the crash point, and crashes at the last.
func (u *Updater) crashCount() {
	if u.crash.after--; u.crash.after > 0 {
		return
	}
	if err := os.Remove(u.st.path(crashFile)); err != nil {
		panic(fmt.Sprintf("ota: crash point: %v", err)) // crashing again at every boot would loop
	}
	_ = atomicfile.SyncDir(u.cfg.Dir)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}
