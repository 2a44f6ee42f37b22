package service

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/store"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// otaLab is a lab whose sim boards take images signed by key, with the
// image file img (version 2.0.0) and the commits each board made, counted
// on the board's side.
type otaLab struct {
	*lab
	key ed25519.PrivateKey
	img string

	mu      sync.Mutex
	commits map[string]int
	// hold, if set, is called on the board's side as an update enters a
	// phase (simlab.Options.OnPhase).
	hold func(board string, phase proto.Phase)
}

// startOTALab starts n sim boards that trust a new key and, unless
// noService, a service over them (users alice and bob).
func startOTALab(t *testing.T, n int, noService bool) *otaLab {
	t.Helper()
	return startOTALabOn(t, n, noService, false)
}

// startOTALabOn is startOTALab, with each board on a serial line of its
// own (a pty) when serial.
func startOTALabOn(t *testing.T, n int, noService, serial bool) *otaLab {
	t.Helper()
	pub, key, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	o := &otaLab{key: key, commits: map[string]int{}}
	so := simlab.Options{Boards: n, Dir: filepath.Join(dir, "boards"),
		TrustKeys: []ed25519.PublicKey{pub}, BootDelay: time.Millisecond, OnPhase: o.onPhase}
	addrs := make([]string, n)
	if serial {
		masters := make([]*os.File, n)
		for i := range n {
			master, slave := testenv.RawPTY(t) // the slave stays open: the board's line lives across the service's
			masters[i], addrs[i] = testenv.Pollable(t, master), "serial://"+slave.Name()
		}
		so.Line = func(i int) *os.File { return masters[i] }
	}
	sim, err := simlab.Start(context.Background(), so)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sim.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
	o.lab = &lab{t: t, sim: sim, dir: dir, db: filepath.Join(dir, "lab.db"), clients: map[string]*Client{}, tokens: map[string]string{}}
	boardTok := filepath.Join(dir, "board-token")
	writeSecret(t, boardTok, sim.Token())
	o.cfg = Config{TokenFile: boardTok, Heartbeat: Duration(200 * time.Millisecond), QuarantineAfter: -1}
	for i, b := range sim.Boards {
		o.cfg.Boards = append(o.cfg.Boards, BoardConfig{ID: b.ID, Address: cmp.Or(addrs[i], b.Addr())})
	}
	for _, u := range []string{"alice", "bob"} {
		o.tokens[u] = "token-of-" + u
		writeSecret(t, filepath.Join(dir, u+".token"), o.tokens[u])
		o.cfg.Users = append(o.cfg.Users, UserConfig{Name: u, TokenFile: filepath.Join(dir, u+".token")})
	}
	o.img = o.image("2.0.0")
	if !noService {
		o.start(nil)
		o.waitIdle()
	}
	return o
}

// image writes an image of version for the lab's boards and returns its
// path.
func (o *otaLab) image(version string) string {
	o.t.Helper()
	payload := make([]byte, 64<<10)
	rand.Read(payload)
	var buf bytes.Buffer
	if _, err := image.Build(&buf, bytes.NewReader(payload), int64(len(payload)), image.BuildOptions{Key: o.key,
		Models: []string{simlab.DefaultModel}, Version: version, ChunkSize: 4096}); err != nil {
		o.t.Fatal(err)
	}
	p := filepath.Join(o.dir, "image-"+version+".blimg")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		o.t.Fatal(err)
	}
	return p
}

func (o *otaLab) onPhase(board, _ string, phase proto.Phase) {
	o.mu.Lock()
	if phase == proto.PhaseCommit {
		o.commits[board]++
	}
	hold := o.hold
	o.mu.Unlock()
	if hold != nil {
		hold(board, phase)
	}
}

func (o *otaLab) commitsOf(board string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.commits[board]
}

// leased asserts that err refuses an action because holder's lease holds
// the board.
func leased(t *testing.T, what string, err error, holder string) {
	t.Helper()
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Leased == nil || ae.Leased.Holder != holder ||
		ae.Leased.Expires.IsZero() || !strings.Contains(ae.Message, holder) {
		t.Fatalf("%s: %v (%+v), want a refusal naming %s's lease and its expiry", what, err, ae, holder)
	}
}

