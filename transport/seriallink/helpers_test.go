package seriallink

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/transport"
)

func beaconOf(id string) func() []byte {
	return func() []byte { return []byte(`{"id":"` + id + `"}`) }
}

// testConfig is quick to beacon and to give up, for tests.
func testConfig() Config {
	return Config{BeaconInterval: 50 * time.Millisecond, RTO: 100 * time.Millisecond, DeadAfter: 5 * time.Second}
}

// openPair connects a host endpoint on host and an agent endpoint on agent
// and opens a session. Both endpoints are closed when the test ends.
func openPair(t testing.TB, host, agent io.ReadWriteCloser, hcfg, acfg Config) (he, ae *Endpoint, hl, al transport.Link) {
	t.Helper()
	if acfg.Beacon == nil {
		acfg.Beacon = beaconOf("board-1")
	}
	ae = NewEndpoint(agent, acfg)
	he = NewEndpoint(host, hcfg)
	t.Cleanup(func() { he.Close(); ae.Close() })
	hl, al = connect(t, he, ae)
	return he, ae, hl, al
}

// connect opens a session from he to ae.
func connect(t testing.TB, he, ae *Endpoint) (hl, al transport.Link) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan transport.Link, 1)
	go func() {
		l, err := ae.Accept(ctx)
		if err != nil {
			t.Errorf("accept: %v", err)
		}
		accepted <- l
	}()
	hl, err := he.Dial(ctx)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	al = <-accepted
	if al == nil {
		t.FailNow()
	}
	return hl, al
}

// echo answers every message on l with the same message, until l fails.
func echo(l transport.Link) {
	for {
		typ, p, err := l.ReadMessage()
		if err == transport.ErrTooLarge {
			continue
		}
		if err != nil {
			return
		}
		if l.WriteMessage(context.Background(), typ, p) != nil {
			return
		}
	}
}

// drain copies r into a buffer until r ends; wait returns the text.
func drain(r io.Reader) (wait func() string) {
	var buf bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(&buf, r)
	}()
	return func() string { wg.Wait(); return buf.String() }
}

// inOrder reports the first of lines missing from text, in order, with
// the text that came where it should have been.
func inOrder(text string, lines []string) (missing string, ok bool) {
	for _, l := range lines {
		i := strings.Index(text, l)
		if i < 0 {
			return fmt.Sprintf("%q; after the line before it came %q", l, text[:min(len(text), 200)]), false
		}
		text = text[i+len(l):]
	}
	return "", true
}
