// Package simlab runs many simulated boards in one process: for rollout
// tests, the lab demo and benchmarks with hundreds of agents.
//
// Each board is the real thing, wired as boardlinkd wires one boot: a sim
// board (sim.Open on a state directory of its own), the command manager
// (agent.Execs), the A/B update machine (ota.Updater), the agent and its
// WebSocket server on 127.0.0.1, and, when asked, an mDNS advertiser. What
// stands in for the sim board's supervisor is an in-process boot loop: a
// reboot (system.reboot, or an update's trial boot and rollback) stops the
// boot's components cleanly, waits Options.BootDelay and boots the board
// again: a new sim.Open, which makes the boot loader's A/B decision (a
// pending trial once, then a fall back), a new boot id, the same port.
//
// A board costs what its agent needs and no more: an idle board holds its
// listening socket and one goroutine (its HTTP server's accept loop), plus
// the advertiser's sockets and goroutines when mDNS is on. Boot loops run
// only while a board reboots.
package simlab

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/agent/ota"
	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/discovery"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

// Defaults of Options.
const (
	DefaultIDPrefix  = "sim"
	DefaultModel     = sim.DefaultModel
	DefaultBootDelay = 50 * time.Millisecond
)

const (
	// execLogSize is how many commands each board's log keeps (the
	// daemon's default is 100): small, as a lab may hold a thousand.
	execLogSize = 16
	// workers bounds how many boards boot or stop at once in Start and
	// Stop.
	workers = 32
	// stopTimeout bounds a reboot's clean stop and its boot, as the
	// daemon's stopTimeout bounds its own.
	stopTimeout = 15 * time.Second
	// bindRetry bounds how long a boot retries binding its board's port
	// (a socket of the previous boot may linger briefly).
	bindRetry = 2 * time.Second
	bindPause = 20 * time.Millisecond
)

// Options configure a Lab. Only Boards and Dir are required.
type Options struct {
	// Boards is the number of boards (at least one).
	Boards int
	// Dir holds the boards' state directories, Dir/board-NNN (NNN is the
	// board's index, from 000). A Dir used before brings its boards back
	// with their identity, boot history, slots and update state.
	Dir string
	// IDPrefix names the boards PREFIX-NNN, NNN the index as in Dir
	// (default "sim").
	IDPrefix string
	// Model is every board's model, which images must name (default
	// "sim").
	Model string
	// Labels, if set, gives board i its labels (called once, by Start;
	// nil or empty keeps the labels stored in its state directory).
	Labels func(i int) map[string]string
	// TrustKeys are the keys the boards' OTA trusts to sign images; none:
	// every image is refused.
	TrustKeys []ed25519.PublicKey
	// HealthChecks, if set, gives board i the shell commands run after a
	// trial boot (see ota.Config.HealthChecks). It is called at every
	// boot, so a test may change its answer between updates, and from
	// several boards at once. Nil: none, and every trial boot commits.
	HealthChecks func(i int) []string
	// HealthTimeout bounds all the health checks of a trial boot (default
	// ota's, 60s).
	HealthTimeout time.Duration
	// Ifaces, if not empty, makes every board advertise itself over mDNS
	// on these interfaces (the record the daemon announces, said goodbye
	// to at every stop and reboot). The boards listen on loopback only:
	// in tests, give ["lo"] inside testenv.InPrivateLoopback. Empty: no
	// mDNS.
	Ifaces []string
	// Host is the loopback address the boards listen on (default
	// 127.0.0.1): labs on 127.0.1.1, 127.0.2.1... keep their boards apart
	// and each their own share of ports.
	Host string
	// BootDelay is the pause between the end of a boot and the next, as
	// the supervisor's --sim-boot-delay (default 50ms).
	BootDelay time.Duration
	// OnPhase, if set, is called on the board's side each time an update
	// enters a phase: board is the board's id, updateID the update's.
	// It is called from many boards at once, each time with that board's
	// update machine locked (see ota.Config.OnPhase): it must be safe for
	// concurrent use, return quickly and not call the board's agent.
	OnPhase func(board, updateID string, phase proto.Phase)
	// Token is the token every board accepts; "" makes a random one
	// (Lab.Token). Boards refuse every session without it, as a real
	// board does without a token or a pairing.
	Token string
	// Insecure serves plain ws:// instead of wss:// with each board's
	// key (the demo on loopback).
	Insecure bool
	// Line, if set, gives board i its end of a serial line (a pty's
	// master, say), on which it serves instead of on WebSocket, across its
	// boots, and prints a line at each boot as firmware does. The line
	// must support SetReadDeadline (a pty does): a boot's stop ends its
	// reads without closing the line. Nil, or nil for board i: WebSocket.
	Line func(i int) *os.File
	// Logger is shared by every board (each adds board=ID); nil discards.
	Logger *slog.Logger
}

