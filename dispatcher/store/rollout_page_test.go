package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// TestRolloutPage: a page of a rollout's boards, those that failed first
// and those committed last, filtered by a Summary key, with the counts of
// all of them; a prefix of the id finds it; an unknown one is
// ErrNotFound.
func TestRolloutPage(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		if err := s.CreateRollout(ctx, Rollout{ID: "r-page", Plan: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		var bs []BoardResult
		for i, pr := range []struct{ phase, result string }{
			{PhaseDone, ResultCommitted}, {PhasePlan, ""}, {PhaseDone, ResultFailed}, {PhasePrepare, ""},
			{PhaseDone, ResultSkipped}, {PhaseDone, ResultUnreachable}, {PhaseDone, ResultCommitted}, {PhasePlan, ""},
		} {
			bs = append(bs, BoardResult{RolloutID: "r-page", BoardID: fmt.Sprintf("b%d", i), Phase: pr.phase, Result: pr.result})
		}
		if err := s.PutBoards(ctx, "r-page", bs); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			key         string
			skip, limit int
			want        string
		}{
			{"", 0, 100, "b2 b5 b3 b1 b7 b4 b0 b6"},
			{"", 2, 3, "b3 b1 b7"},
			{"", 8, 3, ""},
			{SummaryPending, 0, 100, "b1 b7"},
			{SummaryRunning, 0, 100, "b3"},
			{ResultCommitted, 1, 100, "b6"},
			{"no-such-result", 0, 100, ""},
		} {
			r, page, err := s.RolloutPage(ctx, "r-pa", tc.key, tc.skip, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, b := range page {
				got = append(got, b.BoardID)
			}
			if strings.Join(got, " ") != tc.want {
				t.Errorf("%q from %d, %d: %v, want %s", tc.key, tc.skip, tc.limit, got, tc.want)
			}
			if r.ID != "r-page" || r.Boards != 8 || r.Plan != nil || r.Summary[ResultCommitted] != 2 || r.Summary[SummaryPending] != 2 ||
				r.Summary[SummaryRunning] != 1 || r.Summary[ResultFailed] != 1 {
				t.Errorf("the rollout: %+v", r)
			}
		}
		if _, _, err := s.RolloutPage(ctx, "r-nope", "", 0, 10); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown rollout: %v", err)
		}
	})
}

// toVersion6 takes a database of schema version 7 back to version 6 (its
// version number aside), for the tests of the migrations from before.
var toVersion6 = []string{`DROP INDEX board_results_by_rank`, `DROP INDEX board_results_by_phase`,
	`DROP INDEX board_results_by_updated`, `DROP INDEX board_results_by_result`,
	`ALTER TABLE board_results DROP COLUMN result_rank`,
	`CREATE INDEX board_results_by_result ON board_results (rollout_id, result)`}

// pageModel is what RolloutPage should read of boards (by id: phase and
// result): the ids under Summary key key ("": all) in the page's order,
// and the Summary.
func pageModel(boards map[string][2]string, key string) ([]string, map[string]int) {
	rank := func(phase, result string) int {
		switch {
		case result == ResultCommitted:
			return 4
		case result == ResultSkipped:
			return 3
		case result == "" && phase == PhasePlan:
			return 2
		case result == "":
			return 1
		}
		return 0
	}
	var ids []string
	sum := map[string]int{}
	for id, pr := range boards {
		k := summaryKey(pr[0], pr[1])
		sum[k]++
		if key == "" || key == k {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b string) int {
		return cmp.Or(cmp.Compare(rank(boards[a][0], boards[a][1]), rank(boards[b][0], boards[b][1])), strings.Compare(a, b))
	})
	return ids, sum
}

