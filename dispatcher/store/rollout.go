package store

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Rollout states.
const (
	StateRunning = "running" // started, or interrupted while running (resume it)
	StateDone    = "done"    // every board has a result
	StateStopped = "stopped" // stopped early: too many failures, or by hand
)

// Board phases in a rollout.
const (
	PhasePlan    = "plan"    // chosen; nothing done on the board yet
	PhasePrepare = "prepare" // the board is writing its inactive slot (UpdateID set)
	PhaseExecute = "execute" // activate, reboot, trial boot, health check, commit
	PhaseGate    = "gate"    // committed; the rollout's gate runs on it
	PhaseDone    = "done"    // Result says how it ended
)

// Board results. Result is open-ended: these are the ones boardlink writes
// today.
const (
	ResultCommitted    = "committed"
	ResultRolledBack   = "rolled_back"
	ResultFailed       = "failed"
	ResultSkipped      = "skipped"
	ResultUnreachable  = "unreachable"
	ResultIncompatible = "incompatible"
)

// Summary keys for boards that have no Result yet.
const (
	SummaryPending = "pending" // Result "" and Phase "plan"
	SummaryRunning = "running" // Result "" in any other phase
)

// Rollout is one staged OTA rollout.
type Rollout struct {
	ID          string `json:"id"`
	Image       string `json:"image"`        // the image file's path
	ImageSHA256 string `json:"image_sha256"` // the payload's sha256
	Version     string `json:"version"`      // the image's version
	Selector    string `json:"selector"`     // which boards, as given (e.g. "model=imx8")
	Concurrency int    `json:"concurrency"`
	MaxFailures int    `json:"max_failures"`
	// Plan is the JSON of the plan saved or used; the store only keeps it.
	// Rollouts leaves it nil; Rollout fills it.
	Plan    json.RawMessage `json:"plan,omitempty"`
	State   string          `json:"state"` // StateRunning, StateDone or StateStopped
	Created time.Time       `json:"created"`
	Updated time.Time       `json:"updated"` // the last write to the rollout or any of its boards
	// Stop is who stopped the rollout by hand ("stopped by alice"; "":
	// nobody): the service that runs it stops at its boards' safe points
	// once it reads it (StopRollout).
	Stop string `json:"stop,omitempty"`

	// Computed on read, ignored by CreateRollout: how many boards, and how
	// many per Result (SummaryPending and SummaryRunning for those with
	// none yet).
	Boards  int            `json:"boards"`
	Summary map[string]int `json:"summary"`
}

// BoardResult is one board's part in a rollout.
type BoardResult struct {
	RolloutID   string    `json:"rollout_id"`
	BoardID     string    `json:"board_id"`
	Address     string    `json:"address"`
	Phase       string    `json:"phase"`  // PhasePlan, PhasePrepare, PhaseExecute or PhaseDone
	Result      string    `json:"result"` // "" while under way, else ResultCommitted, ResultFailed...
	Reason      string    `json:"reason,omitempty"`
	FromVersion string    `json:"from_version"`
	ToVersion   string    `json:"to_version"`
	BytesSent   int64     `json:"bytes_sent"`
	Attempts    int       `json:"attempts"`
	Started     time.Time `json:"started,omitzero"`
	Ended       time.Time `json:"ended,omitzero"`
	UpdateID    string    `json:"update_id,omitempty"` // the board's OTA update id, to resume it
}

// summaryKey is the Summary key a board counts under.
func summaryKey(phase, result string) string {
	switch {
	case result != "":
		return result
	case phase == PhasePlan:
		return SummaryPending
	}
	return SummaryRunning
}

// NewRolloutID returns a new rollout id, "r-YYYYMMDD-HHMM-xxxx": the UTC
// time to the minute and 16 random bits. Ids sort by creation time to the
// minute.
func NewRolloutID() string { return newRolloutID(time.Now()) }

func newRolloutID(t time.Time) string {
	var b [2]byte
	rand.Read(b[:])
	return "r-" + t.UTC().Format("20060102-1504") + "-" + hex.EncodeToString(b[:])
}