// TestOpsThroughAPI: push, pull, reboot and OTA of one board through the
// service's API; the board reads updating during its OTA and idle after;
// while a lease holds the board, anyone else's push, pull, reboot and ota
// are refused with the holder and the expiry, and each action is in the
// audit log; an upload beyond the service's bound is refused.
func TestOpsThroughAPI(t *testing.T) {
	o := startOTALab(t, 1, false)
	ctx := context.Background()
	alice, bob := o.clients["alice"], o.clients["bob"]
	sb := o.sim.Boards[0]
	id := sb.ID

	data := make([]byte, 300<<10)
	rand.Read(data)
	local := filepath.Join(t.TempDir(), "data.bin")
	if err := os.WriteFile(local, data, 0o640); err != nil {
		t.Fatal(err)
	}
	remote := filepath.Join(sb.Dir(), "pushed.bin")
	res, err := alice.Push(ctx, id, "", local, PushRequest{Path: remote})
	if err != nil || res.Size != int64(len(data)) {
		t.Fatalf("push: %+v %v", res, err)
	}
	if got, err := os.ReadFile(remote); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the board holds %d bytes (%v), want the %d pushed", len(got), err, len(data))
	}
	// Into a directory on the board, under the name given.
	if res, err := alice.Push(ctx, id, "", local, PushRequest{Path: sb.Dir(), Name: "named.bin"}); err != nil ||
		res.Path != filepath.Join(sb.Dir(), "named.bin") {
		t.Fatalf("push into a directory: %+v %v", res, err)
	}
	var pulled bytes.Buffer
	var info proto.FileInfo
	res, err = alice.Pull(ctx, id, "", remote, func(fi proto.FileInfo) (io.Writer, error) { info = fi; return &pulled, nil })
	if err != nil || !bytes.Equal(pulled.Bytes(), data) || info.Size != int64(len(data)) || info.Mode&0o777 != 0o640 {
		t.Fatalf("pull: %d bytes, %+v, %+v, %v", pulled.Len(), info, res, err)
	}
	var ae *APIError
	_, err = alice.Pull(ctx, id, "", filepath.Join(sb.Dir(), "nothing"), func(proto.FileInfo) (io.Writer, error) { return io.Discard, nil })
	if !errors.As(err, &ae) || ae.Reason != string(proto.ReasonNotFound) {
		t.Fatalf("pull of a missing file: %v", err)
	}

	boot := sb.BootID()
	back, err := alice.Reboot(ctx, id, "", RebootRequest{Wait: true})
	if err != nil || back.OldBootID != boot || back.NewBootID == boot || back.NewBootID != sb.BootID() {
		t.Fatalf("reboot: %+v %v (boot was %s, is %s)", back, err, boot, sb.BootID())
	}
	o.waitIdle()

	// During the OTA the board reads updating: looked at from its steps,
	// which come while the service works on it (after those of the upload).
	var states []State
	uploaded := false
	rep, err := alice.OTA(ctx, id, "", o.img, OTARequest{}, func(p dispatcher.OTAProgress) {
		if p.Phase == OTAUpload {
			uploaded = p.Sent == p.ToSend
			return
		}
		if len(states) == 0 {
			b, err := o.svc.Board(id)
			if err != nil {
				t.Error(err)
			}
			states = append(states, b.State)
		}
	})
	if err != nil || rep.Update == nil || rep.Update.Result != proto.ResultCommitted || o.commitsOf(id) != 1 {
		t.Fatalf("ota: %+v %v", rep, err)
	}
	if len(states) == 0 || states[0] != Updating || !uploaded {
		t.Fatalf("during its OTA the board read %v (image uploaded: %v), want updating", states, uploaded)
	}
	testenv.Eventually(t, "the board idle after its OTA", func() bool {
		b, err := o.svc.Board(id)
		return err == nil && b.State == Idle && b.BootID == sb.BootID()
	})
	// An image it already runs is refused by the board: a failure, and
	// updating is left all the same.
	if _, err := alice.OTA(ctx, id, "", o.img, OTARequest{}, nil); err == nil {
		t.Fatal("the same image again: no error")
	}
	if b, _ := o.svc.Board(id); b.State != Idle {
		t.Fatalf("after a refused OTA the board is %s", b.State)
	}

	boots := sb.Boots()
	l, err := acquire(ctx, bob, AcquireRequest{Boards: []string{id}, TTLMs: 60000})
	if err != nil {
		t.Fatal(err)
	}
	_, err = alice.Push(ctx, id, "", local, PushRequest{Path: remote})
	leased(t, "push", err, "bob")
	_, err = alice.Pull(ctx, id, "", remote, func(proto.FileInfo) (io.Writer, error) { return io.Discard, nil })
	leased(t, "pull", err, "bob")
	_, err = alice.Reboot(ctx, id, "", RebootRequest{})
	leased(t, "reboot", err, "bob")
	_, err = alice.OTA(ctx, id, "", o.image("3.0.0"), OTARequest{}, nil)
	leased(t, "ota", err, "bob")
	if o.commitsOf(id) != 1 || sb.Boots() != boots {
		t.Fatalf("a refused action reached the board: %d commits, %d boots", o.commitsOf(id), sb.Boots())
	}
	// Under his lease, the holder's push goes through.
	if _, err := bob.Push(ctx, id, l.ID, local, PushRequest{Path: remote + ".bob"}); err != nil {
		t.Fatalf("the holder's push: %v", err)
	}
	for _, action := range []string{"board.push", "board.pull", "board.reboot", "board.ota"} {
		es, err := o.svc.Audit(ctx, store.AuditFilter{User: "alice", Action: action, Board: id})
		if err != nil || len(es) < 2 || es[0].Result == "ok" || !strings.Contains(es[0].Result, "bob") {
			t.Errorf("audit of %s: %+v %v, want alice's refusal last and her earlier success", action, es, err)
		}
	}
	if _, err := bob.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}

	o.svc.opts.MaxUpload = 100 << 10
	_, err = alice.Push(ctx, id, "", local, PushRequest{Path: remote})
	if !errors.As(err, &ae) || ae.Status != http.StatusRequestEntityTooLarge {
		t.Fatalf("a push over the bound: %v", err)
	}
	spool, _ := os.ReadDir(filepath.Join(o.dir, "spool"))
	if len(spool) != 0 {
		t.Fatalf("the spool keeps %d files", len(spool))
	}
}

