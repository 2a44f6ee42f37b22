package dispatcher_test

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/internal/testenv"
)

// onShow calls f once when what was written contains marker.
type onShow struct {
	testenv.Buffer
	marker string
	once   sync.Once
	f      func()
}

func (w *onShow) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if strings.Contains(w.String(), w.marker) {
		w.once.Do(w.f)
	}
	return n, err
}

// TestShellCanceled: canceling Shell's context ends the command on the
// board (TERM to its group) and still returns its final record, with
// the output that came before; nothing of the call is left running.
func TestShellCanceled(t *testing.T) {
	testenv.CheckLeaks(t)
	b := startBoard(t, agent.Config{})
	for _, addr := range []string{b.ws.URL(), "unix://" + b.sock} {
		c := dial(t, addr)
		ctx, cancel := context.WithCancel(context.Background())
		out := &onShow{marker: "up-2", f: cancel}
		sizes := make(chan dispatcher.Size)
		res, err := c.Shell(ctx, dispatcher.ShellRequest{Argv: []string{"sh", "-c", "echo up-$((1+1)); exec sleep 1000"},
			Stdout: out, Resize: sizes})
		cancel()
		if err != nil || !res.Canceled || res.Signal != "TERM" || !strings.Contains(out.String(), "up-2\r\n") {
			t.Fatalf("%s: %+v %v %q", addr, res, err, out.String())
		}
		c.Close()
	}
}

// TestShellPipedInput: input that is not a terminal is typed as it
// comes, and its end is Ctrl-D; without Stdout the output is discarded
// and still counted.
func TestShellPipedInput(t *testing.T) {
	b := startBoard(t, agent.Config{})
	c := dial(t, b.ws.URL())
	res, err := c.Shell(context.Background(), dispatcher.ShellRequest{Argv: []string{"cat"},
		Stdin: io.MultiReader(strings.NewReader("one\n"), strings.NewReader("two"))})
	// cat's terminal echoes each line and cat prints it back: two lines
	// twice, "two" once more after Ctrl-D ended its line.
	if err != nil || res.ExitCode != 0 || res.StdoutBytes != int64(len("one\r\none\r\ntwotwo")) {
		t.Fatalf("%+v %v", res, err)
	}
}
