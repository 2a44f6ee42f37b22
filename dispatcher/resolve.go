package dispatcher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/internal/atomicfile"
)

// DefaultResolveTimeout bounds a search for boards when
// Resolver.Timeout is not set.
const DefaultResolveTimeout = 2 * time.Second

// idCacheFresh is how long a resolved address is tried first, before
// discovery. A stale or wrong entry costs one failed dial, then discovery.
const idCacheFresh = 10 * time.Minute

// idCacheFormat versions the id cache file.
const idCacheFormat = 2

// Resolver finds boards by id, as `boardlink ls` lists them: it browses
// mDNS on Ifaces and listens on serial ports at once, and takes an exact
// id, else the one id that starts with what it was given. It remembers
// the address each id resolved to (CacheFile), and tries that first.
//
// With a Resolver in DialOptions, Dial takes a board id wherever it takes
// an address. A Resolver is safe for concurrent use; do not copy it.
type Resolver struct {
	// Ifaces are the network interfaces mDNS browses on; empty: every up,
	// multicast-capable, non-loopback one (see discovery.Interfaces).
	Ifaces []string
	// Timeout bounds a search (default DefaultResolveTimeout). A search
	// for an id ends as soon as a board with exactly that id answers.
	Timeout time.Duration
	// NoSerial skips serial ports. SerialPorts are listened to besides
	// the USB serial ports the system has (nothing is written to any).
	NoSerial    bool
	SerialPorts []string
	// NoMDNS skips mDNS: boards are looked for on serial ports only.
	NoMDNS bool
	// CacheFile keeps the address each id resolved to, for a while (see
	// DefaultResolveCachePath); "" keeps none.
	CacheFile string
	// Warn, if set, is told what makes an answer doubtful: Watch starting
	// while mDNS has no usable interface, or an id resolved as a prefix
	// while it had none (a board on the network may share the prefix).
	// Nil logs it on Logger.
	Warn   func(msg string)
	Logger *slog.Logger

	mu sync.Mutex // orders this process's reads and writes of CacheFile
}

// DefaultResolveCachePath is $XDG_CACHE_HOME/boardlink/boards.json
// (~/.cache/boardlink/boards.json).
func DefaultResolveCachePath() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("board id cache: %w", err)
	}
	return filepath.Join(dir, "boardlink", "boards.json"), nil
}

// ErrUnknownBoard is wrapped by the errors of a board id that names no
// board (UnknownBoardError) or several (AmbiguousBoardError): a mistake
// of the caller's, not of the link.
var ErrUnknownBoard = errors.New("unknown board")

// UnknownBoardError: no board seen has the id, or an id starting with it.
type UnknownBoardError struct {
	ID    string
	Found Found // what the search saw
}

func (e *UnknownBoardError) Error() string {
	if len(e.Found.Boards) == 0 {
		return fmt.Sprintf("%s %q: no board answered within %s (%s; check --iface, or give an address such as ws://HOST:7207)",
			ErrUnknownBoard, e.ID, e.Found.Timeout, e.Found.Where())
	}
	seen := make([]string, len(e.Found.Boards))
	for i, r := range e.Found.Boards {
		seen[i] = r.ID
	}
	return fmt.Sprintf("%s %q: boards seen: %s", ErrUnknownBoard, e.ID, strings.Join(seen, ", "))
}

// Unwrap makes it an ErrUnknownBoard.
func (e *UnknownBoardError) Unwrap() error { return ErrUnknownBoard }

// AmbiguousBoardError: several boards have an id starting with ID, and
// none has exactly ID.
type AmbiguousBoardError struct {
	ID      string
	Matches []discovery.Record
}

func (e *AmbiguousBoardError) Error() string {
	names := make([]string, len(e.Matches))
	for i, r := range e.Matches {
		names[i] = r.ID + " (" + r.Address + ")"
	}
	return fmt.Sprintf("%s: %q is ambiguous: %s", ErrUnknownBoard, e.ID, strings.Join(names, ", "))
}

// Unwrap makes it an ErrUnknownBoard.
func (e *AmbiguousBoardError) Unwrap() error { return ErrUnknownBoard }

// ErrBoardConflict is wrapped by ConflictError: several boards announce
// the id, and none is taken for it.
var ErrBoardConflict = errors.New("board id announced by several boards")

