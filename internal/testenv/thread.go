package testenv

import (
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// OnPooledThread runs fn on an OS thread other than the main one (which
// Go never ends), then lets the thread go back to the runtime's pool, and
// returns its id. A process fn starts with a parent-death signal gets it
// when that thread ends (golang/go#27505), as it does when any goroutine
// exits locked to it: a test checks that this does not happen by looking
// for /proc/self/task/ID.
func OnPooledThread(fn func()) int {
	// A goroutine that finds itself on the main thread keeps it until
	// the next one runs, so that the next cannot.
	release := make(chan struct{})
	defer close(release)
	for {
		tid := make(chan int)
		go func() {
			runtime.LockOSThread()
			id := unix.Gettid()
			if id == os.Getpid() {
				tid <- 0
				<-release
				runtime.UnlockOSThread()
				return
			}
			fn()
			runtime.UnlockOSThread()
			tid <- id
		}()
		if id := <-tid; id != 0 {
			return id
		}
	}
}
