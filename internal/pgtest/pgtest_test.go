package pgtest

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestNew: each test gets its own empty database, on a server that
// listens on no TCP address.
func TestNew(t *testing.T) {
	ctx := context.Background()
	a, b := New(t), New(t)
	if a == b {
		t.Fatalf("the same database twice: %s", a)
	}
	for _, dsn := range []string{a, b} {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var listen string
		var tables int
		if err := db.QueryRowContext(ctx, `SHOW listen_addresses`).Scan(&listen); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`).Scan(&tables); err != nil {
			t.Fatal(err)
		}
		if listen != "" || tables != 0 {
			t.Fatalf("%s: listen_addresses %q, %d tables", dsn, listen, tables)
		}
		if _, err := db.ExecContext(ctx, `CREATE TABLE mine (x int)`); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOutlivesEndedThreads: a cluster started from a goroutine on a
// thread of its own (not the main thread, which Go never ends), which
// then lets the thread go, lives on while goroutines end locked to their
// threads (as netlab's Dialer did), which ends the threads with them: the
// thread that started the postmaster, whose end would send it its
// parent-death signal (SIGQUIT), is never one of them; the postmaster
// answers on its socket.
func TestOutlivesEndedThreads(t *testing.T) {
	_, err := binDir()
	if err != nil {
		testenv.SkipOrFail(t, "no PostgreSQL (apt-get install postgresql): %v", err)
	}
	var c *Cluster
	testenv.OnPooledThread(func() { c, err = Start(context.Background()) })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	starter := c.c.starter
	for range 200 {
		ended := make(chan int)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			ended <- unix.Gettid()
		}()
		if tid := <-ended; tid == starter {
			t.Fatalf("a goroutine ended locked to the postmaster's starting thread %d", tid)
		}
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", starter)); err != nil {
		t.Fatalf("the postmaster's starting thread: %v", err)
	}
	dsn, err := c.CreateDatabase(context.Background(), "outlives")
	if err != nil {
		t.Fatalf("after threads ended: %v\n%s", err, c.c.log)
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.PingContext(context.Background()); err != nil {
		t.Fatalf("after threads ended: %v\n%s", err, c.c.log)
	}
}
