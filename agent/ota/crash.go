package ota

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/boardlink/boardlink/internal/atomicfile"
)

// crashFile, when present in the state directory, holds a crash point
// "PHASE[:N]": right after the N-th save (default 1) of the update in that
// phase, the agent removes the file and kills itself with SIGKILL. It is a
// power cut at an exact state, for the kill-in-every-state tests (as
// Mender's Killed_in_<State> tests); a board never has the file.
const crashFile = "crash-at"

// loadCrashPoint reads the crash point, if any.
func (u *Updater) loadCrashPoint() {
	raw, err := os.ReadFile(u.st.path(crashFile))
	if err != nil {
		return
	}
	phase, n, _ := strings.Cut(strings.TrimSpace(string(raw)), ":")
	u.crashAt, u.crashAfter = phase, 1
	if k, err := strconv.Atoi(n); err == nil && k > 0 {
		u.crashAfter = k
	}
	u.log.Warn("ota: crash point set: this agent will kill itself", "phase", phase, "after_saves", u.crashAfter)
}

// crashPoint is called after every save of the state.
func (u *Updater) crashPoint() {
	if u.crashAt == "" || u.upd.Phase != u.crashAt {
		return
	}
	if u.crashAfter--; u.crashAfter > 0 {
		return
	}
	if err := os.Remove(u.st.path(crashFile)); err != nil {
		panic(fmt.Sprintf("ota: crash point: %v", err)) // crashing again at every boot would loop
	}
	_ = atomicfile.SyncDir(u.cfg.Dir)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}