// TestSerialBoardOps: a board on a serial line (a pty, as a USB serial
// port is), whose line holds one session, takes an exec, a reboot, an OTA
// and a rollout through the service, each beside the service's persistent
// session: the service reaches it through a line mux of its own. The
// console record holds every boot's first line, printed while no session
// was up; the mux ends with the service and frees the line.
func TestSerialBoardOps(t *testing.T) {
	o := startOTALabOn(t, 1, false, true)
	ctx := context.Background()
	alice := o.clients["alice"]
	sb := o.sim.Boards[0]
	id := sb.ID
	bootLine := func(boot string) string { return "simlab: " + id + " booting " + boot }
	recorded := func(what string, lines ...string) {
		t.Helper()
		testenv.Eventually(t, what+" in the console record", func() bool {
			var text strings.Builder
			if err := alice.Console(ctx, id, "1h", false, &text); err != nil {
				t.Fatal(err)
			}
			for _, l := range lines {
				if !strings.Contains(text.String(), l) {
					return false
				}
			}
			return true
		})
	}
	first := sb.BootID()
	recorded("the first boot", bootLine(first))

	var out bytes.Buffer
	if res, err := alice.Exec(ctx, id, "", ExecRequest{Argv: []string{"echo", "on the line"}}, &out, io.Discard); err != nil ||
		res.Result.ExitCode != 0 || out.String() != "on the line\n" {
		t.Fatalf("exec: %+v %q %v", res, out.String(), err)
	}

	back, err := alice.Reboot(ctx, id, "", RebootRequest{Wait: true})
	if err != nil || back.OldBootID != first || back.NewBootID == first || back.NewBootID != sb.BootID() {
		t.Fatalf("reboot: %+v %v (boot was %s, is %s)", back, err, first, sb.BootID())
	}
	o.waitIdle()
	recorded("both boots", bootLine(first), bootLine(back.NewBootID))

	rep, err := alice.OTA(ctx, id, "", o.img, OTARequest{}, nil)
	if err != nil || rep.Update == nil || rep.Update.Result != proto.ResultCommitted || o.commitsOf(id) != 1 {
		t.Fatalf("ota: %+v %v", rep, err)
	}
	testenv.Eventually(t, "the board idle after its OTA", func() bool {
		b, err := o.svc.Board(id)
		return err == nil && b.State == Idle && b.BootID == sb.BootID()
	})
	recorded("the trial boot", bootLine(back.NewBootID), bootLine(sb.BootID()))

	st, err := alice.StartRollout(ctx, o.image("3.0.0"), RolloutRequest{Boards: []string{id}})
	if err != nil {
		t.Fatal(err)
	}
	st = waitRollout(t, alice, st)
	if got := resultsOf(st); st.State != store.StateDone || got[id] != string(proto.ResultCommitted) || o.commitsOf(id) != 2 {
		t.Fatalf("rollout %s: %s %v, %d commits", st.ID, st.State, got, o.commitsOf(id))
	}
	o.waitIdle()

	// The service's mux holds the line while it runs, and frees it when it
	// stops: a session of one's own on the line then opens.
	o.stopService()
	c, err := dispatcher.Dial(ctx, o.cfg.Boards[0].Address, o.sim.DialOptions())
	if err != nil {
		t.Fatalf("the line after the service stopped: %v", err)
	}
	defer c.Close()
	if info, err := c.Info(ctx); err != nil || info.BootID != sb.BootID() {
		t.Fatalf("board.info on the freed line: %+v %v", info, err)
	}
}

