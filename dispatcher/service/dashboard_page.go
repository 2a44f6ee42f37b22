package service

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/boardlink/boardlink/dispatcher/store"
)

// The boards page and a rollout's page show their boards a page at a
// time (a lab of 10,000 boards is no page to read, nor to render every 2
// seconds), chosen by plain GET parameters: links and a form choose them
// with JavaScript off, and the page's live stream, opened with the same
// query, renders that page only. The counts cover all boards.

const (
	// perPage is the rows of a page.
	perPage = 100
	// maxFilter bounds a filter's text (?q=, ?owner=, ?result=).
	maxFilter = 256
)

// pager is a page's place among the rows its filter selects, with the
// links to the others ("" where there is none).
type pager struct {
	Page, Pages  int
	From, To, Of int // rows From to To (from 1) of Of
	First, Prev  string
	Next, Last   string
}

// newPager is page (from 1) of n rows, its links q with page set.
func newPager(q url.Values, page, n int) pager {
	p := pager{Page: page, Pages: max(1, (n+perPage-1)/perPage), Of: n}
	if n > 0 {
		p.From, p.To = (page-1)*perPage+1, min(page*perPage, n)
	}
	at := func(i int) string {
		if i == 1 {
			return withParam(q, "page", "")
		}
		return withParam(q, "page", strconv.Itoa(i))
	}
	if page > 1 {
		p.First, p.Prev = at(1), at(page-1)
	}
	if page < p.Pages {
		p.Next, p.Last = at(page+1), at(p.Pages)
	}
	return p
}

// withParam is the link to q with key set to value ("": removed) and,
// unless key is the page itself, the first page: a new filter starts
// there.
func withParam(q url.Values, key, value string) string {
	c := url.Values{}
	for k, v := range q {
		if k != key && (k != "page" || key == "page") {
			c[k] = v
		}
	}
	if value != "" {
		c.Set(key, value)
	}
	return "?" + c.Encode()
}

// pageParam is ?page= (1 when absent), and its filter's parameters each at
// most maxFilter long.
func pageParam(q url.Values, filters ...string) (int, error) {
	for _, k := range filters {
		if len(q.Get(k)) > maxFilter {
			return 0, &FieldError{Field: k, Message: fmt.Sprintf("at most %d bytes", maxFilter)}
		}
	}
	s := q.Get("page")
	if s == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, &FieldError{Field: "page", Message: "a page number, from 1"}
	}
	return n, nil
}

// boardsData is the boards page's.
type boardsData struct {
	Boards []Board // the page's
	Total  int     // all boards
	Counts []stateCount
	All    string // the link to every state
	Filter boardFilter
	Owners []string // when several services share the database
	Pager  pager
}

// stateCount is how many boards are in State, and the link to them.
type stateCount struct {
	State   State
	N       int
	Href    string
	Current bool
}

// boardsQuery is the boards page's filter and page: ?state=, ?owner=, ?q=
// (in a board's id, model or labels) and ?page=.
func boardsQuery(q url.Values) (boardFilter, int, error) {
	page, err := pageParam(q, "q", "owner")
	if err != nil {
		return boardFilter{}, 0, err
	}
	f := boardFilter{State: State(q.Get("state")), Owner: q.Get("owner"), Text: strings.TrimSpace(q.Get("q"))}
	if f.State != "" && !slices.Contains(States, f.State) {
		return boardFilter{}, 0, &FieldError{Field: "state", Message: fmt.Sprintf("no state %q: one of %v", f.State, States)}
	}
	return f, page, nil
}

func (s *Service) dashboardBoards(q url.Values) (boardsData, error) {
	f, page, err := boardsQuery(q)
	if err != nil {
		return boardsData{}, err
	}
	p := s.pageOfBoards(f, (page-1)*perPage, perPage)
	if last := max(1, (p.Matched+perPage-1)/perPage); page > last { // past the end (boards went away): the last
		page = last
		p = s.pageOfBoards(f, (page-1)*perPage, perPage)
	}
	data := boardsData{Boards: p.Boards, Filter: f, All: withParam(q, "state", ""), Pager: newPager(q, page, p.Matched)}
	if len(p.Owners) > 1 {
		data.Owners = p.Owners
	}
	for _, st := range States {
		data.Total += p.Counts[st]
		if p.Counts[st] > 0 || st == f.State {
			data.Counts = append(data.Counts, stateCount{State: st, N: p.Counts[st],
				Href: withParam(q, "state", string(st)), Current: st == f.State})
		}
	}
	return data, nil
}

// rolloutData is a rollout's page's.
type rolloutData struct {
	Rollout store.Rollout
	Boards  []store.BoardResult // the page's
	Parts   []store.RolloutPart // on the other services
	Done    int                 // boards with a result
	Results []resultCount
	All     string // the link to every result
	Result  string // the filter: a Summary key
	Pager   pager
	// The viewer may stop the rollout, and try its parts given up again.
	MayStop, MayRetry bool
}

// resultCount is how many of a rollout's boards count under Key (a
// Summary key), and the link to them.
type resultCount struct {
	Key     string
	N       int
	Href    string
	Current bool
}

// rolloutPage is the page of rollout id's boards that the query q asks
// for: ?result= (a Summary key) and ?page=; those that failed first.
func rolloutPage(ctx context.Context, st *store.Store, id string, q url.Values) (rolloutData, error) {
	page, err := pageParam(q, "result")
	if err != nil {
		return rolloutData{}, err
	}
	key := q.Get("result")
	ro, bs, err := st.RolloutPage(ctx, id, key, (page-1)*perPage, perPage)
	if err != nil {
		return rolloutData{}, err
	}
	matched := ro.Boards
	if key != "" {
		matched = ro.Summary[key]
	}
	if last := max(1, (matched+perPage-1)/perPage); page > last { // past the end: the last
		page = last
		if ro, bs, err = st.RolloutPage(ctx, id, key, (page-1)*perPage, perPage); err != nil {
			return rolloutData{}, err
		}
	}
	data := rolloutData{Rollout: ro, Boards: bs, Result: key, All: withParam(q, "result", ""), Pager: newPager(q, page, matched)}
	for _, k := range store.SummaryKeys(ro.Summary) {
		data.Results = append(data.Results, resultCount{Key: k, N: ro.Summary[k], Href: withParam(q, "result", k), Current: k == key})
		if k != store.SummaryPending && k != store.SummaryRunning {
			data.Done += ro.Summary[k]
		}
	}
	return data, nil
}