// ConflictError: the id names several boards at once (cloned boards, or
// one pretending to be another). Nothing is sent to either by id; an
// address still reaches each.
type ConflictError struct {
	ID        string
	Addresses []string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s %s: %s (give an address instead)", ErrBoardConflict, e.ID, strings.Join(e.Addresses, ", "))
}

// Unwrap makes it an ErrBoardConflict.
func (e *ConflictError) Unwrap() error { return ErrBoardConflict }

// Found is what a search for boards saw.
type Found struct {
	// Boards has one record per id (the mDNS one when a board is also
	// on a serial port), sorted by id.
	Boards []discovery.Record
	// MDNS says which interfaces mDNS browsed on, and which it left out;
	// nil when mDNS was not asked (NoMDNS) or its interfaces not found.
	MDNS *discovery.IfaceReport
	// Serial is set when serial ports were listened to.
	Serial bool
	// Timeout is how long the search listened, at most.
	Timeout time.Duration
	// Refused are the mDNS records that claimed to be boards and were
	// not believed (an instance name its TXT id does not match, an
	// invalid id).
	Refused []discovery.Refusal
	// SkippedPorts are the serial ports left alone because another
	// process holds them.
	SkippedPorts []discovery.SkippedPort
}

// Doubts says, one line each, what in the answer is not to be trusted
// or not complete: ids several boards announce, records refused, and
// serial ports not listened to.
func (f Found) Doubts() []string {
	var out []string
	for _, r := range f.Boards {
		if len(r.Conflict) > 0 {
			out = append(out, fmt.Sprintf("%d boards announce the id %s: %s; nothing is sent to it by id until one goes (use an address)",
				len(r.Conflict), r.ID, strings.Join(r.Conflict, ", ")))
		}
	}
	for _, r := range f.Refused {
		out = append(out, fmt.Sprintf("ignored an mDNS record %q from %s: %s", r.Name, r.From, r.Reason))
	}
	for _, p := range f.SkippedPorts {
		out = append(out, fmt.Sprintf("did not listen on serial port %s: %s", p.Port, p.Reason))
	}
	return out
}

// Where says where the search looked: "mDNS on eth0, usb0, and serial
// ports".
func (f Found) Where() string {
	var where []string
	switch {
	case f.MDNS == nil:
	case len(f.MDNS.Used) > 0:
		where = append(where, "mDNS on "+strings.Join(f.MDNS.Used, ", "))
	default:
		where = append(where, "mDNS on no usable interface")
	}
	if f.Serial {
		where = append(where, "serial ports")
	}
	if len(where) == 0 {
		return "nowhere"
	}
	return strings.Join(where, ", and ")
}

// Warning says what makes the answer doubtful, or "": mDNS had no usable
// interface, so no board on the network could answer.
func (f Found) Warning() string {
	if f.MDNS == nil || len(f.MDNS.Used) > 0 {
		return ""
	}
	var left []string
	for _, s := range f.MDNS.Skipped {
		left = append(left, s.Name+": "+s.Reason)
	}
	msg := "mDNS had no usable network interface, so no board on the network could answer"
	if len(left) > 0 {
		msg += " (" + strings.Join(left, "; ") + ")"
	}
	return msg + "; name one with --iface (--iface lo for boards on this host)"
}

func (r *Resolver) timeout() time.Duration {
	if r.Timeout > 0 {
		return r.Timeout
	}
	return DefaultResolveTimeout
}

func (r *Resolver) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

// Find lists the boards that answer within Timeout.
func (r *Resolver) Find(ctx context.Context) (Found, error) { return r.find(ctx, "") }

