//go:build !boardlink_testhooks

package ota

// A production build has no crash point (see crash.go): a file in the
// state directory must not be able to kill the agent.
type crashHook struct{}

func (u *Updater) loadCrashPoint() {}
func (u *Updater) crashPoint()     {}
func (u *Updater) crashHashed()    {}