// checkPages reads every page of rollout id's boards under each Summary
// key and all of them, pages of per boards, and compares them, and the
// Summary, with pageModel's.
func checkPages(t *testing.T, s *Store, id string, per int, boards map[string][2]string) {
	t.Helper()
	ctx := context.Background()
	_, sum := pageModel(boards, "")
	for _, key := range append([]string{""}, slices.Collect(maps.Keys(sum))...) {
		want, _ := pageModel(boards, key)
		var got []string
		for skip := 0; ; skip += per {
			r, page, err := s.RolloutPage(ctx, id, key, skip, per)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(r.Summary, sum) || r.Boards != len(boards) {
				t.Fatalf("summary %v of %d boards, want %v of %d", r.Summary, r.Boards, sum, len(boards))
			}
			for _, b := range page {
				if boards[b.BoardID] != [2]string{b.Phase, b.Result} {
					t.Fatalf("board %s: %s %q, want %v", b.BoardID, b.Phase, b.Result, boards[b.BoardID])
				}
				got = append(got, b.BoardID)
			}
			if len(page) < per {
				break
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%q, pages of %d:\n got %v\nwant %v", key, per, got, want)
		}
	}
}

// TestRolloutPageFollowsResults: as a rollout goes on, each board's place
// on its page follows its result: a board that goes from running to
// committed leaves the first page for the last, one that fails comes to
// the first, on every page and every filter, on both engines.
func TestRolloutPageFollowsResults(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		const n, per = 230, 20
		boards := map[string][2]string{}
		for _, id := range []string{"r-other", "r-1"} { // another rollout's boards are not this one's
			if err := s.CreateRollout(ctx, Rollout{ID: id}); err != nil {
				t.Fatal(err)
			}
			var bs []BoardResult
			for i := range n {
				b := BoardResult{RolloutID: id, BoardID: fmt.Sprintf("b-%03d", i), Phase: PhasePlan}
				bs = append(bs, b)
				boards[b.BoardID] = [2]string{b.Phase, b.Result}
			}
			if err := s.PutBoards(ctx, id, bs); err != nil {
				t.Fatal(err)
			}
		}
		put := func(id, phase, result string) {
			t.Helper()
			if err := s.PutBoard(ctx, BoardResult{RolloutID: "r-1", BoardID: id, Phase: phase, Result: result}); err != nil {
				t.Fatal(err)
			}
			boards[id] = [2]string{phase, result}
		}
		checkPages(t, s, "r-1", per, boards)

		// One board: running (the first page's first), then committed (the
		// last page's last).
		put("b-229", PhasePrepare, "")
		if _, page, err := s.RolloutPage(ctx, "r-1", "", 0, per); err != nil || page[0].BoardID != "b-229" {
			t.Fatalf("running: %v %v", page, err)
		}
		put("b-229", PhaseDone, ResultCommitted)
		if _, page, err := s.RolloutPage(ctx, "r-1", "", n-1, per); err != nil || len(page) != 1 || page[0].BoardID != "b-229" {
			t.Fatalf("committed: %v %v", page, err)
		}
		checkPages(t, s, "r-1", per, boards)

		// Waves of the rollout: each round some pending boards start, some
		// running end in each way, and some that failed are tried again.
		rng := rand.New(rand.NewPCG(7, 7))
		ends := []string{ResultCommitted, ResultCommitted, ResultCommitted, ResultFailed, ResultSkipped, ResultRolledBack, ResultUnreachable}
		for range 6 {
			for id, pr := range boards {
				switch {
				case pr[0] == PhasePlan && rng.IntN(3) == 0:
					put(id, []string{PhasePrepare, PhaseExecute, PhaseGate}[rng.IntN(3)], "")
				case pr[1] == "" && pr[0] != PhasePlan && rng.IntN(2) == 0:
					put(id, PhaseDone, ends[rng.IntN(len(ends))])
				case pr[1] == ResultFailed && rng.IntN(4) == 0:
					put(id, PhasePlan, "")
				}
			}
			checkPages(t, s, "r-1", per, boards)
		}
		// Past the last board: an empty page.
		for _, key := range []string{"", ResultCommitted, SummaryPending} {
			if _, page, err := s.RolloutPage(ctx, "r-1", key, n, per); err != nil || len(page) != 0 {
				t.Fatalf("%q past the end: %v %v", key, page, err)
			}
		}
	})
}

// TestMigrateAddsResultRank: a database of schema version 6 gains the
// rank of its boards (version 7), computed for the rows it has, and the
// indexes its page reads by.
func TestMigrateAddsResultRank(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		dsn := newDB(t)
		s := open(t, dsn)
		if err := s.CreateRollout(ctx, Rollout{ID: "r-1"}); err != nil {
			t.Fatal(err)
		}
		boards := map[string][2]string{}
		var bs []BoardResult
		for i, pr := range [][2]string{{PhaseDone, ResultCommitted}, {PhasePlan, ""}, {PhaseDone, ResultFailed},
			{PhaseExecute, ""}, {PhaseDone, ResultSkipped}, {PhaseDone, ResultIncompatible}, {PhaseGate, ""}} {
			b := BoardResult{RolloutID: "r-1", BoardID: fmt.Sprintf("b%d", i), Phase: pr[0], Result: pr[1]}
			bs = append(bs, b)
			boards[b.BoardID] = pr
		}
		if err := s.PutBoards(ctx, "r-1", bs); err != nil {
			t.Fatal(err)
		}
		s.Close()
		db := raw(t, dsn)
		for _, q := range append(slices.Concat(toVersion7, toVersion6), `UPDATE schema_version SET version = 6`) {
			if _, err := db.Exec(q); err != nil {
				t.Fatal(q, err)
			}
		}
		s = open(t, dsn)
		if v := schemaVersion(t, dsn); v != SchemaVersion() || v != 8 {
			t.Fatalf("schema version %d", v)
		}
		checkPages(t, s, "r-1", 3, boards)
		for _, name := range []string{"board_results_by_rank", "board_results_by_result", "board_results_by_phase", "board_results_by_updated"} {
			var n int
			q := `SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name = ?`
			if IsPostgres(dsn) {
				q = `SELECT count(*) FROM pg_indexes WHERE indexname = $1`
			}
			if err := db.QueryRow(q, name).Scan(&n); err != nil || n != 1 {
				t.Errorf("index %s: %d %v", name, n, err)
			}
		}
	})
}