func validState(s string) bool {
	return s == StateRunning || s == StateDone || s == StateStopped
}

func validPhase(p string) bool {
	return p == PhasePlan || p == PhasePrepare || p == PhaseExecute || p == PhaseGate || p == PhaseDone
}

// CreateRollout records a new rollout. r.ID is required; an empty State is
// StateRunning, a zero Created is now, a zero Updated is Created. Plan, if
// set, must be JSON. An id in use is ErrExists.
func (s *Store) CreateRollout(ctx context.Context, r Rollout) error {
	if r.ID == "" {
		return errors.New("store: rollout id is empty")
	}
	if r.State == "" {
		r.State = StateRunning
	}
	if !validState(r.State) {
		return fmt.Errorf("store: rollout %s: unknown state %q", r.ID, r.State)
	}
	if len(r.Plan) > 0 && !json.Valid(r.Plan) {
		return fmt.Errorf("store: rollout %s: the plan is not JSON", r.ID)
	}
	if r.Created.IsZero() {
		r.Created = time.Now()
	}
	if r.Updated.IsZero() {
		r.Updated = r.Created
	}
	var plan any
	if len(r.Plan) > 0 {
		plan = []byte(r.Plan)
	}
	// One statement, so that two services creating the same id cannot
	// both see it free.
	res, err := s.db.ExecContext(ctx, `INSERT INTO rollouts
		(id, image, image_sha256, version, selector, concurrency, max_failures, plan, state, created, updated)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
		r.ID, r.Image, r.ImageSHA256, r.Version, r.Selector, r.Concurrency, r.MaxFailures, plan,
		r.State, dbTime(r.Created), dbTime(r.Updated))
	if err != nil {
		return fmt.Errorf("store: create rollout: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return fmt.Errorf("store: create rollout: rollout %s: %w", r.ID, cmp.Or(err, ErrExists))
	}
	return nil
}

// SetRolloutState sets the state of rollout id (exact id) and its Updated
// time. An unknown id is ErrNotFound.
func (s *Store) SetRolloutState(ctx context.Context, id, state string) error {
	if !validState(state) {
		return fmt.Errorf("store: rollout %s: unknown state %q", id, state)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE rollouts SET state = ?, updated = ? WHERE id = ?`,
		state, dbTime(time.Now()), id)
	if err != nil {
		return fmt.Errorf("store: set rollout state: %w", err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return fmt.Errorf("store: rollout %s: %w", id, ErrNotFound)
	}
	return nil
}

// StopRollout records that rollout id (exact id) is stopped by hand,
// why (who stopped it), unless a stop is on record already: the first
// stop's reason stays. It reports whether this one was recorded. An
// unknown id is ErrNotFound; one that is over is ErrOver: it no longer
// runs, none of its parts waits, starts or runs, and none was given up
// (a retry could still start it). The check and the write are one
// statement, so that a stop and the rollout's end do not cross: a stop
// is never on record on a rollout that had ended.
func (s *Store) StopRollout(ctx context.Context, id, why string) (bool, error) {
	if why == "" {
		return false, fmt.Errorf("store: stop rollout %s: the reason is empty", id)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE rollouts SET stop = ?, updated = ? WHERE id = ? AND stop = '' AND `+stoppable,
		why, dbTime(time.Now()), id)
	if err != nil {
		return false, fmt.Errorf("store: stop rollout %s: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil || n > 0 {
		return n > 0, err
	}
	var stop string
	err = s.db.QueryRowContext(ctx, `SELECT stop FROM rollouts WHERE id = ?`, id).Scan(&stop)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, fmt.Errorf("store: stop rollout %s: %w", id, ErrNotFound)
	case err == nil && stop == "":
		return false, fmt.Errorf("store: stop rollout %s: %w", id, ErrOver)
	}
	return false, err
}

// stoppable is true of a rollout (row of rollouts) that a stop still
// changes: see StopRollout.
var stoppable = `(state = '` + StateRunning + `' OR EXISTS (SELECT 1 FROM rollout_parts p WHERE p.parent = rollouts.id AND
	(p.state IN ('` + string(PartWaiting) + `', '` + string(PartStarting) + `', '` + string(PartGivenUp) + `') OR
	p.state = '` + string(PartStarted) + `' AND EXISTS (SELECT 1 FROM rollouts c WHERE c.id = p.rollout_id AND c.state = '` +
	StateRunning + `'))))`

// RolloutStops returns, by id, the stops on record of the rollouts ids
// (exact ids) stopped by hand; the others are left out.
func (s *Store) RolloutStops(ctx context.Context, ids []string) (map[string]string, error) {
	out := map[string]string{}
	for chunk := range slices.Chunk(ids, boardsPerInsert) {
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		rows, err := s.db.QueryContext(ctx, `SELECT id, stop FROM rollouts WHERE stop <> '' AND id IN (`+placeholders(len(chunk))+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("store: rollout stops: %w", err)
		}
		for rows.Next() {
			var id, why string
			if err := rows.Scan(&id, &why); err != nil {
				rows.Close()
				return nil, fmt.Errorf("store: rollout stops: %w", err)
			}
			out[id] = why
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("store: rollout stops: %w", err)
		}
	}
	return out, nil
}

// PutBoard stores b as the row of board b.BoardID in rollout b.RolloutID
// (exact id), replacing the whole row if there is one, stamped with the
// time: the rollout's Updated is its latest board's. An empty Phase is
// PhasePlan. A rollout that does not exist is ErrNotFound.
func (s *Store) PutBoard(ctx context.Context, b BoardResult) error {
	return s.PutBoards(ctx, b.RolloutID, []BoardResult{b})
}

// boardsPerInsert bounds the rows of one INSERT: 14 parameters each, well
// under SQLite's 32,766 and Postgres's 65,535.
const boardsPerInsert = 256

// PutBoards is PutBoard of every board of bs, all of rollout rolloutID,
// in as few statements as it takes: a rollout's plan records all its
// boards at once (one statement a board was minutes at 2,500 boards).
func (s *Store) PutBoards(ctx context.Context, rolloutID string, bs []BoardResult) error {
	if rolloutID == "" {
		return errors.New("store: put boards: the rollout id is empty")
	}
	args := make([]any, 0, min(len(bs), boardsPerInsert)*14)
	now := dbTime(time.Now())
	for i := range bs {
		b := &bs[i]
		if b.RolloutID != rolloutID || b.BoardID == "" {
			return fmt.Errorf("store: put board: rollout id %q (want %q) and board id %q must both be set", b.RolloutID, rolloutID, b.BoardID)
		}
		if b.Phase == "" {
			b.Phase = PhasePlan
		}
		if !validPhase(b.Phase) {
			return fmt.Errorf("store: board %s: unknown phase %q", b.BoardID, b.Phase)
		}
	}
	// The rollout's row is only read: a rollout's boards are written at
	// once (-C of them), and each taking the row's lock queued them all.
	var one int
	err := s.db.QueryRowContext(ctx, `SELECT 1 FROM rollouts WHERE id = ?`, rolloutID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("store: put boards: rollout %s: %w", rolloutID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("store: put boards of %s: %w", rolloutID, err)
	}
	for chunk := range slices.Chunk(bs, boardsPerInsert) {
		args = args[:0]
		for _, b := range chunk {
			args = append(args, b.RolloutID, b.BoardID, b.Address, b.Phase, b.Result, b.Reason, b.FromVersion, b.ToVersion,
				b.BytesSent, b.Attempts, dbTime(b.Started), dbTime(b.Ended), b.UpdateID, now)
		}
		values := strings.TrimSuffix(strings.Repeat("("+placeholders(14)+"), ", len(chunk)), ", ")
		_, err := s.db.ExecContext(ctx, `INSERT INTO board_results
			(rollout_id, board_id, address, phase, result, reason, from_version, to_version,
			 bytes_sent, attempts, started, ended, update_id, updated)
			VALUES `+values+`
			ON CONFLICT (rollout_id, board_id) DO UPDATE SET
				address = excluded.address, phase = excluded.phase, result = excluded.result,
				reason = excluded.reason, from_version = excluded.from_version,
				to_version = excluded.to_version, bytes_sent = excluded.bytes_sent,
				attempts = excluded.attempts, started = excluded.started, ended = excluded.ended,
				update_id = excluded.update_id, updated = `+sqlMax("board_results.updated", "excluded.updated"), args...)
		if err != nil {
			if len(bs) == 1 {
				return fmt.Errorf("store: put board %s: %w", bs[0].BoardID, err)
			}
			return fmt.Errorf("store: put %d boards of %s: %w", len(bs), rolloutID, err)
		}
	}
	return nil
}

// rolloutColumns are a rollout's columns. Its state reads running while
// a part of it may still start on another service (the row's state is
// its own boards'), and stopped when one never will; its updated is the
// latest of its row's, its boards' and its parts'.
var rolloutColumns = `id, image, image_sha256, version, selector, concurrency, max_failures,
	CASE WHEN EXISTS (SELECT 1 FROM rollout_parts p WHERE p.parent = rollouts.id AND p.state IN ('` +
	string(PartWaiting) + `', '` + string(PartStarting) + `')) THEN '` + StateRunning + `'
	WHEN state = '` + StateDone + `' AND EXISTS (SELECT 1 FROM rollout_parts p WHERE p.parent = rollouts.id AND p.state IN ('` +
	string(PartGivenUp) + `', '` + string(PartCancelled) + `')) THEN '` + StateStopped + `'
	ELSE state END, created, ` +
	sqlMax(sqlMax("updated", "(SELECT coalesce(max(br.updated), 0) FROM board_results br WHERE br.rollout_id = rollouts.id)"),
		"(SELECT coalesce(max(p.updated), 0) FROM rollout_parts p WHERE p.parent = rollouts.id)") + `, stop`

func scanRollout(sc interface{ Scan(...any) error }, extra ...any) (Rollout, error) {
	var (
		r                Rollout
		created, updated sql.NullInt64
	)
	err := sc.Scan(append([]any{&r.ID, &r.Image, &r.ImageSHA256, &r.Version, &r.Selector,
		&r.Concurrency, &r.MaxFailures, &r.State, &created, &updated, &r.Stop}, extra...)...)
	r.Created, r.Updated = goTime(created), goTime(updated)
	r.Summary = map[string]int{}
	return r, err
}

// RunningRollouts returns the ids of the rollouts in StateRunning (under
// way, or interrupted by a kill), oldest first.
func (s *Store) RunningRollouts(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM rollouts WHERE state = ? ORDER BY created, id`, StateRunning)
	if err != nil {
		return nil, fmt.Errorf("store: running rollouts: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("store: running rollouts: %w", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: running rollouts: %w", err)
	}
	return ids, nil
}

// RolloutCount is how many boards of a running rollout are at one phase
// with one result, of those one service owns.
type RolloutCount struct {
	Rollout string
	// Owner is the service whose claim holds the boards at the time asked
	// ("": none, or one that expired).
	Owner  string
	Phase  string
	Result string
	Boards int
}

// RolloutCounts counts the boards of the running rollouts (the limit
// oldest) by rollout, owner at now, phase and result, in one query: what
// a metrics scrape reads, without the rows.
func (s *Store) RolloutCounts(ctx context.Context, now time.Time, limit int) ([]RolloutCount, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT br.rollout_id, CASE WHEN c.expires > ? THEN c.owner ELSE '' END,
		br.phase, br.result, COUNT(*)
		FROM board_results br
		JOIN (SELECT id FROM rollouts WHERE state = ? ORDER BY created, id LIMIT ?) r ON r.id = br.rollout_id
		LEFT JOIN board_claims c ON c.board_id = br.board_id
		GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4`, now.UnixNano(), StateRunning, limit)
	if err != nil {
		return nil, fmt.Errorf("store: rollout counts: %w", err)
	}
	defer rows.Close()
	var out []RolloutCount
	for rows.Next() {
		var c RolloutCount
		if err := rows.Scan(&c.Rollout, &c.Owner, &c.Phase, &c.Result, &c.Boards); err != nil {
			return nil, fmt.Errorf("store: rollout counts: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: rollout counts: %w", err)
	}
	return out, nil
}

// ResolveRollout returns the id of the one rollout whose id is id or, failing
// that, begins with id. None is ErrNotFound; more than one is ErrAmbiguous
// (the error names a few).
func (s *Store) ResolveRollout(ctx context.Context, id string) (string, error) {
	if id == "" {
		return "", fmt.Errorf("store: empty rollout id: %w", ErrNotFound)
	}
	var got string
	err := s.db.QueryRowContext(ctx, `SELECT id FROM rollouts WHERE id = ?`, id).Scan(&got)
	if err == nil {
		return got, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("store: %w", err)
	}
	rows, err := s.db.QueryContext(ctx,
		`SELECT id FROM rollouts WHERE substr(id, 1, length(CAST(?1 AS TEXT))) = ?1 ORDER BY id LIMIT 4`, id)
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	var ids []string
	for rows.Next() {
		if err := rows.Scan(&got); err != nil {
			rows.Close()
			return "", fmt.Errorf("store: %w", err)
		}
		ids = append(ids, got)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	switch len(ids) {
	case 0:
		return "", fmt.Errorf("store: no rollout %q: %w", id, ErrNotFound)
	case 1:
		return ids[0], nil
	}
	more := ""
	if len(ids) > 3 {
		ids, more = ids[:3], ", ..."
	}
	return "", fmt.Errorf("store: rollout id %q is %w: it matches %s%s", id, ErrAmbiguous, strings.Join(ids, ", "), more)
}

// Rollout returns the rollout whose id is id, or the only one whose id
// begins with id (see ResolveRollout), with its plan and its boards sorted
// by board id.
func (s *Store) Rollout(ctx context.Context, id string) (Rollout, []BoardResult, error) {
	full, err := s.ResolveRollout(ctx, id)
	if err != nil {
		return Rollout{}, nil, err
	}
	var plan []byte
	r, err := scanRollout(s.db.QueryRowContext(ctx,
		`SELECT `+rolloutColumns+`, plan FROM rollouts WHERE id = ?`, full), &plan)
	if errors.Is(err, sql.ErrNoRows) { // deleted in between
		return Rollout{}, nil, fmt.Errorf("store: no rollout %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Rollout{}, nil, fmt.Errorf("store: rollout %s: %w", full, err)
	}
	if len(plan) > 0 {
		r.Plan = plan
	}
	boards, err := s.boards(ctx, full, nil)
	if err != nil {
		return Rollout{}, nil, err
	}
	for _, b := range boards {
		r.Summary[summaryKey(b.Phase, b.Result)]++
	}
	r.Boards = len(boards)
	return r, boards, nil
}

// Boards returns the boards of rollout rolloutID (exact id) whose Result is
// one of results ("" for boards without a result yet), or all of them when
// results is empty, sorted by board id. An unknown rollout is ErrNotFound.
func (s *Store) Boards(ctx context.Context, rolloutID string, results ...string) ([]BoardResult, error) {
	var one int
	err := s.db.QueryRowContext(ctx, `SELECT 1 FROM rollouts WHERE id = ?`, rolloutID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: rollout %s: %w", rolloutID, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return s.boards(ctx, rolloutID, results)
}

// boards lists a rollout's boards; no results is all of them.
func (s *Store) boards(ctx context.Context, rolloutID string, results []string) ([]BoardResult, error) {
	var (
		where string
		args  []any
	)
	if len(results) > 0 {
		where = ` AND result IN (` + placeholders(len(results)) + `)`
		for _, r := range results {
			args = append(args, r)
		}
	}
	return s.queryBoards(ctx, rolloutID, where+` ORDER BY board_id`, args...)
}

// boardsSelect selects the boards of one rollout (its one arg), to
// which a query adds its conditions and order.
const boardsSelect = `SELECT rollout_id, board_id, address, phase, result, reason, from_version, to_version,
	bytes_sent, attempts, started, ended, update_id FROM board_results WHERE rollout_id = ?`

// queryBoards is rollout rolloutID's boards that the SQL rest (after its
// WHERE, with args) selects and orders.
func (s *Store) queryBoards(ctx context.Context, rolloutID, rest string, args ...any) ([]BoardResult, error) {
	rows, err := s.db.QueryContext(ctx, boardsSelect+rest, append([]any{rolloutID}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("store: boards of %s: %w", rolloutID, err)
	}
	defer rows.Close()
	var out []BoardResult
	for rows.Next() {
		var (
			b              BoardResult
			started, ended sql.NullInt64
		)
		if err := rows.Scan(&b.RolloutID, &b.BoardID, &b.Address, &b.Phase, &b.Result, &b.Reason,
			&b.FromVersion, &b.ToVersion, &b.BytesSent, &b.Attempts, &started, &ended, &b.UpdateID); err != nil {
			return nil, fmt.Errorf("store: boards of %s: %w", rolloutID, err)
		}
		b.Started, b.Ended = goTime(started), goTime(ended)
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: boards of %s: %w", rolloutID, err)
	}
	return out, nil
}

// result_rank (schema version 7), a board's place on its rollout's page,
// of the boards without a result: those running, then those pending.
const (
	rankRunning = 1
	rankPending = 2
)

// keyWhere is the SQL condition (and its args) of the boards that count
// under Summary key key, on a column that an index holds with board id
// after it (the boards of one key have one rank: their page is by board
// id alone).
func keyWhere(key string) (where string, args []any) {
	switch key {
	case SummaryPending:
		return `result_rank = ?`, []any{rankPending}
	case SummaryRunning:
		return `result_rank = ?`, []any{rankRunning}
	}
	return `result = ?`, []any{key}
}

// summaryCounts counts a rollout's boards (its one arg) by phase and
// result, from the index that holds both (board_results_by_phase).
const summaryCounts = `SELECT phase, result, count(*) FROM board_results WHERE rollout_id = ? GROUP BY phase, result`

// pageOfBoards is what RolloutPage adds to boardsSelect (and its args,
// after rolloutID) to read its page: the boards that count under key,
// from the skip-th on, at most limit, in the order of an index
// (board_results_by_rank, or by_result for one result). keyset (for
// Postgres) starts the page at the key of its skip-th board, which a
// subquery reads from the index alone, where an OFFSET would have Postgres
// read the table's row of every board it skips; SQLite skips within the
// index without reading rows, and seeks by the rank alone of a subquery's
// row value, so OFFSET costs it less.
func pageOfBoards(rolloutID, key string, skip, limit int, keyset bool) (rest string, args []any) {
	var (
		where string
		fargs []any // where's
		order = `result_rank, board_id`
	)
	if key != "" {
		where, fargs = keyWhere(key)
		where, order = ` AND `+where, `board_id`
	}
	rest, args = where, slices.Clone(fargs)
	skip, limit = max(0, skip), max(0, limit)
	switch {
	case skip == 0:
	case keyset:
		rest += ` AND (` + order + `) >= (SELECT ` + order + ` FROM board_results WHERE rollout_id = ?` + where +
			` ORDER BY ` + order + ` LIMIT 1 OFFSET ?)`
		args = append(append(append(args, rolloutID), fargs...), skip)
	default:
		return rest + ` ORDER BY ` + order + ` LIMIT ? OFFSET ?`, append(args, limit, skip)
	}
	return rest + ` ORDER BY ` + order + ` LIMIT ?`, append(args, limit)
}

// RolloutPage returns the rollout whose id is id, or the only one whose id
// begins with id (see ResolveRollout), with its Boards and Summary but
// without its Plan, and a page of its boards: those that count under the
// Summary key key ("": all of them), from the skip-th on, at most limit,
// those that failed in any way first, then those running, pending,
// skipped and committed, each by board id. Unlike Rollout, it reads the
// page's boards only, not all of a rollout of thousands, in the order of
// an index (see pageOfBoards and summaryCounts).
func (s *Store) RolloutPage(ctx context.Context, id, key string, skip, limit int) (Rollout, []BoardResult, error) {
	full, err := s.ResolveRollout(ctx, id)
	if err != nil {
		return Rollout{}, nil, err
	}
	r, err := scanRollout(s.db.QueryRowContext(ctx, `SELECT `+rolloutColumns+` FROM rollouts WHERE id = ?`, full))
	if errors.Is(err, sql.ErrNoRows) { // deleted in between
		return Rollout{}, nil, fmt.Errorf("store: no rollout %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Rollout{}, nil, fmt.Errorf("store: rollout %s: %w", full, err)
	}
	rows, err := s.db.QueryContext(ctx, summaryCounts, full)
	if err != nil {
		return Rollout{}, nil, fmt.Errorf("store: rollout %s: %w", full, err)
	}
	for rows.Next() {
		var (
			phase, result string
			n             int
		)
		if err := rows.Scan(&phase, &result, &n); err != nil {
			rows.Close()
			return Rollout{}, nil, fmt.Errorf("store: rollout %s: %w", full, err)
		}
		r.Summary[summaryKey(phase, result)] += n
		r.Boards += n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return Rollout{}, nil, fmt.Errorf("store: rollout %s: %w", full, err)
	}
	rest, args := pageOfBoards(full, key, skip, limit, s.d.postgres)
	boards, err := s.queryBoards(ctx, full, rest, args...)
	if err != nil {
		return Rollout{}, nil, err
	}
	return r, boards, nil
}

// Rollouts returns the newest limit rollouts (all when limit <= 0), newest
// first, each with Boards and Summary but without its Plan.
func (s *Store) Rollouts(ctx context.Context, limit int) ([]Rollout, error) {
	newest := `ORDER BY created DESC, id DESC`
	var args []any
	if limit > 0 {
		newest += ` LIMIT ?`
		args = append(args, limit)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+rolloutColumns+` FROM rollouts `+newest, args...)
	if err != nil {
		return nil, fmt.Errorf("store: rollouts: %w", err)
	}
	var out []Rollout
	index := map[string]int{}
	for rows.Next() {
		r, err := scanRollout(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("store: rollouts: %w", err)
		}
		index[r.ID] = len(out)
		out = append(out, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: rollouts: %w", err)
	}
	if len(out) == 0 {
		return out, nil
	}
	// The summaries in one query, after the rollouts' rows are closed (the
	// store has one connection).
	rows, err = s.db.QueryContext(ctx, `SELECT b.rollout_id, b.phase, b.result, count(*)
		FROM board_results b JOIN (SELECT id FROM rollouts `+newest+`) r
		ON r.id = b.rollout_id GROUP BY b.rollout_id, b.phase, b.result`, args...)
	if err != nil {
		return nil, fmt.Errorf("store: rollouts: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id, phase, result string
			n                 int
		)
		if err := rows.Scan(&id, &phase, &result, &n); err != nil {
			return nil, fmt.Errorf("store: rollouts: %w", err)
		}
		if i, ok := index[id]; ok {
			out[i].Summary[summaryKey(phase, result)] += n
			out[i].Boards += n
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: rollouts: %w", err)
	}
	return out, nil
}

// SummaryKeys returns the keys of a Summary in a stable order: committed
// first, then the other results alphabetically, then running and pending.
func SummaryKeys(sum map[string]int) []string {
	rank := func(k string) int {
		switch k {
		case ResultCommitted:
			return 0
		case SummaryRunning:
			return 2
		case SummaryPending:
			return 3
		}
		return 1
	}
	keys := make([]string, 0, len(sum))
	for k := range sum {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if d := rank(a) - rank(b); d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	return keys
}
