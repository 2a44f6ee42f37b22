package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// migrations are the schema, forward only: migrations[i] takes the
// database from version i to version i+1. Never edit one that has been
// released; append a new one.
//
// Times are 64-bit integer unix nanoseconds (NULL: not yet). The type words
// in braces are filled for the engine (dialect.ddl); SQLite tables are
// STRICT so that a wrong type is an error, not a silent conversion.
var migrations = []string{
	// 1: rollouts, per-board results, sightings and their boots.
	`
CREATE TABLE rollouts (
	id           TEXT PRIMARY KEY,
	image        TEXT NOT NULL DEFAULT '',
	image_sha256 TEXT NOT NULL DEFAULT '',
	version      TEXT NOT NULL DEFAULT '',
	selector     TEXT NOT NULL DEFAULT '',
	concurrency  {int} NOT NULL DEFAULT 0,
	max_failures {int} NOT NULL DEFAULT 0,
	plan         {blob},
	state        TEXT NOT NULL,
	created      {int} NOT NULL,
	updated      {int} NOT NULL
) {strict};
CREATE INDEX rollouts_by_created ON rollouts (created DESC, id DESC);

CREATE TABLE board_results (
	rollout_id   TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
	board_id     TEXT NOT NULL,
	address      TEXT NOT NULL DEFAULT '',
	phase        TEXT NOT NULL,
	result       TEXT NOT NULL DEFAULT '',
	reason       TEXT NOT NULL DEFAULT '',
	from_version TEXT NOT NULL DEFAULT '',
	to_version   TEXT NOT NULL DEFAULT '',
	bytes_sent   {int} NOT NULL DEFAULT 0,
	attempts     {int} NOT NULL DEFAULT 0,
	started      {int},
	ended        {int},
	update_id    TEXT NOT NULL DEFAULT '',
	PRIMARY KEY (rollout_id, board_id)
) {strict};
CREATE INDEX board_results_by_result ON board_results (rollout_id, result);

CREATE TABLE sightings (
	board_id   TEXT PRIMARY KEY,
	address    TEXT NOT NULL DEFAULT '',
	model      TEXT NOT NULL DEFAULT '',
	labels     TEXT NOT NULL DEFAULT '{}',
	boot_id    TEXT NOT NULL DEFAULT '',
	version    TEXT NOT NULL DEFAULT '',
	first_seen {int} NOT NULL,
	last_seen  {int} NOT NULL
) {strict};

CREATE TABLE boots (
	board_id   TEXT NOT NULL REFERENCES sightings (board_id) ON DELETE CASCADE,
	boot_id    TEXT NOT NULL,
	version    TEXT NOT NULL DEFAULT '',
	first_seen {int} NOT NULL,
	last_seen  {int} NOT NULL,
	PRIMARY KEY (board_id, boot_id)
) {strict};
`,
	// 2: the lab service (boardlink serve): its board inventory, leases
	// and audit log.
	`
CREATE TABLE lab_boards (
	id        TEXT PRIMARY KEY,
	address   TEXT NOT NULL DEFAULT '',
	source    TEXT NOT NULL DEFAULT '',
	model     TEXT NOT NULL DEFAULT '',
	labels    TEXT NOT NULL DEFAULT '{}',
	state     TEXT NOT NULL,
	reason    TEXT NOT NULL DEFAULT '',
	boot_id   TEXT NOT NULL DEFAULT '',
	failures  {int} NOT NULL DEFAULT 0,
	last_seen {int},
	updated   {int} NOT NULL
) {strict};

CREATE TABLE leases (
	id         TEXT PRIMARY KEY,
	seq        {int} NOT NULL UNIQUE,
	holder     TEXT NOT NULL,
	state      TEXT NOT NULL,
	selector   TEXT NOT NULL DEFAULT '{}',
	want_ids   TEXT NOT NULL DEFAULT '[]',
	count      {int} NOT NULL,
	boards     TEXT NOT NULL DEFAULT '[]',
	ttl        {int} NOT NULL,
	created    {int} NOT NULL,
	wait_until {int},
	granted    {int},
	renewed    {int} NOT NULL,
	expires    {int} NOT NULL,
	until      {int},
	ended      {int},
	end_reason TEXT NOT NULL DEFAULT ''
) {strict};
CREATE INDEX leases_open ON leases (seq) WHERE ended IS NULL;
CREATE INDEX leases_by_created ON leases (created DESC);

CREATE TABLE audit (
	seq    {serial},
	at     {int} NOT NULL,
	"user" TEXT NOT NULL,
	action TEXT NOT NULL,
	board  TEXT NOT NULL DEFAULT '',
	lease  TEXT NOT NULL DEFAULT '',
	result TEXT NOT NULL,
	detail TEXT NOT NULL DEFAULT ''
) {strict};
CREATE INDEX audit_by_at ON audit (at);
CREATE INDEX audit_by_board ON audit (board, at);
`,
	// 3: several services on one database. lease_boards: the open lease
	// that holds each board, one at most by its key, until it expires
	// unless renewed. board_claims: the service that owns (reaches and
	// drives) each board, until its claim expires unless renewed.
	// counters: numbers the services share (the lease queue's).
	`
CREATE TABLE lease_boards (
	board_id TEXT PRIMARY KEY,
	lease_id TEXT NOT NULL,
	expires  {int} NOT NULL
) {strict};
CREATE INDEX lease_boards_by_lease ON lease_boards (lease_id);

CREATE TABLE board_claims (
	board_id TEXT PRIMARY KEY,
	owner    TEXT NOT NULL,
	claimed  {int} NOT NULL,
	renewed  {int} NOT NULL,
	expires  {int} NOT NULL
) {strict};
CREATE INDEX board_claims_by_owner ON board_claims (owner);
CREATE INDEX board_claims_by_expires ON board_claims (expires);

CREATE TABLE counters (
	name  TEXT PRIMARY KEY,
	value {int} NOT NULL
) {strict};
INSERT INTO counters (name, value) SELECT 'lease_seq', coalesce(max(seq), 0) FROM leases;
`,
	// 4: which service last drove each board of the inventory, which
	// granted each lease (and keeps it), and the services themselves with
	// the URL the others reach them at.
	`
ALTER TABLE lab_boards ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE leases ADD COLUMN home TEXT NOT NULL DEFAULT '';

CREATE TABLE lab_instances (
	owner   TEXT PRIMARY KEY,
	url     TEXT NOT NULL DEFAULT '',
	started {int} NOT NULL,
	renewed {int} NOT NULL
) {strict};
`,
	// 5: each board result's last write, so that a board's write need
	// not touch its rollout's row (a rollout's boards queued on that
	// row's lock): a rollout's Updated is the latest of both.
	`
ALTER TABLE board_results ADD COLUMN updated {int} NOT NULL DEFAULT 0;
`,
	// 6: the parts of a rollout started through one service (home, which
	// keeps the image) for the boards other services own: each waits for
	// an owner that could not be reached until it is back (rollout_id is
	// the id the part's rollout gets on its owner, chosen when it is
	// first tried, so that it starts there at most once).
	`
CREATE TABLE rollout_parts (
	parent     TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
	owner      TEXT NOT NULL,
	home       TEXT NOT NULL,
	boards     TEXT NOT NULL DEFAULT '[]',
	request    TEXT NOT NULL DEFAULT '{}',
	requester  TEXT NOT NULL DEFAULT '',
	rollout_id TEXT NOT NULL DEFAULT '',
	state      TEXT NOT NULL,
	error      TEXT NOT NULL DEFAULT '',
	attempts   {int} NOT NULL DEFAULT 0,
	refusals   {int} NOT NULL DEFAULT 0,
	tried      {int},
	next_try   {int},
	created    {int} NOT NULL,
	updated    {int} NOT NULL,
	PRIMARY KEY (parent, owner)
) {strict};
CREATE INDEX rollout_parts_by_home ON rollout_parts (home, state);
`,
	// 7: a board's place on its rollout's page (result_rank: failed in
	// any way 0, running 1, pending 2, skipped 3, committed 4), computed
	// by the database from phase and result so that no write can leave
	// it stale; and the indexes that read a rollout's page without
	// sorting or reading all its rows: one page of its boards in that
	// order or of one result (board_results_by_result gains board_id),
	// its counts by phase and result, and its latest board write (its
	// Updated).
	`
ALTER TABLE board_results ADD COLUMN result_rank {int} GENERATED ALWAYS AS (CASE
	WHEN result = 'committed' THEN 4 WHEN result = 'skipped' THEN 3
	WHEN result = '' AND phase = 'plan' THEN 2 WHEN result = '' THEN 1 ELSE 0 END) {generated};
CREATE INDEX board_results_by_rank ON board_results (rollout_id, result_rank, board_id);
DROP INDEX board_results_by_result;
CREATE INDEX board_results_by_result ON board_results (rollout_id, result, board_id);
CREATE INDEX board_results_by_phase ON board_results (rollout_id, phase, result);
CREATE INDEX board_results_by_updated ON board_results (rollout_id, updated);
`,
	// 8: a stop asked of a rollout by hand (who asked it: "" none), on
	// record so that the service running it stops it even if it was away
	// when it was asked; and since when each part waits for its owner
	// (its creation, until a given-up part is tried again), to give it up
	// after its rollout's part wait.
	`
ALTER TABLE rollouts ADD COLUMN stop TEXT NOT NULL DEFAULT '';
ALTER TABLE rollout_parts ADD COLUMN waiting_since {int} NOT NULL DEFAULT 0;
UPDATE rollout_parts SET waiting_since = created;
`,
}

// SchemaVersion is the schema version this package writes.
func SchemaVersion() int { return len(migrations) }

// migrate brings the database to SchemaVersion, each migration in its own
// transaction together with its version bump, and refuses a database whose
// version is higher.
func (s *Store) migrate(ctx context.Context) error {
	for {
		done := false
		err := s.tx(ctx, func(tx handle) error {
			if err := s.d.migrationLock(ctx, tx); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx,
				`CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
				return err
			}
			var v int
			err := tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
			if errors.Is(err, sql.ErrNoRows) {
				_, err = tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (0)`)
			}
			if err != nil {
				return err
			}
			switch {
			case v > len(migrations):
				return fmt.Errorf("%w: it is at schema version %d and this boardlink knows versions up to %d; "+
					"use a newer boardlink, or another --db", ErrSchemaTooNew, v, len(migrations))
			case v == len(migrations):
				done = true
				return nil
			}
			if _, err := tx.ExecContext(ctx, s.d.ddl(migrations[v])); err != nil {
				return fmt.Errorf("migration to schema version %d: %w", v+1, err)
			}
			_, err = tx.ExecContext(ctx, `UPDATE schema_version SET version = ?`, v+1)
			return err
		})
		if err != nil || done {
			return err
		}
	}
}