// find browses mDNS and listens on serial ports at once. With want set,
// it returns as soon as a board whose id is want has been seen. An error
// is returned only when nothing was found.
func (r *Resolver) find(ctx context.Context, want string) (Found, error) {
	f := Found{Serial: !r.NoSerial, Timeout: r.timeout()}
	ctx, cancel := context.WithTimeout(ctx, f.Timeout)
	defer cancel()
	var (
		mu      sync.Mutex
		recs    []discovery.Record
		refused []discovery.Refusal
		skipped []discovery.SkippedPort
		errs    []error
		wg      sync.WaitGroup
	)
	add := func(rs []discovery.Record, err error) {
		mu.Lock()
		defer mu.Unlock()
		recs = append(recs, rs...)
		if err != nil {
			errs = append(errs, err)
		}
		for _, rec := range rs {
			if want != "" && rec.ID == want {
				cancel()
			}
		}
	}
	if !r.NoMDNS {
		if rep, err := discovery.Interfaces(r.Ifaces); err != nil {
			add(nil, err)
		} else {
			f.MDNS = &rep
			wg.Go(func() {
				rs, rf, err := r.browse(ctx, want)
				add(rs, err)
				mu.Lock()
				refused = rf
				mu.Unlock()
			})
		}
	}
	if f.Serial {
		wg.Go(func() {
			rs, sk, err := discovery.ScanSerial(ctx, discovery.SerialConfig{Ports: r.SerialPorts, Logger: r.Logger})
			// A port held by a line mux is not probed: its mux answers
			// for the board on it.
			var left []discovery.SkippedPort
			for _, p := range sk {
				if rec, ok := muxRecord(ctx, p.Port); ok {
					rs = append(rs, rec)
				} else {
					left = append(left, p)
				}
			}
			add(rs, err)
			mu.Lock()
			skipped = left
			mu.Unlock()
		})
	}
	wg.Wait()
	f.Boards, f.Refused, f.SkippedPorts = dedupe(recs), refused, skipped
	if len(f.Boards) == 0 && len(errs) > 0 {
		return f, errors.Join(errs...)
	}
	return f, nil
}

// muxLookup bounds asking a line mux for its board: one that is not at
// hand (still waiting for its agent) leaves the port skipped.
const muxLookup = 2 * time.Second

// muxRecord asks the line mux that holds the serial port dev, if one
// does, for the board on it: its session's hello and board.info. It
// never opens the port itself.
func muxRecord(ctx context.Context, dev string) (discovery.Record, bool) {
	ctx, cancel := context.WithTimeout(ctx, muxLookup)
	defer cancel()
	addr := "serial://" + dev
	sock, err := (&LineShare{}).socket(addr)
	if err != nil {
		return discovery.Record{}, false
	}
	if _, err := os.Stat(sock); err != nil {
		return discovery.Record{}, false // no mux: another program holds the port
	}
	c, err := Dial(ctx, addr, DialOptions{Lines: &LineShare{}})
	if err != nil {
		return discovery.Record{}, false
	}
	defer c.Close()
	info, err := c.Info(ctx)
	if err != nil {
		return discovery.Record{}, false
	}
	rec := discovery.Record{ID: info.ID, Model: info.Model, Protocol: info.Protocol, Capabilities: info.Capabilities,
		Version: info.Agent, BootID: info.BootID, Labels: info.Labels, Address: addr, Source: "serial", Seen: time.Now()}
	if fp, err := auth.ParseFingerprint(info.Fingerprint); err == nil {
		rec.FP = fp.Short()
	}
	for _, sl := range info.Slots {
		if sl.Booted {
			rec.Slot, rec.SlotVersion = sl.Name, sl.Version
		}
	}
	return rec, true
}

// conflictSettle is how long a search for an id listens on once the id
// has answered, for a second board with the same id (a clone, an
// impostor) answering the same question.
const conflictSettle = 200 * time.Millisecond

// browse returns the boards mDNS sees until ctx ends, or the board want
// soon after it is seen, and the records it refused.
func (r *Resolver) browse(ctx context.Context, want string) ([]discovery.Record, []discovery.Refusal, error) {
	b := discovery.NewBrowser(discovery.BrowseConfig{Ifaces: r.Ifaces, Logger: r.Logger})
	if err := b.Start(ctx); err != nil {
		return nil, nil, err
	}
	defer b.Stop()
	var settle <-chan time.Time
	for {
		select {
		case ev := <-b.Events():
			if ev.Op == discovery.Added && want != "" && ev.Record.ID == want && settle == nil {
				t := time.NewTimer(conflictSettle)
				defer t.Stop()
				settle = t.C
			}
		case <-settle:
			return b.Boards(), b.Refusals(), nil
		case <-ctx.Done():
			return b.Boards(), b.Refusals(), nil
		}
	}
}

