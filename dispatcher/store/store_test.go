package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/boardlink/boardlink/internal/pgtest"
)

func open(t testing.TB, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func tempDB(t testing.TB) string { return filepath.Join(t.TempDir(), "boardlink.db") }

// engines are the two the store runs on, each with a fresh database.
var engines = []struct {
	name  string
	newDB func(testing.TB) string
}{
	{"sqlite", tempDB},
	{"postgres", pgtest.New},
}

// eachEngine runs test on each engine, as subtests.
func eachEngine(t *testing.T, test func(t *testing.T, newDB func(testing.TB) string)) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) { test(t, e.newDB) })
	}
}

// raw opens the database with the driver alone, to look under the store.
func raw(t *testing.T, path string) *sql.DB {
	t.Helper()
	driver, dsn := "pgx", path
	if !IsPostgres(path) {
		u := url.URL{Scheme: "file", Path: path, OmitHost: true} // a '?' in path stays in the path
		driver, dsn = "sqlite", u.String()
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func schemaVersion(t *testing.T, path string) int {
	t.Helper()
	var v int
	if err := raw(t, path).QueryRow(`SELECT version FROM schema_version`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestOpenMigratesAndReopens(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"boardlink.db", "a dir/with?odd#chars%20/records.db"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state", name)
			s := open(t, path)
			if s.Path() != path {
				t.Fatalf("path %q, want %q", s.Path(), path)
			}
			var mode string
			var fk, busy int
			s.sqldb.QueryRow(`PRAGMA journal_mode`).Scan(&mode)
			s.sqldb.QueryRow(`PRAGMA foreign_keys`).Scan(&fk)
			s.sqldb.QueryRow(`PRAGMA busy_timeout`).Scan(&busy)
			if mode != "wal" || fk != 1 || busy != int(busyTimeout.Milliseconds()) {
				t.Fatalf("journal_mode %q foreign_keys %d busy_timeout %d", mode, fk, busy)
			}
			if err := s.CreateRollout(ctx, Rollout{ID: "r-1", Version: "1.0.0"}); err != nil {
				t.Fatal(err)
			}
			s.Close()
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("the database is not where it was asked to be: %v", err)
			}
			if v := schemaVersion(t, path); v != SchemaVersion() {
				t.Fatalf("schema version %d, want %d", v, SchemaVersion())
			}
			// Reopening migrates nothing and keeps the data.
			s = open(t, path)
			r, _, err := s.Rollout(ctx, "r-1")
			if err != nil || r.Version != "1.0.0" {
				t.Fatalf("after reopening: %+v %v", r, err)
			}
			var rows int
			s.sqldb.QueryRow(`SELECT count(*) FROM schema_version`).Scan(&rows)
			if rows != 1 {
				t.Fatalf("schema_version has %d rows", rows)
			}
		})
	}
}

func TestOpenEmptyFile(t *testing.T) {
	// An empty file is a database at version 0: it gets the schema.
	path := tempDB(t)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	open(t, path).Close()
	if v := schemaVersion(t, path); v != SchemaVersion() {
		t.Fatalf("schema version %d", v)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		future := newDB(t)
		open(t, future).Close()
		if _, err := raw(t, future).Exec(fmt.Sprintf(`UPDATE schema_version SET version = %d`, SchemaVersion()+5)); err != nil {
			t.Fatal(err)
		}
		s, err := Open(context.Background(), future)
		if err == nil {
			s.Close()
			t.Fatal("opened")
		}
		if !errors.Is(err, ErrSchemaTooNew) {
			t.Fatalf("%v is not %v", err, ErrSchemaTooNew)
		}
		for _, want := range []string{fmt.Sprint("version ", SchemaVersion()+5), "newer boardlink"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%q lacks %q", err, want)
			}
		}
		// The database was left as it was.
		if v := schemaVersion(t, future); v != SchemaVersion()+5 {
			t.Fatalf("schema version changed to %d", v)
		}
	})
}

func TestOpenNotADatabase(t *testing.T) {
	garbage := tempDB(t)
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a database ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), garbage)
	if err == nil {
		s.Close()
		t.Fatal("opened")
	}
	for _, want := range []string{garbage, "not a database"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
}