// Lab is a set of simulated boards running in this process, from Start
// until Stop.
type Lab struct {
	// Boards are the lab's boards, by index: Boards[i].Index == i.
	Boards []*Board

	opts  Options
	log   *slog.Logger
	known *dispatcher.KnownBoards

	mu      sync.Mutex
	stopped bool
	closing chan struct{} // closed by Stop: ends the pause of a reboot
	reboots sync.WaitGroup
}

// Board is one simulated board of a Lab. Its methods are safe for
// concurrent use.
type Board struct {
	// ID is the board's id, PREFIX-NNN.
	ID string
	// Index is the board's place in Lab.Boards.
	Index int

	lab    *Lab
	dir    string
	log    *slog.Logger
	labels map[string]string
	line   *os.File // Options.Line's; nil: WebSocket

	// op serializes boots and stops; the fields after it are changed with
	// it held.
	op   sync.Mutex
	want bool  // the board should run: false after Down and Stop
	cur  *boot // the running boot; nil while down

	mu     sync.Mutex // guards what readers see, below; taken with op held
	port   int        // chosen by the first boot, kept by the next ones
	bootID string     // the running boot's, or the last one's
	boots  int
}

// boot is one boot of a board: the components a boot of boardlinkd
// starts, in the order it starts them.
type boot struct {
	b     *Board
	sim   *sim.Board
	execs *agent.Execs
	ota   *ota.Updater
	ws    *agent.WebSocketServer
	uart  *agent.SerialServer   // on Options.Line, instead of ws
	adv   *discovery.Advertiser // nil without mDNS
}

