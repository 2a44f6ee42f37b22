package agent_test

import (
	"testing"

	"github.com/boardlink/boardlink/agent"
)

// WatchSessions hears a WebSocket session begin and end.
func TestWatchSessions(t *testing.T) {
	h := newHarness(t, "")
	counts := make(chan int, 16)
	stop := agent.WatchSessions(func(open int) { counts <- open })
	defer stop()
	c := dialWS(t, h)
	during := <-counts
	if during < 1 {
		t.Fatalf("%d sessions open during one", during)
	}
	c.Close()
	for open := range counts {
		if open == during-1 {
			break
		}
	}
	stop()
	// Another watcher, still on, hears the next session end: the
	// stopped one heard nothing of it.
	other := make(chan int, 16)
	defer agent.WatchSessions(func(open int) { other <- open })()
	c2 := dialWS(t, h)
	during = <-other
	c2.Close()
	for open := range other {
		if open == during-1 {
			break
		}
	}
	select {
	case open := <-counts:
		t.Fatalf("a stopped watcher heard %d", open)
	default:
	}
}
