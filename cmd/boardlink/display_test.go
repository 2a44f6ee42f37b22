package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
)

// onPTY runs the CLI in-process with its stderr on a pty, as a person's
// terminal, and returns the exit status, stdout and what the terminal
// showed. ctx lets a test interrupt it.
func onPTY(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	return onPTYSeen(t, ctx, nil, args...)
}

// onPTYSeen is onPTY that hands seen the terminal's output as it is
// written, for a test that acts on what the CLI shows.
func onPTYSeen(t *testing.T, ctx context.Context, seen func(*testenv.Buffer), args ...string) (int, string, string) {
	t.Helper()
	master, slave := testenv.RawPTY(t)
	var term testenv.Buffer
	if seen != nil {
		seen(&term)
	}
	read := make(chan struct{})
	go readTerminal(master, &term, read)
	var stdout bytes.Buffer
	args = append([]string{"--known-boards", knownBoards(t)}, args...)
	err := runWithStdin(ctx, strings.NewReader(""), args, &stdout, slave)
	code := exitStatus(afterSignal(ctx, err), slave)
	slave.Close() // the reader sees EIO once the terminal's output is drained
	<-read
	return code, stdout.String(), term.String()
}

var elapsed = regexp.MustCompile(`\d+\.\d s`)

// TestRebootWaitShows: on a terminal, reboot --wait shows what it waits
// for, how long it has waited, and the board's last console line.
func TestRebootWaitShows(t *testing.T) {
	b := startSimBoard(t, 2*time.Second)
	code, stdout, term := onPTY(t, context.Background(), "reboot", b.serial, "--wait", "--timeout", "60s")
	if code != 0 {
		t.Fatalf("reboot --wait: exit %d\n%s%s", code, stdout, term)
	}
	for _, want := range []string{"rebooting ", ": waiting for a new boot (up to 1m0s)", "last console line: "} {
		if !strings.Contains(term, want) {
			t.Fatalf("the terminal never showed %q:\n%q", want, term)
		}
	}
	if !elapsed.MatchString(term) {
		t.Fatalf("the terminal never showed the time waited:\n%q", term)
	}
	i := strings.LastIndex(term, "last console line: ")
	t.Logf("last frame: %q", strings.SplitN(term[i:], "\r", 2)[0])
}

// TestRebootWaitInterrupted: Ctrl-C while waiting for a board that has
// not come back ends the wait at once with 130, and says that the board
// went down and how to look for it again.
func TestRebootWaitInterrupted(t *testing.T) {
	b := startSimBoard(t, time.Hour) // it goes down and stays down
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	// Ctrl-C once the CLI shows a failed attempt to reach the board again:
	// it has the reboot's answer then (the agent's "rebooting" and the
	// spinner can both come before it).
	code, stdout, term := onPTYSeen(t, ctx, func(term *testenv.Buffer) {
		go func() {
			if term.WaitFor(ctx, ", attempt ") {
				cancel(&signalError{os.Interrupt})
			}
		}()
	}, "reboot", b.ws, "--wait", "--timeout", "1h")
	if code != 130 || !strings.Contains(term, "interrupted: stopped waiting for") || !strings.Contains(term, "'boardlink info ") {
		t.Fatalf("reboot --wait after Ctrl-C: exit %d\n%s\n%q", code, stdout, term)
	}
	i := strings.LastIndex(term, "interrupted")
	t.Logf("said: %q", strings.SplitN(term[i:], "\n", 2)[0])
}

// counters are the overall bars' "N/M boards done" of a stage.
func counters(term, stage string) []string {
	re := regexp.MustCompile(stage + `\s+(\d+/\d+) boards done`)
	var seen []string
	for _, m := range re.FindAllStringSubmatch(term, -1) {
		if len(seen) == 0 || seen[len(seen)-1] != m[1] {
			seen = append(seen, m[1])
		}
	}
	return seen
}

// TestRolloutShowsCounters: on a terminal, each stage's overall bar counts
// the boards as they finish it, up to all of them.
func TestRolloutShowsCounters(t *testing.T) {
	r := startRolloutLab(t, 3, nil)
	code, stdout, term := onPTY(t, context.Background(), "rollout", "--inventory", r.inventory, "--timeout", "0",
		"--db", r.db, "-C", "1", r.img)
	if code != 0 {
		t.Fatalf("rollout: exit %d\n%s\n%q", code, stdout, term)
	}
	for _, stage := range []string{"prepare", "execute"} {
		seen := counters(term, stage)
		if len(seen) == 0 || seen[len(seen)-1] != "3/3" {
			t.Fatalf("%s's counter went %v, want it to end at 3/3:\n%q", stage, seen, term)
		}
		t.Logf("%s: %v", stage, seen)
	}
}

// TestRolloutInterrupted: Ctrl-C in the middle of a rollout is
// acknowledged at once (above the bars, which stop), and the rollout ends
// with its report, 130, and how to resume it; the boards it stopped are
// not reported failing, with their logs dumped (as the demo did).
func TestRolloutInterrupted(t *testing.T) {
	r := startRolloutLab(t, 3, nil)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	go func() {
		// One at a time: when a second board prepares, the first is done.
		if r.phases.await(ctx, func() bool { return len(r.phases.prepared) >= 2 }) {
			cancel(&signalError{os.Interrupt})
		}
	}()
	code, stdout, term := onPTY(t, ctx, "rollout", "--inventory", r.inventory, "--timeout", "0",
		"--db", r.db, "-C", "1", r.img)
	if code != 130 || !strings.Contains(term, "interrupted: no new board starts") || !strings.Contains(term, "--resume") {
		t.Fatalf("rollout after Ctrl-C: exit %d\n%s\n%q", code, stdout, term)
	}
	if !strings.Contains(stdout, "rollout r-") || !strings.Contains(term, "boardlink rollout --resume r-") {
		t.Fatalf("no report, or no way to resume:\n%s\n%q", stdout, term)
	}
	if strings.Contains(term, " failed in ") { // the boards were stopped, not failing: no log dumps
		t.Fatalf("after Ctrl-C the rollout dumped board logs:\n%q", term)
	}
	// The board whose prepare ended is not "skipped": it waits for --resume.
	if strings.Contains(stdout, dispatcher.ResultSkipped) || !strings.Contains(stdout, "interrupted after its prepare stage") {
		t.Fatalf("a prepared board is not reported as interrupted:\n%s", stdout)
	}
	i := strings.Index(term, "interrupted: no new board starts")
	t.Logf("acknowledged: %q", strings.SplitN(term[i:], "\n", 2)[0])
}
