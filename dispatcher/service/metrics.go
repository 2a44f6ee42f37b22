package service

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/proto"
)

// MetricsConfig says who may read /metrics. By default a request needs a
// token: an API user's, or TokenFile's.
type MetricsConfig struct {
	// Open serves /metrics to anyone (a scraper on a trusted network).
	Open bool `yaml:"open"`
	// TokenFile holds a token that grants /metrics and nothing else, for
	// Prometheus's authorization.credentials_file: a scraper then holds
	// no token that could run commands on boards.
	TokenFile string `yaml:"token_file" validate:"max=4096,excluded_with=Open"`
}

// metricsPath is where the service serves its metrics.
const metricsPath = "/metrics"

// Labels of boardlink_moved_bytes_total.
const (
	movedExec    = "exec"    // a command's input and output through the service
	movedConsole = "console" // console text served from the record
	movedFile    = "file"    // pushed and pulled files
	fromBoard    = "from_board"
	toBoard      = "to_board"
)

// Outcomes of a command run through the service (the outcome label of
// boardlink_exec_duration_seconds).
const (
	execOK       = "ok"       // exit code 0
	execFailed   = "failed"   // another exit code
	execSignaled = "signaled" // killed by a signal
	execTimeout  = "timeout"  // its own timeout ended it
	execCanceled = "canceled" // the service or its client canceled it
	execError    = "error"    // no record: the link or the agent failed
)

var execOutcomes = []string{execOK, execFailed, execSignaled, execTimeout, execCanceled, execError}

// maxScrapes bounds the scrapes served at once: each reads the
// inventory under the service's lock and the store's running rollouts.
const maxScrapes = 4

// rolloutScrapeTimeout bounds the store reads of one scrape.
const rolloutScrapeTimeout = 5 * time.Second

// maxScrapedRollouts bounds the running rollouts one scrape reports.
const maxScrapedRollouts = 64

// metrics are the service's Prometheus metrics, in a registry of its own
// so that two services in one process never collide. What the service
// already knows (boards, leases, last heartbeats, rollouts) is read when
// scraped; only events (a grant, a command, bytes) are counted here.
type metrics struct {
	handler   http.Handler
	open      bool
	scrape    *user // the scrape-only token's holder; nil: none
	leaseWait prometheus.Histogram
	execTime  *prometheus.HistogramVec
	moved     *prometheus.CounterVec
}

func newMetrics(s *Service) (*metrics, error) {
	mc := s.cfg.Metrics
	reg := prometheus.NewRegistry()
	m := &metrics{open: mc.Open}
	if mc.TokenFile != "" {
		us, err := loadUsers([]UserConfig{{Name: "metrics.token_file", TokenFile: mc.TokenFile}})
		if err != nil {
			return nil, err
		}
		m.scrape = &us[0]
	}
	if mc.Open {
		s.log.Warn("metrics: /metrics is open: whoever reaches the service reads the lab's boards and leases")
	}
	m.leaseWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "boardlink_lease_wait_seconds",
		Help: "How long granted leases waited, from the request to the grant.",
		// From granted at once to a day in the queue (max_wait's default).
		Buckets: []float64{0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600},
	})
	m.execTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "boardlink_exec_duration_seconds",
		Help:    "How long commands run through the service took, from the call to the record, by outcome.",
		Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600},
	}, []string{"outcome"})
	m.moved = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "boardlink_moved_bytes_total",
		Help: "Bytes moved through the service, by path and direction.",
	}, []string{"path", "direction"})
	// Every series exists from the start, so that rate() sees the first
	// event.
	for _, o := range execOutcomes {
		m.execTime.WithLabelValues(o)
	}
	for _, pd := range [][2]string{{movedExec, fromBoard}, {movedExec, toBoard}, {movedConsole, fromBoard},
		{movedFile, fromBoard}, {movedFile, toBoard}} {
		m.moved.WithLabelValues(pd[0], pd[1])
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.leaseWait, m.execTime, m.moved, &stateCollector{s: s})
	m.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelError),
		// A store that fails costs the rollout series, not the scrape;
		// promhttp_metric_handler_errors_total counts it.
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            reg,
		MaxRequestsInFlight: maxScrapes,
	})
	return m, nil
}

