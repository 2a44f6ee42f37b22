package testenv

import (
	"os"
	"testing"
	"time"
)

// recordingTB catches the failure CheckLeaks reports.
type recordingTB struct {
	testing.TB
	cleanups []func()
	failed   bool
}

func (r *recordingTB) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }
func (r *recordingTB) Errorf(string, ...any)     { r.failed = true }
func (r *recordingTB) Helper()                   {}
func (r *recordingTB) Fatalf(f string, a ...any) { r.failed = true }

func TestCheckLeaksCatchesAnFD(t *testing.T) {
	defer func(old time.Duration) { settle = old }(settle)
	settle = 100 * time.Millisecond
	r := &recordingTB{TB: t}
	CheckLeaks(r)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r.cleanups[0]()
	if !r.failed {
		t.Fatal("an open file descriptor went unnoticed")
	}
}

func TestCheckLeaksQuietWhenClean(t *testing.T) {
	r := &recordingTB{TB: t}
	CheckLeaks(r)
	f, _ := os.Open(os.DevNull)
	f.Close()
	r.cleanups[0]()
	if r.failed {
		t.Fatal("reported a leak where there is none")
	}
}