// Start boots opts.Boards boards (in parallel, a few dozen at a time) and
// returns once every one of them is up: its agent listening on its
// address, and advertised when Options.Ifaces asks. If one fails to boot,
// the others are stopped and the error returned.
func Start(ctx context.Context, opts Options) (*Lab, error) {
	if opts.Boards < 1 {
		return nil, fmt.Errorf("simlab: %d boards: want at least one", opts.Boards)
	}
	if opts.Dir == "" {
		return nil, errors.New("simlab: Options.Dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("simlab: %w", err)
	}
	opts.Dir = dir
	if opts.IDPrefix == "" {
		opts.IDPrefix = DefaultIDPrefix
	}
	opts.Host = cmp.Or(opts.Host, "127.0.0.1")
	if ip := net.ParseIP(opts.Host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("simlab: Options.Host %q is not a loopback address", opts.Host)
	}
	if opts.Model == "" {
		opts.Model = DefaultModel
	}
	if opts.BootDelay <= 0 {
		opts.BootDelay = DefaultBootDelay
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Token == "" {
		opts.Token = base64.RawURLEncoding.EncodeToString(auth.NewNonce())
	}
	l := &Lab{opts: opts, log: opts.Logger, known: dispatcher.NewKnownBoards(""), closing: make(chan struct{}), Boards: make([]*Board, opts.Boards)}
	for i := range l.Boards {
		b := &Board{ID: fmt.Sprintf("%s-%03d", opts.IDPrefix, i), Index: i, lab: l,
			dir: filepath.Join(opts.Dir, fmt.Sprintf("board-%03d", i))}
		b.log = l.log.With("board", b.ID)
		if opts.Labels != nil {
			b.labels = maps.Clone(opts.Labels(i))
		}
		if opts.Line != nil {
			b.line = opts.Line(i)
		}
		l.Boards[i] = b
	}
	err = l.each(true, func(b *Board) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return b.Up(ctx)
	})
	if err != nil {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
		defer cancel()
		return nil, errors.Join(err, l.Stop(stopCtx))
	}
	return l, nil
}

// each runs f for every board, a few at a time, and joins the errors;
// with failFast, the boards not started yet are skipped after an error.
func (l *Lab) each(failFast bool, f func(*Board) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	failed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(errs) > 0
	}
	sem := make(chan struct{}, workers)
	for _, b := range l.Boards {
		sem <- struct{}{}
		if failFast && failed() {
			<-sem
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f(b); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Stop stops every board cleanly (connections closed, running commands
// ended, mDNS goodbyes sent) and waits for reboots under way; once it
// returns, the lab has no goroutine left. The state directories stay.
// Stop is final: Up fails afterwards. If ctx ended first, Stop may be
// called again to finish.
func (l *Lab) Stop(ctx context.Context) error {
	l.mu.Lock()
	if !l.stopped {
		l.stopped = true
		close(l.closing)
	}
	l.mu.Unlock()
	err := l.each(false, func(b *Board) error { return b.down(ctx) })
	done := make(chan struct{})
	go func() { l.reboots.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return errors.Join(err, fmt.Errorf("simlab: waiting for reboots: %w", ctx.Err()))
	}
	return err
}

func (l *Lab) isStopped() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopped
}

// Addr is the board's WebSocket address, "wss://HOST:PORT" (ws://
// with Options.Insecure): the same across reboots, Down and Up.
func (b *Board) Addr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.port == 0 {
		return ""
	}
	scheme := "wss://"
	if b.lab.opts.Insecure {
		scheme = "ws://"
	}
	return scheme + net.JoinHostPort(b.lab.opts.Host, strconv.Itoa(b.port))
}

// Token is the token every board of the lab accepts.
func (l *Lab) Token() string { return l.opts.Token }

// DialOptions are what a client of the lab's boards needs: the lab's
// token, and pins of the boards' keys made on first use, in memory.
func (l *Lab) DialOptions() dispatcher.DialOptions {
	return dispatcher.DialOptions{Token: l.opts.Token, Trust: l.known}
}

// Dir is the board's state directory.
func (b *Board) Dir() string { return b.dir }

// BootID is the running boot's id; while the board is down, the last
// boot's.
func (b *Board) BootID() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bootID
}

// Boots is how many times the board booted in this lab (its state
// directory's history, see sim.Board.Boots, may hold earlier ones).
func (b *Board) Boots() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.boots
}

// Down takes the board away: its agent stops cleanly (connections
// dropped, running commands ended, an mDNS goodbye), and the board stays
// down, through any reboot under way, until Up. Down on a board that is
// down does nothing.
func (b *Board) Down(ctx context.Context) error { return b.down(ctx) }

func (b *Board) down(ctx context.Context) error {
	b.op.Lock()
	defer b.op.Unlock()
	b.want = false
	return b.stopLocked(ctx, false)
}

// Up boots the board again (a new boot id, the same address) and returns
// once it is up. Up on a running board does nothing.
func (b *Board) Up(ctx context.Context) error {
	b.op.Lock()
	defer b.op.Unlock()
	// Checked with op held: Stop marks the lab stopped before it takes
	// each board's op, so a board it stopped is never booted again.
	if b.lab.isStopped() {
		return fmt.Errorf("simlab: %s: the lab is stopped", b.ID)
	}
	b.want = true
	if b.cur != nil {
		return nil
	}
	return b.bootLocked(ctx)
}