// hMetrics serves the metrics in Prometheus's text format.
func (s *Service) hMetrics(w http.ResponseWriter, r *http.Request, c *call) error {
	if s.metrics == nil {
		return &APIError{Status: http.StatusNotFound, Reason: string(proto.ReasonNotFound), Message: "no metrics"}
	}
	s.metrics.handler.ServeHTTP(w, r)
	return nil
}

// scrapeAllowed reports whether r may read path without an API user's
// token: path is /metrics, and the config leaves it open or r bears the
// scrape-only token.
func (m *metrics) scrapeAllowed(r *http.Request, path string) bool {
	if m == nil || path != metricsPath {
		return false
	}
	if m.open {
		return true
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if m.scrape == nil || !ok {
		return false
	}
	h := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(h[:], m.scrape.hash[:]) == 1
}

// leaseGranted observes a lease's wait in the queue.
func (m *metrics) leaseGranted(wait time.Duration) {
	if m == nil {
		return
	}
	m.leaseWait.Observe(wait.Seconds())
}

// execStarted begins the observation of a command run through the
// service: its input and output, counted (nil stays nil: no stream is
// opened for it), and the time it started, for execDone.
func (m *metrics) execStarted(sio ExecIO) (ExecIO, time.Time) {
	sio.Stdin = m.countReader(movedExec, toBoard, sio.Stdin)
	sio.Stdout = m.countWriter(movedExec, fromBoard, sio.Stdout)
	sio.Stderr = m.countWriter(movedExec, fromBoard, sio.Stderr)
	return sio, time.Now()
}

// execDone observes a command run through the service that started at
// started and ended with out and err.
func (m *metrics) execDone(started time.Time, out ExecOutcome, err error) {
	if m == nil {
		return
	}
	m.execTime.WithLabelValues(execOutcome(out, err)).Observe(time.Since(started).Seconds())
}

// execOutcome is the outcome label of a command's end.
func execOutcome(out ExecOutcome, err error) string {
	switch res := out.Result; {
	case out.Canceled != "" || res.Canceled:
		return execCanceled
	case err != nil:
		return execError
	case res.TimedOut:
		return execTimeout
	case res.Signal != "":
		return execSignaled
	case res.ExitCode != 0:
		return execFailed
	}
	return execOK
}

// countWriter counts what goes through w as bytes moved on path in
// direction; a nil w stays nil.
func (m *metrics) countWriter(path, direction string, w io.Writer) io.Writer {
	if m == nil || w == nil {
		return w
	}
	return countingWriter{w, byteCounter{m.moved.WithLabelValues(path, direction)}}
}

// countReader counts what is read from r as bytes moved on path in
// direction; a nil r stays nil.
func (m *metrics) countReader(path, direction string, r io.Reader) io.Reader {
	if m == nil || r == nil {
		return r
	}
	return countingReader{r, byteCounter{m.moved.WithLabelValues(path, direction)}}
}

// fileMoved counts the bytes a push or a pull moved (res.Bytes: what
// crossed the link, without what the board kept of an earlier cut push).
func (m *metrics) fileMoved(direction string, res proto.FileResult) {
	if m == nil {
		return
	}
	m.moved.WithLabelValues(movedFile, direction).Add(float64(res.Bytes))
}

// byteCounter counts the bytes of each read or write it is given.
type byteCounter struct{ prometheus.Counter }

func (c byteCounter) add(n int, err error) (int, error) {
	c.Add(float64(n))
	return n, err
}

type countingReader struct {
	io.Reader
	c byteCounter
}

func (r countingReader) Read(p []byte) (int, error) { return r.c.add(r.Reader.Read(p)) }

type countingWriter struct {
	io.Writer
	c byteCounter
}

func (w countingWriter) Write(p []byte) (int, error) { return w.c.add(w.Writer.Write(p)) }

// stateCollector reads what the service holds at each scrape, so that no
// count is kept beside the service's own state: boards by state, open
// leases, each board's last heartbeat, and the store's running rollouts.
// Of several services on one database, each reports the boards it owns
// and its own leases, and one the boards no service drives
// (reportsLocked): the sum over the services is the lab.
type stateCollector struct{ s *Service }

var (
	boardsDesc = prometheus.NewDesc("boardlink_boards",
		"Boards this service reports, by state: those it drives and, on the first service alive by name, those none drives.", []string{"state"}, nil)
	leasesDesc = prometheus.NewDesc("boardlink_leases",
		"Open leases this service keeps: active (holding boards) or waiting in the queue.", []string{"state"}, nil)
	lastSeenDesc = prometheus.NewDesc("boardlink_board_last_seen_timestamp_seconds",
		"When each board last answered a heartbeat (or its connection's first board.info), in Unix time.", []string{"board"}, nil)
	heartbeatDesc = prometheus.NewDesc("boardlink_heartbeat_interval_seconds",
		"How often the service asks each board board.info.", nil, nil)
	rolloutBoardsDesc = prometheus.NewDesc("boardlink_rollout_boards",
		"Boards this service reports of each running rollout, by phase and result (\"\" while under way).", []string{"rollout", "phase", "result"}, nil)
	rolloutFailedDesc = prometheus.NewDesc("boardlink_rollout_failed_boards",
		"Boards this service reports of each running rollout that failed (the count max_failures bounds).", []string{"rollout"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{boardsDesc, leasesDesc, lastSeenDesc, heartbeatDesc, rolloutBoardsDesc, rolloutFailedDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	byState := map[State]int{}
	active, waiting := 0, 0
	type seen struct {
		id string
		at time.Time
	}
	// Copied under the lock, sent after it: a slow scraper never holds
	// the service up.
	var last []seen
	now := s.now()
	s.mu.Lock()
	leads := s.leadsLocked(now)
	for _, id := range s.ids {
		b := s.boards[id]
		if !s.reportsLocked(b, now) {
			continue
		}
		byState[b.state]++
		if !b.lastSeen.IsZero() {
			last = append(last, seen{id, b.lastSeen})
		}
	}
	for _, l := range s.leases {
		if l.State == store.LeaseWaiting {
			waiting++
		} else {
			active++
		}
	}
	s.mu.Unlock()
	for _, st := range States {
		gauge(boardsDesc, float64(byState[st]), string(st))
	}
	gauge(leasesDesc, float64(active), store.LeaseActive)
	gauge(leasesDesc, float64(waiting), store.LeaseWaiting)
	for _, b := range last {
		gauge(lastSeenDesc, float64(b.at.UnixNano())/1e9, b.id)
	}
	gauge(heartbeatDesc, s.cfg.Heartbeat.D().Seconds())
	c.collectRollouts(ch, gauge, now, leads)
}

// collectRollouts reports the running rollouts the store records, as the
// rollout's runner writes them (the service's own, or a CLI's on the same
// database), counted in the store: of their boards, those this service
// owns, and, if it leads (leadsLocked), those no service's claim holds at
// now.
func (c *stateCollector) collectRollouts(ch chan<- prometheus.Metric, gauge func(*prometheus.Desc, float64, ...string), now time.Time, leads bool) {
	ctx, cancel := context.WithTimeout(context.Background(), rolloutScrapeTimeout)
	defer cancel()
	counts, err := c.s.st.RolloutCounts(ctx, now, maxScrapedRollouts)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(rolloutBoardsDesc, err)
		return
	}
	type key struct{ rollout, phase, result string }
	n, failed := map[key]int{}, map[string]int{}
	for _, rc := range counts {
		if rc.Owner != c.s.owner && (rc.Owner != "" || !leads) {
			continue
		}
		n[key{rc.Rollout, rc.Phase, rc.Result}] += rc.Boards
		f := 0
		if dispatcher.RolloutFailure(rc.Result) {
			f = rc.Boards
		}
		failed[rc.Rollout] += f // each rollout's series, 0 included
	}
	for k, v := range n {
		gauge(rolloutBoardsDesc, float64(v), k.rollout, k.phase, k.result)
	}
	for id, v := range failed {
		gauge(rolloutFailedDesc, float64(v), id)
	}
}
