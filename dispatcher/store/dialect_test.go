package store

import "testing"

func TestRebind(t *testing.T) {
	pg := &dialect{postgres: true}
	tests := []struct{ in, want string }{
		{`SELECT a FROM t WHERE b = ? AND c IN (?, ?)`, `SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)`},
		{`UPDATE t SET x = ?2 WHERE id = ?1 OR y = ?12`, `UPDATE t SET x = $2 WHERE id = $1 OR y = $12`},
		{`SELECT '?', 'it''s ?' FROM t WHERE a = ?`, `SELECT '?', 'it''s ?' FROM t WHERE a = $1`},
		{`SELECT 1`, `SELECT 1`},
	}
	for _, tc := range tests {
		if got := pg.rebind(tc.in); got != tc.want {
			t.Errorf("%s\n got %s\nwant %s", tc.in, got, tc.want)
		}
		if got := pg.rebind(tc.in); got != tc.want { // from the cache
			t.Errorf("cached: %s", got)
		}
		if got := (&dialect{}).rebind(tc.in); got != tc.in {
			t.Errorf("sqlite changed %s to %s", tc.in, got)
		}
	}
}

func TestIsPostgres(t *testing.T) {
	for dsn, want := range map[string]bool{
		"postgres://u@h/db": true, "postgresql:///db?host=/run": true, "host=/run dbname=lab": true,
		"": false, "/var/lib/boardlink/lab.db": false, "postgres.db": false, "hostname.db": false,
	} {
		if IsPostgres(dsn) != want {
			t.Errorf("IsPostgres(%q) = %v", dsn, !want)
		}
	}
}