func TestDefaultPath(t *testing.T) {
	home, _ := os.UserHomeDir()
	tests := []struct {
		db, xdg, want string
	}{
		{"/srv/lab.db", "/state", "/srv/lab.db"},
		{"", "/state", "/state/boardlink/boardlink.db"},
		{"", "relative/ignored", filepath.Join(home, ".local/state/boardlink/boardlink.db")},
		{"", "", filepath.Join(home, ".local/state/boardlink/boardlink.db")},
	}
	for _, tc := range tests {
		t.Setenv("BOARDLINK_DB", tc.db)
		t.Setenv("XDG_STATE_HOME", tc.xdg)
		if got := DefaultPath(); got != tc.want {
			t.Errorf("BOARDLINK_DB=%q XDG_STATE_HOME=%q: %q, want %q", tc.db, tc.xdg, got, tc.want)
		}
	}
}

func TestNewRolloutID(t *testing.T) {
	re := regexp.MustCompile(`^r-\d{8}-\d{4}-[0-9a-f]{4}$`)
	id := NewRolloutID()
	if !re.MatchString(id) {
		t.Fatalf("%q", id)
	}
	t0 := time.Date(2026, 11, 22, 3, 1, 0, 0, time.UTC)
	a, b := newRolloutID(t0), newRolloutID(t0.Add(time.Minute))
	if !strings.HasPrefix(a, "r-20261122-0301-") || a >= b {
		t.Fatalf("%q, %q: not sorted by time", a, b)
	}
}

// at is a fixed instant plus d, so that times compare exactly.
func at(d time.Duration) time.Time {
	return time.Date(2026, 11, 22, 3, 1, 0, 0, time.UTC).Add(d)
}

