package main

import (
	"io"
	"sync"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sys/unix"
)

// isTerminal reports whether w is a terminal: progress is drawn only there,
// so logs and pipes get the final line alone.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	if !ok || f.Fd() == ^uintptr(0) {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progressBar draws one transfer's progress. A nil *progressBar (not a
// terminal) draws nothing; every method is safe on it.
type progressBar struct {
	p    *mpb.Progress
	bar  *mpb.Bar
	once sync.Once
}

// newProgressBar returns a bar named name on w, or nil if w is not a
// terminal. total may be 0 (unknown) and set later.
func newProgressBar(w io.Writer, name string, total int64) *progressBar {
	if !isTerminal(w) {
		return nil
	}
	p := mpb.New(mpb.WithOutput(w), mpb.WithWidth(64))
	bar := p.New(total, mpb.BarStyle(),
		mpb.PrependDecorators(decor.Name(name, decor.WCSyncSpaceR), decor.Counters(decor.SizeB1024(0), "% .1f / % .1f")),
		mpb.AppendDecorators(decor.Percentage(decor.WCSyncSpace), decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncSpace),
			decor.OnComplete(decor.AverageETA(decor.ET_STYLE_GO, decor.WCSyncSpace), "")))
	return &progressBar{p: p, bar: bar}
}

// set moves the bar to done of total.
func (b *progressBar) set(done, total int64) {
	if b == nil {
		return
	}
	if total > 0 {
		b.bar.SetTotal(total, false)
	}
	b.bar.SetCurrent(done)
}

// done completes the bar (ok) or drops it (failed), and waits until the
// terminal is left tidy for the next line.
func (b *progressBar) done(ok bool) {
	if b == nil {
		return
	}
	b.once.Do(func() {
		if ok {
			b.bar.SetTotal(-1, true)
		} else {
			b.bar.Abort(false)
		}
		b.p.Wait()
	})
}