// bootLocked is one boot, in the order of boardlinkd's: the sim board,
// the command manager, the update machine, the agent, its WebSocket
// server and its mDNS advertiser. A failure undoes what started.
func (b *Board) bootLocked(ctx context.Context) (err error) {
	l := b.lab
	sb, err := sim.Open(b.dir, sim.Options{ID: b.ID, Model: l.opts.Model, Labels: b.labels})
	if err != nil {
		return fmt.Errorf("simlab: %s: %w", b.ID, err)
	}
	bt := &boot{b: b, sim: sb}
	defer func() {
		if err != nil {
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
			defer cancel()
			err = errors.Join(fmt.Errorf("simlab: %s: %w", b.ID, err), bt.stop(stopCtx, false))
		}
	}()
	bt.execs = agent.NewExecs(agent.ExecOptions{LogSize: execLogSize, LogPath: filepath.Join(b.dir, "exec-log.json"),
		Logger: b.log})
	if err := bt.execs.LoadLog(); err != nil {
		return err
	}
	var checks []string
	if l.opts.HealthChecks != nil {
		checks = l.opts.HealthChecks(b.Index)
	}
	var onPhase func(id string, phase proto.Phase)
	if f := l.opts.OnPhase; f != nil {
		onPhase = func(id string, phase proto.Phase) { f(b.ID, id, phase) }
	}
	u := ota.New(ota.Config{Dir: filepath.Join(b.dir, "ota"), Boot: sb.BootControl(), Model: sb.Identity().Model,
		BootID: sb.BootID(), Keys: l.opts.TrustKeys, HealthChecks: checks, HealthTimeout: l.opts.HealthTimeout,
		Reboot: bt.reboot, OnPhase: onPhase, Logger: b.log})
	key, _, err := auth.LoadOrCreateKey(filepath.Join(b.dir, "auth", "key.pem"))
	if err != nil {
		return err
	}
	a := agent.New(sb, bt.execs, agent.Config{Logger: b.log, Roots: []string{b.dir},
		CacheDir: filepath.Join(b.dir, "cache"), Reboot: bt.reboot, OTA: u,
		Auth: agent.AuthConfig{Key: key, Tokens: []agent.Token{{Name: "simlab", Value: l.opts.Token}}}})
	// A trial boot's health check may start here, and a reboot be asked
	// for before the boot is done: it waits for op, then finds this boot.
	if err := u.Start(ctx); err != nil {
		return err
	}
	bt.ota = u
	port := 0
	if b.line != nil {
		if err := b.serveLine(ctx, bt, a); err != nil {
			return err
		}
	} else {
		if bt.ws, err = b.listen(ctx, a); err != nil {
			return err
		}
		port = bt.ws.Addr().(*net.TCPAddr).Port
	}
	if len(l.opts.Ifaces) > 0 && port != 0 {
		adv := discovery.NewAdvertiser(discovery.AdvertiseConfig{Ifaces: l.opts.Ifaces, Logger: b.log})
		if err := adv.Start(ctx, discovery.RecordOf(a.Info(ctx), port, !l.opts.Insecure)); err != nil {
			return err
		}
		bt.adv = adv
	}
	b.cur = bt
	b.mu.Lock()
	b.port, b.bootID = port, sb.BootID()
	b.boots++
	b.mu.Unlock()
	b.log.Debug("simlab: up", "boot_id", sb.BootID(), "slot", sb.Slot(), "addr", net.JoinHostPort(b.lab.opts.Host, strconv.Itoa(port)))
	return nil
}