func TestRolloutRoundTrip(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		plan := json.RawMessage(`{"boards":[{"id":"b1"},{"id":"b2"}],"chunks":12}`)
		want := Rollout{
			ID: "r-20261122-0301-ab12", Image: "/img/rootfs-2.0.0.img", ImageSHA256: strings.Repeat("ab", 32),
			Version: "2.0.0", Selector: "model=imx8", Concurrency: 16, MaxFailures: 3, Plan: plan,
			Created: at(0),
		}
		if err := s.CreateRollout(ctx, want); err != nil {
			t.Fatal(err)
		}
		boards := []BoardResult{
			{RolloutID: want.ID, BoardID: "b1", Address: "ws://10.0.0.1:7207", Phase: PhaseDone, Result: ResultCommitted,
				FromVersion: "1.0.0", ToVersion: "2.0.0", BytesSent: 1 << 20, Attempts: 1, Started: at(time.Second),
				Ended: at(time.Minute), UpdateID: "u-1"},
			{RolloutID: want.ID, BoardID: "b2", Address: "serial:///dev/ttyUSB0", Phase: PhasePrepare,
				FromVersion: "1.0.0", ToVersion: "2.0.0", BytesSent: 4096, Attempts: 2, Started: at(2 * time.Second),
				UpdateID: "u-2"},
			{RolloutID: want.ID, BoardID: "b0", Phase: PhaseDone, Result: ResultIncompatible, Reason: "model sim, image imx8"},
			{RolloutID: want.ID, BoardID: "b3"}, // phase defaults to plan
		}
		for _, b := range boards {
			if err := s.PutBoard(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
		// An upsert replaces the row.
		boards[1].BytesSent, boards[1].Phase = 8192, PhaseExecute
		if err := s.PutBoard(ctx, boards[1]); err != nil {
			t.Fatal(err)
		}
		boards[3].Phase = PhasePlan

		got, gotBoards, err := s.Rollout(ctx, want.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Updated.After(want.Created) {
			t.Errorf("updated %v not bumped by PutBoard", got.Updated)
		}
		if string(got.Plan) != string(plan) {
			t.Errorf("plan %s", got.Plan)
		}
		want.State, want.Updated, want.Boards = StateRunning, got.Updated, 4
		want.Summary = map[string]int{ResultCommitted: 1, ResultIncompatible: 1, SummaryRunning: 1, SummaryPending: 1}
		g, w := got, want
		g.Plan, w.Plan = nil, nil
		if fmt.Sprint(g) != fmt.Sprint(w) || !g.Created.Equal(w.Created) {
			t.Errorf("rollout\n got %+v\nwant %+v", g, w)
		}
		wantBoards := []BoardResult{boards[2], boards[0], boards[1], boards[3]} // by board id
		if len(gotBoards) != len(wantBoards) {
			t.Fatalf("%d boards", len(gotBoards))
		}
		for i := range wantBoards {
			if gotBoards[i] != wantBoards[i] {
				t.Errorf("board %d\n got %+v\nwant %+v", i, gotBoards[i], wantBoards[i])
			}
		}
		// It reads back the same in JSON, plan embedded as JSON.
		j, err := json.Marshal(got)
		if err != nil || !strings.Contains(string(j), `"plan":{"boards"`) {
			t.Fatalf("%s %v", j, err)
		}

		if err := s.SetRolloutState(ctx, want.ID, StateDone); err != nil {
			t.Fatal(err)
		}
		got, _, _ = s.Rollout(ctx, want.ID)
		if got.State != StateDone {
			t.Fatalf("state %q", got.State)
		}
	})
}

func TestWriteErrors(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		if err := s.CreateRollout(ctx, Rollout{ID: "r-1"}); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name string
			err  error
			is   error
			msg  string
		}{
			{"empty id", s.CreateRollout(ctx, Rollout{}), nil, "id is empty"},
			{"duplicate id", s.CreateRollout(ctx, Rollout{ID: "r-1"}), ErrExists, "r-1"},
			{"bad state", s.CreateRollout(ctx, Rollout{ID: "r-2", State: "paused"}), nil, `"paused"`},
			{"plan not JSON", s.CreateRollout(ctx, Rollout{ID: "r-3", Plan: []byte("{oops")}), nil, "not JSON"},
			{"state of unknown rollout", s.SetRolloutState(ctx, "r-9", StateDone), ErrNotFound, "r-9"},
			{"unknown state", s.SetRolloutState(ctx, "r-1", "paused"), nil, `"paused"`},
			{"board of unknown rollout", s.PutBoard(ctx, BoardResult{RolloutID: "r-9", BoardID: "b"}), ErrNotFound, "r-9"},
			{"board without id", s.PutBoard(ctx, BoardResult{RolloutID: "r-1"}), nil, "must both be set"},
			{"unknown phase", s.PutBoard(ctx, BoardResult{RolloutID: "r-1", BoardID: "b", Phase: "flash"}), nil, `"flash"`},
			{"sight without id", s.Sight(ctx, Sighting{}), nil, "board id is empty"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				if tc.err == nil || tc.is != nil && !errors.Is(tc.err, tc.is) || !strings.Contains(tc.err.Error(), tc.msg) {
					t.Fatalf("got %v, want %v and %q", tc.err, tc.is, tc.msg)
				}
			})
		}
		rs, _ := s.Rollouts(ctx, 0)
		if len(rs) != 1 {
			t.Fatalf("a failed create left %d rollouts", len(rs))
		}
	})
}

