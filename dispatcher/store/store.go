// Package store keeps the dispatcher's records in an embedded SQLite
// database (modernc.org/sqlite: pure Go, no cgo), or in PostgreSQL
// (github.com/jackc/pgx/v5) when several lab services share one:
// rollouts, each board's result in a rollout, board sightings (first and
// last seen, boot ids, versions), the lab service's inventory, leases and
// audit log, which service owns which board (claims), and the parts of a
// rollout started on the other services (RolloutPart). It is what lets
// an interrupted rollout resume: every board's phase, result and OTA
// update id are written as they change.
//
// One Store is safe for use by many goroutines. On SQLite it holds one
// connection (SQLite allows one writer at a time anyway), so calls are
// serialized; the database is in WAL mode, so another process (`boardlink
// history`) can read while a rollout writes. On Postgres several
// processes write at once: what must not be lost (a board held by two
// leases, a board owned by two services) is decided by row locks and
// unique keys in one transaction, never by a read then a write.
//
// The schema is versioned by the schema_version table and migrated forward
// by Open from the list of migrations in this package; a database written
// by a newer boardlink (a higher version than this one knows) is refused
// with ErrSchemaTooNew rather than guessed at.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// Errors callers can test for with errors.Is.
var (
	// ErrNotFound: no rollout (or board) has that id.
	ErrNotFound = errors.New("not found")
	// ErrAmbiguous: a rollout id prefix matches more than one rollout.
	ErrAmbiguous = errors.New("ambiguous")
	// ErrExists: CreateRollout was given an id already in use, or PutLease
	// a queue number (Seq) another lease has.
	ErrExists = errors.New("already exists")
	// ErrConflict: a board is held by another lease (PutLease).
	ErrConflict = errors.New("conflict")
	// ErrOver: a rollout is over, which StopRollout refuses.
	ErrOver = errors.New("over")
	// ErrSchemaTooNew: the database was written by a newer boardlink.
	ErrSchemaTooNew = errors.New("database schema is newer than this boardlink")
)

// busyTimeout is how long a write waits for another process's write
// transaction (a second dispatcher, say) before failing with SQLITE_BUSY.
const busyTimeout = 10 * time.Second

// Store is an open records database. Its methods are safe for concurrent
// use.
type Store struct {
	sqldb *sql.DB
	db    handle // sqldb, its queries rewritten for the engine
	d     *dialect
	path  string // the file, or the Postgres database without its password
}

// DefaultPath is where the records live unless told otherwise: $BOARDLINK_DB
// if set, else $XDG_STATE_HOME/boardlink/boardlink.db, else
// ~/.local/state/boardlink/boardlink.db.
func DefaultPath() string {
	if p := os.Getenv("BOARDLINK_DB"); p != "" {
		return p
	}
	// The XDG spec says a relative $XDG_STATE_HOME is invalid and ignored.
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "boardlink", "boardlink.db")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return filepath.Join(os.TempDir(), "boardlink", "boardlink.db")
	}
	return filepath.Join(home, ".local", "state", "boardlink", "boardlink.db")
}

// Open opens the database at path (DefaultPath when empty), creating it and
// its directory if needed, and migrates it to the current schema. It sets
// WAL mode, synchronous=NORMAL (a killed dispatcher loses nothing; a power
// cut may lose the last writes, never the database), a busy timeout and
// foreign keys.
//
// A path that starts with postgres://, postgresql:// or host= is a
// PostgreSQL connection string (libpq's forms, as pgx reads them): the
// database must exist; Open creates the tables.
func Open(ctx context.Context, path string) (*Store, error) {
	if IsPostgres(path) {
		return openPostgres(ctx, path)
	}
	if path == "" {
		path = DefaultPath()
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	db, err := sql.Open("sqlite", dsn(abs))
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	// One connection: writes are serialized here instead of failing with
	// SQLITE_BUSY, and the pragmas of the DSN hold for it.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	s := newStore(db, &dialect{}, abs)
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	return s, nil
}

// postgresConns bounds one Store's connections to Postgres: enough for a
// service's writers and readers at once, few enough that several services
// stay well under the server's max_connections (100 by default).
const postgresConns = 8

func openPostgres(ctx context.Context, dsn string) (*Store, error) {
	name, err := postgresName(dsn)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", name, err)
	}
	db.SetMaxOpenConns(postgresConns)
	db.SetMaxIdleConns(postgresConns)
	s := newStore(db, &dialect{postgres: true}, name)
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", name, err)
	}
	return s, nil
}

func newStore(db *sql.DB, d *dialect, path string) *Store {
	return &Store{sqldb: db, db: handle{db, d}, d: d, path: path}
}

// dsn is the driver's name for the database file: a file: URI (so that
// any character in the path is escaped) with the per-connection pragmas.
func dsn(abs string) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(1)")
	// Write transactions take the write lock when they begin, so two
	// processes never deadlock upgrading a read lock.
	q.Set("_txlock", "immediate")
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs), OmitHost: true, RawQuery: q.Encode()}
	return u.String()
}

// Path is the absolute path of the database file; for PostgreSQL, a
// postgres:// URL of the database without its password.
func (s *Store) Path() string { return s.path }

// Dir is the directory beside which the database's users keep their own
// files: the database file's, or for PostgreSQL that of DefaultPath.
func (s *Store) Dir() string {
	if s.d.postgres {
		return filepath.Dir(DefaultPath())
	}
	return filepath.Dir(s.path)
}

// Close closes the database.
func (s *Store) Close() error { return s.sqldb.Close() }

// tx runs fn in a write transaction, committing if fn returns nil. On
// SQLite it is BEGIN IMMEDIATE (the write lock from the start); on
// Postgres, READ COMMITTED, with the row locks and unique keys each
// writer takes saying who wins.
func (s *Store) tx(ctx context.Context, fn func(handle) error) error {
	tx, err := s.sqldb.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(handle{tx, s.d}); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Times are stored as INTEGER unix nanoseconds, NULL for the zero time, and
// read back in UTC.

func dbTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixNano()
}

func goTime(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}
