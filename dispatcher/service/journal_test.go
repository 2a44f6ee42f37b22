package service

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/boardlink/boardlink/dispatcher/store"
)

// TestJournalFlushWaitsForWriter: what was recorded before a flush is in
// the store when the flush returns, even when the background writer had
// taken it first and was still writing (the dashboard's sign-in once read
// the audit log before its entry was written: TestDashboardSignIn in CI).
func TestJournalFlushWaitsForWriter(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "lab.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	j := newJournal(st, slog.New(slog.DiscardHandler))
	done := make(chan struct{})
	go func() { defer close(done); j.run(ctx) }()
	defer func() { cancel(); <-done }()
	for i := range 200 {
		action := fmt.Sprintf("test.%d", i)
		j.audit(store.AuditEntry{User: "alice", Action: action, Result: "ok"})
		if err := j.flush(ctx); err != nil {
			t.Fatal(err)
		}
		es, err := st.Audit(ctx, store.AuditFilter{Action: action})
		if err != nil || len(es) != 1 {
			t.Fatalf("entry %d after flush: %+v %v", i, es, err)
		}
	}
}
