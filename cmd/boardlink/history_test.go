package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher/store"
)

// historyDB writes a records database through the store: an older rollout
// that is done, and a newer one interrupted mid-way.
func historyDB(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "records.db")
	s, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t0 := time.Date(2026, 11, 20, 9, 30, 0, 0, time.UTC)
	rollouts := []store.Rollout{
		{ID: "r-20261120-0930-aa01", Image: "/img/rootfs-1.1.0.img", Version: "1.1.0", Selector: "model=imx8",
			Concurrency: 16, MaxFailures: 3, Plan: []byte(`{"boards":3}`), State: store.StateDone, Created: t0},
		{ID: "r-20261122-0301-ab12", Image: "/img/rootfs-2.0.0.img", ImageSHA256: strings.Repeat("5e", 32),
			Version: "2.0.0", Selector: "model=imx8 rack=2", Concurrency: 2, Plan: []byte(`{"boards":5}`),
			Created: t0.Add(48 * time.Hour)},
	}
	boards := [][]store.BoardResult{
		{
			{BoardID: "imx8-01", Phase: store.PhaseDone, Result: store.ResultCommitted},
			{BoardID: "imx8-02", Phase: store.PhaseDone, Result: store.ResultCommitted},
			{BoardID: "imx8-03", Phase: store.PhaseDone, Result: store.ResultRolledBack, Reason: "health check failed"},
		},
		{
			{BoardID: "imx8-01", Address: "ws://10.0.0.1:7207", Phase: store.PhaseDone, Result: store.ResultCommitted,
				FromVersion: "1.1.0", ToVersion: "2.0.0", BytesSent: 3 << 20, Attempts: 1,
				Started: t0.Add(48*time.Hour + time.Second), Ended: t0.Add(48*time.Hour + 95*time.Second), UpdateID: "u-1"},
			{BoardID: "imx8-02", Address: "ws://10.0.0.2:7207", Phase: store.PhasePrepare, FromVersion: "1.1.0",
				ToVersion: "2.0.0", BytesSent: 1536, Attempts: 2, UpdateID: "u-2"},
			{BoardID: "imx8-03", Phase: store.PhaseDone, Result: store.ResultUnreachable, Reason: "dial: connection refused"},
			{BoardID: "imx8-04", Phase: store.PhaseDone, Result: store.ResultIncompatible, Reason: "model sim"},
			{BoardID: "imx8-05", Phase: store.PhasePlan},
		},
	}
	for i, r := range rollouts {
		if err := s.CreateRollout(ctx, r); err != nil {
			t.Fatal(err)
		}
		for _, b := range boards[i] {
			b.RolloutID = r.ID
			if err := s.PutBoard(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	return path
}

func TestHistoryEmpty(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no", "records.db")
	empty := filepath.Join(t.TempDir(), "records.db")
	s, err := store.Open(context.Background(), empty)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, db := range []string{missing, empty} {
		stdout, stderr, code := cli(t, "", "history", "--db", db)
		if code != 0 || !strings.Contains(stdout, "no rollouts yet") || !strings.Contains(stdout, db) {
			t.Fatalf("%s: %d %q %q", db, code, stdout, stderr)
		}
		stdout, _, code = cli(t, "", "history", "--db", db, "--json")
		if code != 0 || strings.TrimSpace(stdout) != "[]" {
			t.Fatalf("%s --json: %d %q", db, code, stdout)
		}
	}
	if _, err := os.Stat(filepath.Dir(missing)); !os.IsNotExist(err) {
		t.Fatalf("reading an empty history created %s", filepath.Dir(missing))
	}
}

func TestHistoryList(t *testing.T) {
	db := historyDB(t)
	stdout, stderr, code := cli(t, "", "history", "--db", db)
	if code != 0 {
		t.Fatalf("%d %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and two rows:\n%s", stdout)
	}
	tests := []struct {
		line int
		want []string
	}{
		{0, []string{"ID", "CREATED", "VERSION", "BOARDS", "COMMITTED", "FAILED", "SKIPPED", "STATE"}},
		// Newest first: 5 boards, 1 committed, 1 failed (unreachable), 1 skipped (incompatible), 2 unfinished.
		{1, []string{"r-20261122-0301-ab12", "2.0.0", "5", "1", "1", "1", "running"}},
		{2, []string{"r-20261120-0930-aa01", "1.1.0", "3", "2", "1", "0", "done"}},
	}
	for _, tc := range tests {
		f := strings.Fields(lines[tc.line])
		if tc.line > 0 {
			f = append(f[:1], f[3:]...) // drop the local date and time
		}
		if strings.Join(f, " ") != strings.Join(tc.want, " ") {
			t.Errorf("line %d: %q, want %q", tc.line, f, tc.want)
		}
	}

	stdout, _, code = cli(t, "", "history", "--db", db, "--limit", "1")
	if code != 0 || strings.Contains(stdout, "aa01") || !strings.Contains(stdout, "ab12") ||
		!strings.Contains(stdout, "--limit 0") {
		t.Fatalf("--limit 1: %d\n%s", code, stdout)
	}

	// BOARDLINK_DB stands in for --db.
	t.Setenv("BOARDLINK_DB", db)
	stdout, _, code = cli(t, "", "history", "--json")
	var rs []store.Rollout
	if err := json.Unmarshal([]byte(stdout), &rs); err != nil || code != 0 {
		t.Fatalf("%v %d %s", err, code, stdout)
	}
	if len(rs) != 2 || rs[0].ID != "r-20261122-0301-ab12" || rs[0].Boards != 5 ||
		rs[0].Summary[store.ResultCommitted] != 1 || rs[0].Summary[store.SummaryPending] != 1 ||
		rs[1].State != store.StateDone || rs[0].Plan != nil {
		t.Fatalf("%+v", rs)
	}
}

func TestHistoryShow(t *testing.T) {
	db := historyDB(t)
	stdout, stderr, code := cli(t, "", "history", "r-20261122", "--db", db) // a unique prefix
	if code != 0 {
		t.Fatalf("%d %s", code, stderr)
	}
	for _, want := range []string{
		"r-20261122-0301-ab12", "running", "/img/rootfs-2.0.0.img", strings.Repeat("5e", 32), "model=imx8 rack=2",
		"2 at a time", "5: 1 committed, 1 incompatible, 1 unreachable, 1 running, 1 pending",
		"BOARD", "REASON",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("lacks %q", want)
		}
	}
	rows := map[string]string{
		"imx8-01": "imx8-01 ws://10.0.0.1:7207 done committed 1.1.0 2.0.0 3.0 MiB 1 1m34s -",
		"imx8-02": "imx8-02 ws://10.0.0.2:7207 prepare (running) 1.1.0 2.0.0 1.5 KiB 2 - -",
		"imx8-03": "imx8-03 - done unreachable - - 0 B 0 - dial: connection refused",
		"imx8-05": "imx8-05 - plan (pending) - - 0 B 0 - -",
	}
	for _, line := range strings.Split(stdout, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && rows[f[0]] != "" {
			if got := strings.Join(f, " "); got != rows[f[0]] {
				t.Errorf("row\n got %q\nwant %q", got, rows[f[0]])
			}
			delete(rows, f[0])
		}
	}
	if len(rows) > 0 {
		t.Errorf("rows missing: %v\n%s", rows, stdout)
	}

	stdout, _, code = cli(t, "", "history", "r-20261120-0930-aa01", "--db", db, "--json")
	var got struct {
		Rollout store.Rollout       `json:"rollout"`
		Boards  []store.BoardResult `json:"boards"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil || code != 0 {
		t.Fatalf("%v %d %s", err, code, stdout)
	}
	var plan bytes.Buffer
	json.Compact(&plan, got.Rollout.Plan)
	if got.Rollout.ID != "r-20261120-0930-aa01" || plan.String() != `{"boards":3}` ||
		len(got.Boards) != 3 || got.Boards[2].Result != store.ResultRolledBack || got.Boards[2].Reason != "health check failed" {
		t.Fatalf("%+v", got)
	}
}

func TestHistoryErrors(t *testing.T) {
	db := historyDB(t)
	future := filepath.Join(t.TempDir(), "future.db")
	s, err := store.Open(context.Background(), future)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	u := url.URL{Scheme: "file", Path: future, OmitHost: true}
	raw, err := sql.Open("sqlite", u.String())
	if err != nil {
		t.Fatal(err)
	}
	_, err = raw.Exec(`UPDATE schema_version SET version = 1000`)
	raw.Close()
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "none.db")
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no such rollout", []string{"history", "--db", db, "r-1999"}, 1, `no rollout "r-1999"`},
		{"no database", []string{"history", "--db", missing, "r-1999"}, 1, "no records at " + missing},
		{"ambiguous prefix", []string{"history", "--db", db, "r-2026"}, 2, "r-20261120-0930-aa01, r-20261122-0301-ab12"},
		{"two ids", []string{"history", "--db", db, "a", "b"}, 2, "at most one rollout ID"},
		{"negative limit", []string{"history", "--db", db, "--limit", "-1"}, 2, "--limit"},
		{"bad flag", []string{"history", "--frobnicate"}, 2, "unknown flag"},
		{"newer schema", []string{"history", "--db", future}, 1, "newer boardlink"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := cli(t, "", tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.msg) {
				t.Fatalf("got %d %q, want %d and %q", code, stderr, tc.code, tc.msg)
			}
		})
	}
}

func TestHistoryHelp(t *testing.T) {
	stdout, _, code := cli(t, "", "history", "--help")
	for _, want := range []string{"Usage:", "Examples:", "Exit status", "--json", "--limit", "--db", "BOARDLINK_DB", "--resume"} {
		if code != 0 || !strings.Contains(stdout, want) {
			t.Errorf("history --help lacks %q", want)
		}
	}
	stdout, _, _ = cli(t, "", "--help")
	if !strings.Contains(stdout, "history") {
		t.Errorf("boardlink --help does not list history")
	}
}