// TestResume is what a resumed rollout reads after the dispatcher was
// killed: the store is closed without a final state, reopened, and asked
// which boards are finished and which were mid-transfer.
func TestResume(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		path := newDB(t)
		s := open(t, path)
		id := "r-20261122-0301-ab12"
		if err := s.CreateRollout(ctx, Rollout{ID: id, Version: "2.0.0", Concurrency: 2}); err != nil {
			t.Fatal(err)
		}
		put := func(board, phase, result, updateID string, sent int64) {
			t.Helper()
			err := s.PutBoard(ctx, BoardResult{RolloutID: id, BoardID: board, Phase: phase, Result: result,
				UpdateID: updateID, BytesSent: sent})
			if err != nil {
				t.Fatal(err)
			}
		}
		put("b1", PhaseDone, ResultCommitted, "u1", 100)
		put("b2", PhaseDone, ResultCommitted, "u2", 100)
		put("b3", PhaseDone, ResultRolledBack, "u3", 100)
		put("b4", PhasePrepare, "", "u4", 40)
		put("b5", PhaseExecute, "", "u5", 100)
		put("b6", PhasePlan, "", "", 0)
		put("b7", PhaseDone, ResultUnreachable, "", 0)
		s.Close() // killed: the state stays "running"

		s = open(t, path)
		r, all, err := s.Rollout(ctx, "r-2026") // a prefix, as --resume may be given
		if err != nil || r.ID != id || r.State != StateRunning || len(all) != 7 {
			t.Fatalf("%+v %d %v", r, len(all), err)
		}
		wantSum := map[string]int{ResultCommitted: 2, ResultRolledBack: 1, ResultUnreachable: 1, SummaryRunning: 2, SummaryPending: 1}
		if !maps.Equal(r.Summary, wantSum) || r.Boards != 7 {
			t.Fatalf("summary %v (%d boards), want %v", r.Summary, r.Boards, wantSum)
		}
		ids := func(bs []BoardResult) string {
			var out []string
			for _, b := range bs {
				out = append(out, b.BoardID+":"+b.UpdateID)
			}
			return strings.Join(out, " ")
		}
		tests := []struct {
			name    string
			results []string
			want    string
		}{
			{"committed: not touched again", []string{ResultCommitted}, "b1:u1 b2:u2"},
			{"unfinished: resumed", []string{""}, "b4:u4 b5:u5 b6:"},
			{"failures", []string{ResultRolledBack, ResultFailed, ResultUnreachable}, "b3:u3 b7:"},
			{"none match", []string{ResultSkipped}, ""},
			{"all", nil, "b1:u1 b2:u2 b3:u3 b4:u4 b5:u5 b6: b7:"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				bs, err := s.Boards(ctx, id, tc.results...)
				if err != nil || ids(bs) != tc.want {
					t.Fatalf("got %q %v, want %q", ids(bs), err, tc.want)
				}
			})
		}
		if _, err := s.Boards(ctx, "r-nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("boards of an unknown rollout: %v", err)
		}
		// The mid-prepare board kept what it needs to resume its transfer.
		bs, _ := s.Boards(ctx, id, "")
		if bs[0].Phase != PhasePrepare || bs[0].UpdateID != "u4" || bs[0].BytesSent != 40 {
			t.Fatalf("%+v", bs[0])
		}
	})
}

func TestRolloutPrefix(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		for _, id := range []string{"r-20261122-0301-ab12", "r-20261122-0301-ab34", "r-20261123-1200-ffff", "r-2026"} {
			if err := s.CreateRollout(ctx, Rollout{ID: id}); err != nil {
				t.Fatal(err)
			}
		}
		tests := []struct {
			arg, want string
			is        error
		}{
			{"r-20261122-0301-ab12", "r-20261122-0301-ab12", nil},
			{"r-20261122-0301-ab3", "r-20261122-0301-ab34", nil},
			{"r-20261123", "r-20261123-1200-ffff", nil},
			{"r-2026", "r-2026", nil}, // an exact id wins over being a prefix of others
			{"r-20261122", "", ErrAmbiguous},
			{"r-20261122-0301-ab", "", ErrAmbiguous},
			{"r-2027", "", ErrNotFound},
			{"r-20261122-0301-ab12x", "", ErrNotFound},
			{"%", "", ErrNotFound},
			{"", "", ErrNotFound},
		}
		for _, tc := range tests {
			t.Run(tc.arg, func(t *testing.T) {
				r, _, err := s.Rollout(ctx, tc.arg)
				if tc.is != nil {
					if !errors.Is(err, tc.is) {
						t.Fatalf("got %+v %v, want %v", r, err, tc.is)
					}
					if tc.is == ErrAmbiguous && !strings.Contains(err.Error(), "r-20261122-0301-ab12, r-20261122-0301-ab34") {
						t.Fatalf("%v does not name the candidates", err)
					}
					return
				}
				if err != nil || r.ID != tc.want {
					t.Fatalf("got %q %v, want %q", r.ID, err, tc.want)
				}
			})
		}
	})
}

