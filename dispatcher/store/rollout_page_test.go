package store

import (
	"context"
	"errors"
	"fmt"
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