// dedupe keeps one record per id, preferring the network (mDNS) one, and
// sorts them by id.
func dedupe(recs []discovery.Record) []discovery.Record {
	byID := map[string]discovery.Record{}
	for _, r := range recs {
		if old, ok := byID[r.ID]; !ok || old.Source == "serial" && r.Source == "mdns" {
			byID[r.ID] = r
		}
	}
	out := make([]discovery.Record, 0, len(byID))
	for _, r := range byID {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b discovery.Record) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Resolve finds the board id names, by discovery only (not the cache):
// an exact id, else the only board whose id starts with it. It does not
// open a session: the answer is what the board announced, not proven.
func (r *Resolver) Resolve(ctx context.Context, id string) (discovery.Record, error) {
	f, err := r.find(ctx, id)
	if err != nil {
		return discovery.Record{}, fmt.Errorf("looking for board %q: %w", id, err)
	}
	rec, err := f.pick(id)
	if err != nil {
		return rec, err
	}
	if w := f.Warning(); w != "" && rec.ID != id {
		r.warn(fmt.Sprintf("%q taken as %s: %s", id, rec.ID, w))
	}
	return rec, nil
}

// Address is board itself when it is an address (ws://, serial://...),
// else the address of the board it names (Resolve): for what takes an
// address but no session (Console, Identify, Pair).
func (r *Resolver) Address(ctx context.Context, board string) (string, error) {
	if isAddress(board) {
		return board, nil
	}
	rec, err := r.Resolve(ctx, board)
	return rec.Address, err
}

func (r *Resolver) warn(msg string) {
	if r.Warn != nil {
		r.Warn(msg)
		return
	}
	r.logger().Warn("resolve: " + msg)
}

// pick chooses the board id names: an exact match, else the only board
// whose id starts with it.
func (f Found) pick(id string) (discovery.Record, error) {
	var prefixed []discovery.Record
	for _, r := range f.Boards {
		if r.ID == id && len(r.Conflict) > 0 {
			return discovery.Record{}, &ConflictError{ID: id, Addresses: r.Conflict}
		}
		if r.ID == id {
			return r, nil
		}
		if strings.HasPrefix(r.ID, id) {
			prefixed = append(prefixed, r)
		}
	}
	switch len(prefixed) {
	case 0:
		return discovery.Record{}, &UnknownBoardError{ID: id, Found: f}
	case 1:
		if len(prefixed[0].Conflict) > 0 {
			return discovery.Record{}, &ConflictError{ID: prefixed[0].ID, Addresses: prefixed[0].Conflict}
		}
		return prefixed[0], nil
	}
	return discovery.Record{}, &AmbiguousBoardError{ID: id, Matches: prefixed}
}

// dial opens a session with the board id names: at the address cached
// for it, if fresh and still the same board, else where discovery finds
// it. The session is refused unless the board is the one resolved
// (BoardID) and proves the key it announced (Fingerprint, unless the
// caller gave one).
func (r *Resolver) dial(ctx context.Context, id string, opts DialOptions) (*Client, error) {
	if e, ok := r.cached(id); ok {
		// The address may hold another board by now: only the id counts,
		// and the board's key is checked as always.
		o := opts
		o.BoardID = e.ID
		c, err := dialAddr(ctx, e.Address, o)
		if err == nil || ctx.Err() != nil {
			return c, err
		}
		if errors.Is(err, ErrUntrusted) && !errors.As(err, new(*WrongBoardError)) {
			return nil, err // the right board with the wrong key: say so, never look further
		}
		r.logger().Debug("resolve: cached address failed; asking discovery", "id", id, "address", e.Address, "err", err)
	}
	rec, err := r.Resolve(ctx, id)
	if err != nil {
		return nil, err
	}
	if rec.Address == "" { // only link-local IPv6 addresses, with no interface named
		return nil, fmt.Errorf("board %s answered with no address this host can use (name its interface with --iface)", rec.ID)
	}
	r.remember(id, rec)
	opts.BoardID = rec.ID
	if opts.Fingerprint.IsZero() && rec.FP != "" {
		// What the board announced must be what it proves.
		if fp, err := auth.ParseFingerprint(rec.FP); err == nil {
			opts.Fingerprint = fp
		}
	}
	return dialAddr(ctx, rec.Address, opts)
}

// idCacheEntry is where an id (or a prefix of one) last resolved to.
type idCacheEntry struct {
	ID      string    `json:"id"`
	Address string    `json:"address"`
	Seen    time.Time `json:"seen"`
}

// cached returns the fresh entry for id.
func (r *Resolver) cached(id string) (idCacheEntry, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.loadCache()[id]
	return e, ok && time.Since(e.Seen) < idCacheFresh
}

// remember caches where id (and the id it resolved to) is now, best
// effort: the cache only saves time.
func (r *Resolver) remember(id string, rec discovery.Record) {
	if r.CacheFile == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cache := r.loadCache()
	for k, e := range cache {
		if time.Since(e.Seen) > idCacheFresh {
			delete(cache, k)
		}
	}
	e := idCacheEntry{ID: rec.ID, Address: rec.Address, Seen: time.Now()}
	cache[rec.ID], cache[id] = e, e
	err := os.MkdirAll(filepath.Dir(r.CacheFile), 0o755)
	if err == nil {
		err = atomicfile.WriteJSON(r.CacheFile, idCacheFormat, cache)
	}
	if err != nil {
		r.logger().Debug("resolve: cache not saved", "file", r.CacheFile, "err", err)
	}
}

// loadCache reads the id cache; any problem means an empty cache.
func (r *Resolver) loadCache() map[string]idCacheEntry {
	cache := map[string]idCacheEntry{}
	if r.CacheFile == "" || atomicfile.ReadJSON(r.CacheFile, idCacheFormat, &cache) != nil {
		return map[string]idCacheEntry{} // a partly decoded file counts as none
	}
	return cache
}

// serialRescan is how often Watch listens to the serial ports again.
const serialRescan = 5 * time.Second

// Watch reports boards as they come, change and go until ctx ends: what
// mDNS sees, and what the serial ports say when listened to again every
// few seconds. each is called from one goroutine; its error ends Watch.
// mDNS with no usable interface is told to Warn first.
func (r *Resolver) Watch(ctx context.Context, each func(discovery.Event) error) error {
	var mdns <-chan discovery.Event
	if !r.NoMDNS {
		rep, err := discovery.Interfaces(r.Ifaces)
		if err != nil {
			return err
		}
		if w := (Found{MDNS: &rep}).Warning(); w != "" {
			r.warn(w)
		}
		b := discovery.NewBrowser(discovery.BrowseConfig{Ifaces: r.Ifaces, Logger: r.Logger})
		if err := b.Start(ctx); err != nil {
			return err
		}
		defer b.Stop()
		mdns = b.Events()
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	serial := make(chan discovery.Event)
	if !r.NoSerial {
		wg.Go(func() { r.watchSerial(ctx, serial) })
	}
	for {
		var ev discovery.Event
		select {
		case ev = <-mdns:
		case ev = <-serial:
		case <-ctx.Done():
			return nil
		}
		if err := each(ev); err != nil {
			return err
		}
	}
}

// watchSerial listens to the serial ports every serialRescan and sends
// the boards that came, changed or went, by port, until ctx ends.
func (r *Resolver) watchSerial(ctx context.Context, out chan<- discovery.Event) {
	seen := map[string]discovery.Record{}
	send := func(op discovery.Op, rec discovery.Record) {
		select {
		case out <- discovery.Event{Op: op, Record: rec}:
		case <-ctx.Done():
		}
	}
	for {
		// Skipped ports are logged by the scan, and looked at again
		// at the next one.
		recs, _, err := discovery.ScanSerial(ctx, discovery.SerialConfig{Ports: r.SerialPorts, Logger: r.Logger})
		if err != nil {
			r.logger().Debug("watch: serial ports", "err", err)
		}
		now := map[string]discovery.Record{}
		for _, rec := range recs {
			now[rec.Address] = rec
			old, ok := seen[rec.Address]
			switch {
			case !ok:
				send(discovery.Added, rec)
			case !old.SameAnnouncement(rec):
				send(discovery.Updated, rec)
			}
		}
		for addr, rec := range seen {
			if _, ok := now[addr]; !ok {
				send(discovery.Removed, rec)
			}
		}
		seen = now
		t := time.NewTimer(serialRescan)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
