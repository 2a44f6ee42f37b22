package main

import (
	"fmt"
	"io"
	"sync"
	"time"

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

// humanBytes is a size in the units the bars use (KiB, MiB, GiB: powers
// of 1024), so that every figure a person reads is in one system.
func humanBytes(n int64) string {
	if n < 1024 && n > -1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n)/1024, "KiB"
	for _, next := range []string{"MiB", "GiB", "TiB"} {
		if v < 1024 && v > -1024 {
			break
		}
		v, unit = v/1024, next
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}

// humanRate is n bytes over d, as humanBytes per second.
func humanRate(n int64, d time.Duration) string {
	return humanBytes(int64(float64(n)/max(d.Seconds(), 1e-6))) + "/s"
}

// seconds is d as people read a wait: "4.2 s".
func seconds(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// progressBar draws one transfer's progress, and what it is doing when no
// bytes move (hashing first, verifying last). A nil *progressBar (not a
// terminal) draws nothing; every method is safe on it.
type progressBar struct {
	p    *mpb.Progress
	bar  *mpb.Bar
	once sync.Once

	mu    sync.Mutex
	phase string
	since time.Time
}

// newProgressBar returns a bar named name on w, or nil if w is not a
// terminal. total may be 0 (unknown) and set later.
func newProgressBar(w io.Writer, name string, total int64) *progressBar {
	if !isTerminal(w) {
		return nil
	}
	// Auto refresh: mpb sees a terminal only in an *os.File, and w is
	// wrapped (lockedWriter); without it the bar draws once, at the end.
	b := &progressBar{p: mpb.New(mpb.WithOutput(w), mpb.WithWidth(64), mpb.WithAutoRefresh())}
	b.bar = b.p.New(total, mpb.BarStyle(),
		mpb.PrependDecorators(decor.Name(name, decor.WCSyncSpaceR), decor.Counters(decor.SizeB1024(0), "% .1f / % .1f")),
		mpb.AppendDecorators(decor.Percentage(decor.WCSyncSpace), decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncSpace),
			decor.OnComplete(decor.AverageETA(decor.ET_STYLE_GO, decor.WCSyncSpace), ""), decor.Any(b.phaseText, decor.WCSyncSpace)))
	return b
}

// phaseText is the phase with its time so far, "" while bytes move.
func (b *progressBar) phaseText(decor.Statistics) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.phase == "" {
		return ""
	}
	return b.phase + " " + seconds(time.Since(b.since))
}

// setPhase shows what the transfer does while no bytes move ("hashing",
// "verifying"); "" while they do.
func (b *progressBar) setPhase(phase string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.phase, b.since = phase, time.Now()
	b.mu.Unlock()
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
		b.setPhase("")
		if ok {
			b.bar.SetTotal(-1, true)
		} else {
			b.bar.Abort(false)
		}
		b.p.Wait()
	})
}

// spinner shows a wait on a terminal: what is waited for, for how long,
// and what status says, redrawn ten times a second on one line. Off a
// terminal it says once what it waits for. A nil *spinner does nothing.
type spinner struct {
	w      io.Writer
	what   string
	status func() string
	start  time.Time
	stop   chan struct{}
	done   chan struct{}
}

// spinnerFrames turn while a wait lasts, so a frozen screen shows.
var spinnerFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// startSpinner starts showing the wait what on w; status, if set, adds
// what is known so far (an attempt, the last console line).
func startSpinner(w io.Writer, what string, status func() string) *spinner {
	s := &spinner{w: w, what: what, status: status, start: time.Now()}
	if !isTerminal(w) {
		fmt.Fprintf(w, "%s ...\n", what)
		return s
	}
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			line := fmt.Sprintf("%s %s %s", spinnerFrames[i%len(spinnerFrames)], s.what, seconds(time.Since(s.start)))
			if s.status != nil {
				if st := s.status(); st != "" {
					line += ", " + st
				}
			}
			fmt.Fprintf(s.w, "\r\x1b[K%s", line)
			select {
			case <-s.stop:
				fmt.Fprint(s.w, "\r\x1b[K")
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// end clears the spinner's line.
func (s *spinner) end() {
	if s == nil || s.stop == nil {
		return
	}
	close(s.stop)
	<-s.done
	s.stop = nil
}