func TestRolloutsNewestFirst(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		if rs, err := s.Rollouts(ctx, 10); err != nil || len(rs) != 0 {
			t.Fatalf("empty store: %v %v", rs, err)
		}
		for i := range 5 {
			id := fmt.Sprintf("r-%d", i)
			if err := s.CreateRollout(ctx, Rollout{ID: id, Created: at(time.Duration(i) * time.Hour)}); err != nil {
				t.Fatal(err)
			}
			for j := range i {
				result := ResultCommitted
				if j == 0 {
					result = ResultFailed
				}
				if err := s.PutBoard(ctx, BoardResult{RolloutID: id, BoardID: fmt.Sprint("b", j), Phase: PhaseDone, Result: result}); err != nil {
					t.Fatal(err)
				}
			}
		}
		tests := []struct {
			limit int
			want  string
		}{
			{0, "r-4:4:1/3 r-3:3:1/2 r-2:2:1/1 r-1:1:1/0 r-0:0:0/0"},
			{-1, "r-4:4:1/3 r-3:3:1/2 r-2:2:1/1 r-1:1:1/0 r-0:0:0/0"},
			{2, "r-4:4:1/3 r-3:3:1/2"},
			{100, "r-4:4:1/3 r-3:3:1/2 r-2:2:1/1 r-1:1:1/0 r-0:0:0/0"},
		}
		for _, tc := range tests {
			rs, err := s.Rollouts(ctx, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rs {
				if r.Plan != nil {
					t.Errorf("%s: Rollouts filled the plan", r.ID)
				}
				got = append(got, fmt.Sprintf("%s:%d:%d/%d", r.ID, r.Boards, r.Summary[ResultFailed], r.Summary[ResultCommitted]))
			}
			if strings.Join(got, " ") != tc.want {
				t.Errorf("limit %d: %q, want %q", tc.limit, strings.Join(got, " "), tc.want)
			}
		}
	})
}

func TestSummaryKeys(t *testing.T) {
	got := SummaryKeys(map[string]int{SummaryPending: 1, ResultFailed: 1, SummaryRunning: 1, ResultCommitted: 1, ResultSkipped: 1})
	if want := "committed failed skipped running pending"; strings.Join(got, " ") != want {
		t.Fatalf("%q", got)
	}
}

func TestSight(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		steps := []struct {
			name string
			in   Sighting
			want Sighting
		}{
			{"first sighting",
				Sighting{BoardID: "b1", Address: "ws://a:7207", Model: "imx8", Labels: map[string]string{"rack": "1"}, BootID: "boot-a", Version: "1.0", LastSeen: at(0)},
				Sighting{BoardID: "b1", Address: "ws://a:7207", Model: "imx8", Labels: map[string]string{"rack": "1"}, BootID: "boot-a", Version: "1.0", FirstSeen: at(0), LastSeen: at(0), Boots: 1}},
			{"same boot later: last seen moves",
				Sighting{BoardID: "b1", Address: "ws://a:7207", BootID: "boot-a", LastSeen: at(time.Minute)},
				Sighting{BoardID: "b1", Address: "ws://a:7207", Model: "imx8", Labels: map[string]string{"rack": "1"}, BootID: "boot-a", Version: "1.0", FirstSeen: at(0), LastSeen: at(time.Minute), Boots: 1}},
			{"reboot into a new version: boots counted",
				Sighting{BoardID: "b1", Address: "ws://b:7207", BootID: "boot-b", Version: "2.0", Labels: map[string]string{}, LastSeen: at(2 * time.Minute)},
				Sighting{BoardID: "b1", Address: "ws://b:7207", Model: "imx8", BootID: "boot-b", Version: "2.0", FirstSeen: at(0), LastSeen: at(2 * time.Minute), Boots: 2}},
			{"an older sighting changes nothing but first seen",
				Sighting{BoardID: "b1", Address: "ws://old:7207", BootID: "boot-a", Version: "0.9", LastSeen: at(-time.Hour)},
				Sighting{BoardID: "b1", Address: "ws://b:7207", Model: "imx8", BootID: "boot-b", Version: "2.0", FirstSeen: at(-time.Hour), LastSeen: at(2 * time.Minute), Boots: 2}},
			{"no boot id: not a boot",
				Sighting{BoardID: "b1", LastSeen: at(3 * time.Minute)},
				Sighting{BoardID: "b1", Address: "ws://b:7207", Model: "imx8", BootID: "boot-b", Version: "2.0", FirstSeen: at(-time.Hour), LastSeen: at(3 * time.Minute), Boots: 2}},
			{"rolled back: a third boot",
				Sighting{BoardID: "b1", BootID: "boot-c", Version: "1.0", LastSeen: at(4 * time.Minute)},
				Sighting{BoardID: "b1", Address: "ws://b:7207", Model: "imx8", BootID: "boot-c", Version: "1.0", FirstSeen: at(-time.Hour), LastSeen: at(4 * time.Minute), Boots: 3}},
		}
		for _, st := range steps {
			if err := s.Sight(ctx, st.in); err != nil {
				t.Fatal(err)
			}
			got, err := s.Sightings(ctx)
			if err != nil || len(got) != 1 {
				t.Fatalf("%s: %v %v", st.name, got, err)
			}
			if fmt.Sprint(got[0]) != fmt.Sprint(st.want) {
				t.Fatalf("%s:\n got %+v\nwant %+v", st.name, got[0], st.want)
			}
		}
		boots, err := s.Boots(ctx, "b1")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, b := range boots {
			got = append(got, b.BootID+"@"+b.Version)
		}
		if want := "boot-a@1.0 boot-b@2.0 boot-c@1.0"; strings.Join(got, " ") != want {
			t.Fatalf("boots %q, want %q", got, want)
		}

		// A second board, seen now (zero LastSeen), sorts after b1.
		before := time.Now()
		if err := s.Sight(ctx, Sighting{BoardID: "a0", BootID: "x"}); err != nil {
			t.Fatal(err)
		}
		all, _ := s.Sightings(ctx)
		if len(all) != 2 || all[0].BoardID != "a0" || all[0].LastSeen.Before(before) || !all[0].FirstSeen.Equal(all[0].LastSeen) {
			t.Fatalf("%+v", all)
		}
	})
}