// TestRolloutPagePlans: the engine reads a rollout's page from its indexes,
// without a sort and without a pass over its rows, on both engines (on
// Postgres with the table's statistics, as autovacuum keeps them; there a
// page of one result or key may be its boards from the page's key on,
// sorted, when the statistics say they are few).
func TestRolloutPagePlans(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		dsn := newDB(t)
		s := open(t, dsn)
		const n = 3000
		for _, id := range []string{"r-1", "r-2", "r-3"} {
			if err := s.CreateRollout(ctx, Rollout{ID: id}); err != nil {
				t.Fatal(err)
			}
			bs := make([]BoardResult, n)
			for i := range bs {
				bs[i] = BoardResult{RolloutID: id, BoardID: fmt.Sprintf("b-%05d", i), Phase: PhasePlan}
				switch {
				case i%97 == 0:
					bs[i].Phase, bs[i].Result = PhaseDone, ResultFailed
				case i%2 == 0:
					bs[i].Phase, bs[i].Result = PhaseDone, ResultCommitted
				case i%5 == 0:
					bs[i].Phase = PhaseExecute
				}
			}
			if err := s.PutBoards(ctx, id, bs); err != nil {
				t.Fatal(err)
			}
		}
		pg := IsPostgres(dsn)
		explain := `EXPLAIN QUERY PLAN `
		if pg {
			explain = `EXPLAIN `
			if _, err := s.db.ExecContext(ctx, `VACUUM ANALYZE board_results`); err != nil {
				t.Fatal(err)
			}
		}
		type query struct {
			name, index, sql string
			args             []any
			filtered         bool
		}
		queries := []query{
			// filtered on Postgres: whether its index-only scan beats a
			// bitmap scan of the rollout's rows depends on how much of the
			// table VACUUM could mark all-visible, which other tests'
			// transactions on the cluster hold back; either reads the
			// rollout's rows only.
			{"counts", "board_results_by_phase", summaryCounts, []any{"r-2"}, true},
			{"rollout", "board_results_by_updated", `SELECT ` + rolloutColumns + ` FROM rollouts WHERE id = ?`, []any{"r-2"}, false},
		}
		for _, p := range []struct {
			key, index string
			skip       int
		}{
			{"", "board_results_by_rank", 0}, {"", "board_results_by_rank", 1500},
			{ResultFailed, "board_results_by_result", 0}, {ResultCommitted, "board_results_by_result", 1000},
			{SummaryPending, "board_results_by_rank", 0}, {SummaryRunning, "board_results_by_rank", 200},
		} {
			rest, args := pageOfBoards("r-2", p.key, p.skip, 100, pg)
			queries = append(queries, query{fmt.Sprintf("page %q from %d", p.key, p.skip), p.index, boardsSelect + rest,
				append([]any{"r-2"}, args...), p.key != ""})
		}
		for _, q := range queries {
			rows, err := s.db.QueryContext(ctx, explain+q.sql, q.args...)
			if err != nil {
				t.Fatal(q.name, err)
			}
			cols, err := rows.Columns()
			if err != nil {
				t.Fatal(err)
			}
			var plan []string
			for rows.Next() {
				vals := make([]any, len(cols))
				ptrs := make([]any, len(cols))
				for i := range vals {
					ptrs[i] = &vals[i]
				}
				if err := rows.Scan(ptrs...); err != nil {
					t.Fatal(err)
				}
				plan = append(plan, fmt.Sprint(vals[len(vals)-1])) // SQLite's detail, Postgres's line
			}
			if err := rows.Close(); err != nil {
				t.Fatal(err)
			}
			text := strings.Join(plan, "\n")
			bad := []string{"TEMP B-TREE", "SCAN board_results"}
			switch {
			case pg && q.filtered:
				bad = []string{"Seq Scan on board_results"}
			case pg:
				bad = []string{"Sort", "Seq Scan on board_results", "Bitmap Heap Scan on board_results"}
			}
			for _, b := range bad {
				if strings.Contains(text, b) {
					t.Errorf("%s: %q in its plan:\n%s", q.name, b, text)
				}
			}
			if !strings.Contains(text, q.index) && !(pg && q.name == "counts") {
				t.Errorf("%s: not by %s:\n%s", q.name, q.index, text)
			}
		}
	})
}