// listen starts the WebSocket server: on a free port the first time, then
// on the same one, retrying briefly while it is still taken.
func (b *Board) listen(ctx context.Context, a *agent.Agent) (*agent.WebSocketServer, error) {
	addr := net.JoinHostPort(b.lab.opts.Host, strconv.Itoa(b.port)) // port 0 the first time: a free one
	deadline := time.Now().Add(bindRetry)
	for {
		ws := agent.NewWebSocketServer(a, addr)
		if b.lab.opts.Insecure {
			ws = agent.NewInsecureWebSocketServer(a, addr)
		}
		err := ws.Start(ctx)
		if err == nil {
			return ws, nil
		}
		if b.port == 0 || time.Now().After(deadline) {
			return nil, err
		}
		t := time.NewTimer(bindPause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(err, ctx.Err())
		case <-t.C:
		}
	}
}

// serveLine prints the boot's first line on the board's serial line, as
// its firmware would, and serves the agent on it.
func (b *Board) serveLine(ctx context.Context, bt *boot, a *agent.Agent) error {
	if err := b.line.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(b.line, "simlab: %s booting %s (slot %s)\r\n", b.ID, bt.sim.BootID(), bt.sim.Slot()); err != nil {
		return err
	}
	bt.uart = agent.NewLineSerialServer(a, "uart", bootLine{b.line})
	return bt.uart.Start(ctx)
}

// bootLine is one boot's view of its board's serial line: closing it ends
// the boot's reads and leaves the line to the next boot.
type bootLine struct{ *os.File }

func (l bootLine) Close() error { return l.SetReadDeadline(time.Now()) }

// stopLocked stops the running boot, if any; rebooting says the board
// comes back, which its mDNS record announces instead of a goodbye.
func (b *Board) stopLocked(ctx context.Context, rebooting bool) error {
	bt := b.cur
	if bt == nil {
		return nil
	}
	b.cur = nil
	if err := bt.stop(ctx, rebooting); err != nil {
		return fmt.Errorf("simlab: %s: stop: %w", b.ID, err)
	}
	b.log.Debug("simlab: down", "boot_id", bt.sim.BootID())
	return nil
}

// stop ends what the boot started, in the reverse order: the advertiser
// (a goodbye, or the announcement of a reboot), the WebSocket server and
// its connections, the update machine, and last the commands still
// running.
func (bt *boot) stop(ctx context.Context, rebooting bool) error {
	var errs []error
	switch {
	case bt.adv != nil && rebooting:
		errs = append(errs, bt.adv.Reboot(ctx, 0))
	case bt.adv != nil:
		errs = append(errs, bt.adv.Stop(ctx))
	}
	if bt.ws != nil {
		errs = append(errs, bt.ws.Stop(ctx))
	}
	if bt.uart != nil {
		errs = append(errs, bt.uart.Stop(ctx))
	}
	if bt.ota != nil {
		errs = append(errs, bt.ota.Stop(ctx))
	}
	if bt.execs != nil {
		errs = append(errs, bt.execs.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// reboot is the boot's agent.Config.Reboot and ota.Config.Reboot, always
// called in a goroutine of its own: it stops the boot cleanly, pauses
// BootDelay and boots the board again, unless it was taken down (Down, or
// the lab's Stop) meanwhile. A call for a boot that is no longer the
// running one (a second request, a late one) does nothing.
func (bt *boot) reboot() {
	b, l := bt.b, bt.b.lab
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return // Stop takes the board down itself
	}
	l.reboots.Add(1)
	l.mu.Unlock()
	defer l.reboots.Done()

	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	b.op.Lock()
	if b.cur != bt {
		b.op.Unlock()
		return
	}
	b.log.Debug("simlab: rebooting", "boot_id", bt.sim.BootID())
	if err := b.stopLocked(ctx, true); err != nil {
		b.log.Warn("simlab: reboot", "err", err)
	}
	b.op.Unlock()

	t := time.NewTimer(l.opts.BootDelay)
	select {
	case <-l.closing:
		t.Stop()
		return
	case <-t.C:
	}

	ctx, cancel = context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	b.op.Lock()
	defer b.op.Unlock()
	if !b.want || b.cur != nil || l.isStopped() {
		return
	}
	if err := b.bootLocked(ctx); err != nil {
		b.log.Error("simlab: boot failed; the board stays down", "err", err)
	}
}