// TestConcurrentPutBoard writes 1,000 board results from 64 goroutines
// (the engine's worst case: one goroutine per board) while others read.
func TestConcurrentPutBoard(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		s := open(t, newDB(t))
		const (
			workers = 64
			writes  = 1000
		)
		id := NewRolloutID()
		if err := s.CreateRollout(ctx, Rollout{ID: id}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, workers+1)
		for w := range workers {
			wg.Go(func() {
				// Each board goes through its four phases in its own goroutine.
				for board := w; board < writes/4; board += workers {
					b := BoardResult{RolloutID: id, BoardID: fmt.Sprintf("b%03d", board), Attempts: 1, Started: time.Now()}
					for _, phase := range []string{PhasePlan, PhasePrepare, PhaseExecute, PhaseDone} {
						b.Phase, b.BytesSent = phase, b.BytesSent+1000
						if phase == PhaseDone {
							b.Result, b.Ended = ResultCommitted, time.Now()
						}
						if err := s.PutBoard(ctx, b); err != nil {
							errs <- err
							return
						}
					}
				}
			})
		}
		stopReads := make(chan struct{})
		var readers sync.WaitGroup
		readers.Go(func() {
			for {
				select {
				case <-stopReads:
					return
				default:
				}
				if _, err := s.Rollouts(ctx, 10); err != nil {
					errs <- err
					return
				}
			}
		})
		wg.Wait()
		took := time.Since(start)
		close(stopReads)
		readers.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		t.Logf("%d PutBoard calls from %d goroutines: %v (%v each)", writes, workers, took, took/writes)
		r, _, err := s.Rollout(ctx, id)
		if err != nil || r.Boards != 250 || r.Summary[ResultCommitted] != 250 {
			t.Fatalf("%+v %v", r, err)
		}
	})
}

