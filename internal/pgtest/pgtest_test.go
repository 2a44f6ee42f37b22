package pgtest

import (
	"context"
	"database/sql"
	"os"
	"testing"
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