// TestPushStreamed: a push through the service goes on to the board as
// it arrives, not spooled first: half an upload sent, the board holds a
// part of it already, and nothing is in the service's spool. The board
// checks the sha256 the client gave: bytes that do not match it, or more
// bytes than the size given, never appear on the board.
func TestPushStreamed(t *testing.T) {
	o := startOTALab(t, 1, false)
	ctx := context.Background()
	alice := o.clients["alice"]
	sb := o.sim.Boards[0]
	data := make([]byte, 4<<20)
	rand.Read(data)
	sum := sha256.Sum256(data)
	req := PushRequest{Path: filepath.Join(sb.Dir(), "streamed.bin"), Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
	push := func(src io.Reader, r PushRequest) (proto.FileResult, error) {
		resp, err := alice.uploadFrom(ctx, boardPath(sb.ID, "files"), "", r, "streamed.bin", src, r.Size)
		if err != nil {
			return proto.FileResult{}, err
		}
		defer resp.Body.Close()
		var res proto.FileResult
		return res, json.NewDecoder(resp.Body).Decode(&res)
	}
	partial := filepath.Join(sb.Dir(), ".streamed.bin."+req.SHA256[:16]+".boardlink-partial")

	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		res, err := push(pr, req)
		if err == nil && (res.Size != req.Size || res.SHA256 != req.SHA256) {
			err = fmt.Errorf("the board's result: %+v", res)
		}
		done <- err
	}()
	if _, err := pw.Write(data[:len(data)/2]); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the first half on the board while the upload waits for its second", func() bool {
		st, err := os.Stat(partial)
		return err == nil && st.Size() > 0
	})
	if spool, _ := os.ReadDir(filepath.Join(o.dir, "spool")); len(spool) != 0 {
		t.Fatalf("the spool holds %d files", len(spool))
	}
	if _, err := pw.Write(data[len(data)/2:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(req.Path); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the board holds %d bytes (%v)", len(got), err)
	}

	var ae *APIError
	bad := req
	bad.Path, bad.SHA256 = req.Path+".bad", strings.Repeat("0", 64)
	if _, err := push(bytes.NewReader(data), bad); !errors.As(err, &ae) || ae.Reason != string(proto.ReasonChecksumMismatch) {
		t.Fatalf("bytes that do not match their sha256: %v", err)
	}
	long := req
	long.Path = req.Path + ".long"
	if _, err := push(io.MultiReader(bytes.NewReader(data), strings.NewReader("x")), long); err == nil {
		t.Fatal("more bytes than the size given: pushed")
	}
	for _, p := range []string{bad.Path, long.Path} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s on the board: %v", p, err)
		}
	}
}