// TestTwoStores is two dispatchers (or a dispatcher and `boardlink
// history`) on one file: writes wait for each other instead of failing.
func TestTwoStores(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		path := newDB(t)
		a, b := open(t, path), open(t, path)
		for _, s := range []*Store{a, b} {
			if err := s.CreateRollout(ctx, Rollout{ID: NewRolloutID() + fmt.Sprintf("-%p", s)}); err != nil {
				t.Fatal(err)
			}
		}
		rs, _ := a.Rollouts(ctx, 0)
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for i, s := range []*Store{a, b, a, b} {
			wg.Go(func() {
				for j := range 100 {
					if err := s.PutBoard(ctx, BoardResult{RolloutID: rs[i%2].ID, BoardID: fmt.Sprint(i, "-", j)}); err != nil {
						errs <- err
						return
					}
					if err := s.Sight(ctx, Sighting{BoardID: fmt.Sprint(i, "-", j), BootID: "x"}); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		sg, _ := b.Sightings(ctx)
		if len(sg) != 400 {
			t.Fatalf("%d sightings", len(sg))
		}
	})
}

func BenchmarkPutBoard(b *testing.B) {
	for _, e := range engines {
		b.Run(e.name, func(b *testing.B) {
			ctx := context.Background()
			s := open(b, e.newDB(b))
			id := NewRolloutID()
			if err := s.CreateRollout(ctx, Rollout{ID: id}); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(64)
			b.ResetTimer() // not the database's creation
			var n atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					board := fmt.Sprintf("b%03d", n.Add(1)%500)
					if err := s.PutBoard(ctx, BoardResult{RolloutID: id, BoardID: board, Phase: PhasePrepare, BytesSent: 1}); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// TestOpenPostgres opens one Postgres database by each form of connection
// string, from several processes' worth of Stores at once on a database
// that has no tables yet: one migrates, the others wait for it.
func TestOpenPostgres(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.New(t)
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(dsn)
	u.Scheme = "postgresql"
	u.User = url.UserPassword(cfg.User, "s3cret") // the socket trusts; the password is only to be hidden
	forms := []string{
		dsn,
		u.String(),
		fmt.Sprintf("host=%s user=%s dbname=%s password=s3cret sslmode=disable", cfg.Host, cfg.User, cfg.Database),
	}
	stores := make([]*Store, len(forms))
	errs := make([]error, len(forms))
	var wg sync.WaitGroup
	for i, form := range forms {
		wg.Go(func() { stores[i], errs[i] = Open(ctx, form) })
	}
	wg.Wait()
	for i, s := range stores {
		if errs[i] != nil {
			t.Fatalf("%s: %v", forms[i], errs[i])
		}
		t.Cleanup(func() { s.Close() })
		want := fmt.Sprintf("postgres://%s@/%s?host=%s&port=5432", cfg.User, cfg.Database, url.QueryEscape(cfg.Host))
		if s.Path() != want || strings.Contains(s.Path(), "s3cret") {
			t.Errorf("path %q, want %q", s.Path(), want)
		}
		if s.Dir() != filepath.Dir(DefaultPath()) {
			t.Errorf("dir %q", s.Dir())
		}
	}
	if v := schemaVersion(t, dsn); v != SchemaVersion() {
		t.Fatalf("schema version %d", v)
	}
	if err := stores[0].CreateRollout(ctx, Rollout{ID: "r-1", Version: "1.0.0"}); err != nil {
		t.Fatal(err)
	}
	if r, _, err := stores[2].Rollout(ctx, "r-1"); err != nil || r.Version != "1.0.0" {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := Open(ctx, "postgres://u:s3cret@host:notaport/db"); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("a bad URL: %v", err)
	}
}

// TestMigrateFromVersion2 is a database the lab service wrote before
// claims existed: reopening adds the new tables and keeps the old rows.
func TestMigrateFromVersion2(t *testing.T) {
	eachEngine(t, func(t *testing.T, newDB func(testing.TB) string) {
		ctx := context.Background()
		dsn := newDB(t)
		s := open(t, dsn)
		if err := s.PutLabBoard(ctx, LabBoard{ID: "b1", State: "idle", Updated: at(0)}); err != nil {
			t.Fatal(err)
		}
		if err := s.PutLease(ctx, Lease{ID: "l-7", Seq: 7, Holder: "alice", State: LeaseReleased}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		db := raw(t, dsn)
		for _, q := range append(slices.Concat(toVersion7, toVersion6), `DROP TABLE board_claims`, `DROP TABLE lease_boards`, `DROP TABLE counters`,
			`DROP TABLE lab_instances`, `ALTER TABLE lab_boards DROP COLUMN owner`, `ALTER TABLE leases DROP COLUMN home`, `ALTER TABLE board_results DROP COLUMN updated`,
			`DROP TABLE rollout_parts`, `UPDATE schema_version SET version = 2`) {
			if _, err := db.Exec(q); err != nil {
				t.Fatal(err)
			}
		}
		s = open(t, dsn)
		if v := schemaVersion(t, dsn); v != SchemaVersion() || v != 8 {
			t.Fatalf("schema version %d", v)
		}
		if bs, err := s.LabBoards(ctx); err != nil || len(bs) != 1 {
			t.Fatalf("%+v %v", bs, err)
		}
		if got, err := s.ClaimBoards(ctx, "A", []string{"b1"}, time.Minute, at(0)); err != nil || len(got) != 1 {
			t.Fatalf("%v %v", got, err)
		}
		if n, err := s.NextLeaseSeq(ctx); err != nil || n != 8 {
			t.Fatalf("the queue goes on at %d (%v), want 8", n, err)
		}
	})
}
