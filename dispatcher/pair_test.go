package dispatcher_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

// TestPair: a host pairs with the code the board's operator made; both
// ends then know each other's key, and the host's key alone opens a
// session. A wrong code stores nothing and costs one of the code's
// attempts.
func TestPair(t *testing.T) {
	dir := t.TempDir()
	codeFile := filepath.Join(dir, "pair-code.json")
	b := startBoard(t, agent.Config{Auth: agent.AuthConfig{Key: newKey(t), Pairing: true, CodeFile: codeFile,
		PairedFile: filepath.Join(dir, "paired.json")}})
	known := dispatcher.NewKnownBoards(filepath.Join(dir, "known_boards.json"))
	hostKey := newKey(t)
	ctx := context.Background()
	pair := func(code string) (dispatcher.PairResult, error) {
		return dispatcher.Pair(ctx, b.ws.URL(), dispatcher.PairOptions{HostKey: hostKey, Name: "ci-host", Known: known,
			Code: func(context.Context, string, proto.PairBeginResult) (string, error) { return code, nil }})
	}

	code, err := agent.WritePairingCode(codeFile, time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pair("AAAA-AAAA"); !errors.Is(err, auth.ErrWrongCode) {
		t.Fatalf("a wrong code: %v", err)
	}
	if _, ok := known.Lookup("test-board"); ok {
		t.Fatal("a failed pairing pinned the board")
	}
	if _, err := pair("12"); err == nil {
		t.Fatal("a malformed code was sent")
	}

	res, err := pair(code) // the same pairing, taken up again: one attempt less

	if err != nil {
		t.Fatal(err)
	}
	if res.BoardID != "test-board" || !res.Fingerprint.Equal(b.agent.Fingerprint()) {
		t.Fatalf("paired with %+v", res)
	}
	if e, ok := known.Lookup("test-board"); !ok || !e.Paired || !e.Fingerprint.Equal(res.Fingerprint) {
		t.Fatalf("pin %+v %v", e, ok)
	}
	c, err := dispatcher.Dial(ctx, b.ws.URL(), dispatcher.DialOptions{HostKey: hostKey, Trust: known})
	if err != nil {
		t.Fatalf("a session with the host's key alone: %v", err)
	}
	c.Close()

	id, err := dispatcher.Identify(ctx, "unix://"+b.sock, dispatcher.DialOptions{Trust: known})
	if err != nil || id != res {
		t.Fatalf("identify: %+v %v", id, err)
	}
	if _, err := dispatcher.Identify(ctx, b.ws.URL(), dispatcher.DialOptions{BoardID: "lab-7", Trust: known}); !errors.As(err, new(*dispatcher.WrongBoardError)) {
		t.Fatalf("identify another board: %v", err)
	}
	if _, err := dispatcher.Pair(ctx, b.ws.URL(), dispatcher.PairOptions{}); err == nil {
		t.Fatal("a pairing without its options")
	}
}
