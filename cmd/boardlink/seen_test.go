package main

import (
	"bytes"
	"os"
	"testing"
)

// A session with a board seen within seenRefresh leaves the completion
// cache as it is (no rewrite, no fsync); a new board is added.
func TestRememberIDsRewritesOnlyStale(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	rememberIDs("board-a")
	first, err := os.ReadFile(seenPath())
	if err != nil {
		t.Fatal(err)
	}
	rememberIDs("board-a")
	again, err := os.ReadFile(seenPath())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, again) {
		t.Fatalf("a fresh entry was rewritten:\n%s\n%s", first, again)
	}
	rememberIDs("board-b")
	if seen := readSeen(); len(seen) != 2 || seen["board-a"].IsZero() || seen["board-b"].IsZero() {
		t.Fatalf("seen %v, want board-a and board-b", seen)
	}
}
