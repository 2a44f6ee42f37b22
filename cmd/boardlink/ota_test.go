package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/simlab"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// otaChunk and otaChunks shape the test images: 4 MiB in 64 chunks.
const (
	otaChunk  = 64 << 10
	otaChunks = 64
)

// otaLab holds a signing key and builds images for a sim board.
type otaLab struct {
	t    *testing.T
	dir  string
	key  ed25519.PrivateKey
	pub  string // the public key file the board trusts
	base []byte // the payload images derive from
}

func newOTALab(t *testing.T) *otaLab {
	dir := t.TempDir()
	pub, priv, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := image.WriteKeyPair(filepath.Join(dir, "key"), pub, priv); err != nil {
		t.Fatal(err)
	}
	base := make([]byte, otaChunk*otaChunks)
	rand.Read(base)
	return &otaLab{t: t, dir: dir, key: priv, pub: filepath.Join(dir, "key.pub"), base: base}
}

// build writes an image of payload, signed by key (the lab's if nil).
func (l *otaLab) build(version string, payload []byte, model string, key ed25519.PrivateKey) string {
	l.t.Helper()
	if key == nil {
		key = l.key
	}
	in := filepath.Join(l.dir, version+".payload")
	if err := os.WriteFile(in, payload, 0o644); err != nil {
		l.t.Fatal(err)
	}
	out := filepath.Join(l.dir, fmt.Sprintf("%s-%s.img", version, model))
	if _, err := image.BuildFile(out, in, image.BuildOptions{Key: key, Models: []string{model}, Version: version, ChunkSize: otaChunk}); err != nil {
		l.t.Fatal(err)
	}
	return out
}

// remove deletes an image built by build, and its payload.
func (l *otaLab) remove(img string) {
	l.t.Helper()
	version, _, _ := strings.Cut(filepath.Base(img), "-")
	for _, p := range []string{img, filepath.Join(l.dir, version+".payload")} {
		if err := os.Remove(p); err != nil {
			l.t.Fatal(err)
		}
	}
}

// variant is the base payload with chunks every `every` chunks rewritten.
func (l *otaLab) variant(every int) []byte {
	p := bytes.Clone(l.base)
	for i := 0; i < otaChunks; i += every {
		rand.Read(p[i*otaChunk : i*otaChunk+100])
	}
	return p
}

func startOTABoard(t *testing.T, l *otaLab) *simBoard {
	return startSimBoard(t, 50*time.Millisecond, "--trust-key", l.pub,
		"--health-check", `case "$BOARDLINK_VERSION" in *-bad) echo "refusing $BOARDLINK_VERSION" >&2; exit 3;; esac`)
}

// otaCLI runs `boardlink ota` with --json and decodes the report.
func otaCLI(t *testing.T, board, img string, flags ...string) (otaJSON, string, int) {
	t.Helper()
	stdout, stderr, code := cli(t, "", append([]string{"ota", board, img, "--json", "--timeout", "2m"}, flags...)...)
	var rep otaJSON
	if stdout == "" { // refused before the update began: the error is on stderr
		return rep, stderr, code
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("ota --json printed %q (%v); stderr %s", stdout, err, stderr)
	}
	return rep, stderr, code
}

func otaStatus(t *testing.T, board string) proto.OTAStatus {
	t.Helper()
	stdout, stderr, code := cli(t, "", "ota", board, "--status", "--json")
	var st proto.OTAStatus
	if code != 0 || json.Unmarshal([]byte(stdout), &st) != nil {
		t.Fatalf("ota --status: %d %q %s", code, stdout, stderr)
	}
	return st
}

func slotOf(st proto.OTAStatus, booted bool) proto.OTASlot {
	for _, s := range st.Slots {
		if s.Booted == booted {
			return s
		}
	}
	return proto.OTASlot{}
}

// settled waits until no update is between activation and its end: a
// trial boot and its health check take their time after a cut.
func settled(t *testing.T, b *simBoard) {
	t.Helper()
	testenv.Eventually(t, "the update to settle", func() bool {
		u := otaStatus(t, b.ws).Update
		return u == nil || u.Phase == proto.PhasePrepare || u.Phase == proto.PhasePrepared || u.Phase == proto.PhaseDone
	})
}

// checkBootedSlot asserts what the kill tests must hold after every cut:
// the board boots a slot that holds a complete image matching its record,
// is not mid-trial, and its status says so.
func checkBootedSlot(t *testing.T, b *simBoard) proto.OTAStatus {
	t.Helper()
	st := otaStatus(t, b.ws)
	s := slotOf(st, true)
	if !s.Active || s.Writing {
		t.Fatalf("booted slot %+v is not the active, complete one: %+v", s, st)
	}
	if s.SHA256 != "" {
		data, err := os.ReadFile(filepath.Join(b.state, "slots", s.Name+".img"))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != s.SHA256 {
			t.Fatalf("booted slot %s does not hold the image its record names (%s)", s.Name, s.SHA256)
		}
	}
	return st
}

func bootenv(t *testing.T, b *simBoard) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(b.state, "bootenv.json"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return raw
}

// TestOTA walks one sim board through full, identical, delta, refused and
// rolled-back updates with the real agent and the CLI.
func TestOTA(t *testing.T) {
	l := newOTALab(t)
	b := startOTABoard(t, l)
	payloadSize := int64(otaChunk * otaChunks)

	v1 := l.build("1.0.0", l.base, "sim", nil)
	rep, stderr, code := otaCLI(t, b.ws, v1)
	if code != 0 || rep.Update.Result != proto.ResultCommitted || rep.Update.Slot != "B" || rep.Reboots < 1 {
		t.Fatalf("first update: %d %+v %s", code, rep, stderr)
	}
	st := checkBootedSlot(t, b)
	if s := slotOf(st, true); s.Name != "B" || s.Version != "1.0.0" {
		t.Fatalf("after the first update: %+v", st)
	}
	t.Logf("full update: %d bytes on the link for a %d-byte payload", rep.BytesSent, payloadSize)

	// The same image again: refused unless forced; forced, nothing crosses the link.
	env := bootenv(t, b)
	if _, stderr, code := otaCLI(t, b.ws, v1); code != 1 || !strings.Contains(stderr, "reinstall") {
		t.Fatalf("reinstall without --force: %d %s", code, stderr)
	}
	if !bytes.Equal(env, bootenv(t, b)) {
		t.Fatal("a refused update touched the boot environment")
	}
	rep, stderr, code = otaCLI(t, b.ws, v1, "--force")
	if code != 0 || rep.BytesSent != 0 || len(rep.Plan.Need) != 0 {
		t.Fatalf("identical image: %d, %d bytes sent, plan %+v; %s", code, rep.BytesSent, rep.Plan, stderr)
	}

	// One chunk in 64 changed (1.6%): at most 3% of the payload on the link.
	v2 := l.build("1.1.0", l.variant(64), "sim", nil)
	rep, stderr, code = otaCLI(t, b.ws, v2)
	if code != 0 || rep.BytesSent > payloadSize*3/100 {
		t.Fatalf("delta update: %d, %d bytes sent of %d; %s", code, rep.BytesSent, payloadSize, stderr)
	}
	t.Logf("delta update (1 of 64 chunks changed): %d bytes on the link (%.2f%% of the payload)",
		rep.BytesSent, 100*float64(rep.BytesSent)/float64(payloadSize))

	// From a URL: the board fetches what it lacks itself; the link carries none of it.
	v3 := l.build("1.1.5", l.variant(4), "sim", nil)
	var ranges atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			ranges.Add(1)
		}
		http.ServeFile(w, r, v3)
	}))
	defer srv.Close()
	rep, stderr, code = otaCLI(t, b.ws, v3, "--url", srv.URL+"/v3.img")
	if code != 0 || rep.BytesSent != 0 || rep.Update.BytesURL == 0 || int(ranges.Load()) != len(rep.Plan.Need) {
		t.Fatalf("update from a URL: %d, %d bytes on the link, update %+v, %d range requests for %d chunks; %s",
			code, rep.BytesSent, rep.Update, ranges.Load(), len(rep.Plan.Need), stderr)
	}
	t.Logf("update from a URL: %d chunks fetched by the board (%d bytes), 0 on the link", len(rep.Plan.Need), rep.Update.BytesURL)

	// Refused without touching the boot environment.
	_, other, _ := ed25519.GenerateKey(nil)
	tampered := l.build("1.2.0", l.variant(2), "sim", nil)
	flipPayloadByte(t, tampered, 2*otaChunk+7) // chunk 2 differs from the board's: it must cross the link
	badManifest := l.build("1.2.1", l.variant(3), "sim", nil)
	replaceInFile(t, badManifest, `"1.2.1"`, `"1.2.9"`)
	truncated := l.build("1.2.2", l.variant(5), "sim", nil)
	if err := os.Truncate(truncated, 5000); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, img, want string }{
		{"untrusted key", l.build("1.3.0", l.variant(4), "sim", other), "not trusted"},
		{"wrong model", l.build("1.3.1", l.variant(4), "imx8", nil), "imx8"},
		{"downgrade", l.build("0.9.0", l.variant(4), "sim", nil), "downgrade"},
		{"tampered payload", tampered, "checksum_mismatch"},
		{"tampered manifest", badManifest, "signature"},
		{"truncated image", truncated, "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := bootenv(t, b)
			_, stderr, code := otaCLI(t, b.ws, tc.img)
			if code != 1 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want 1 and %q", code, stderr, tc.want)
			}
			if !bytes.Equal(before, bootenv(t, b)) {
				t.Fatal("the refused image touched the boot environment")
			}
			checkBootedSlot(t, b)
		})
	}

	// A health check that fails: trial boot, rollback, back on the old slot.
	before := slotOf(checkBootedSlot(t, b), true)
	rep, stderr, code = otaCLI(t, b.ws, l.build("2.0.0-bad", l.variant(8), "sim", nil))
	if code != 1 || rep.Update == nil || rep.Update.Result != proto.ResultRolledBack ||
		rep.Update.FailedPhase != proto.PhaseTrial || !strings.Contains(rep.Update.Reason, "health check") {
		t.Fatalf("bad image: %d %+v %s", code, rep.Update, stderr)
	}
	st = checkBootedSlot(t, b)
	if now := slotOf(st, true); now.Name != before.Name || now.Version != before.Version || st.Update.Result != proto.ResultRolledBack {
		t.Fatalf("after the rollback: %+v (before: %+v)", st, before)
	}
	t.Logf("rolled back: %s", st.Update.Reason)
}

func flipPayloadByte(t *testing.T, path string, at int64) {
	t.Helper()
	im, err := image.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off := im.PayloadOffset() + at
	im.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	f.ReadAt(b[:], off)
	b[0] ^= 0xff
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

func replaceInFile(t *testing.T, path, old, new string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil || !bytes.Contains(raw, []byte(old)) || len(old) != len(new) {
		t.Fatalf("%s lacks %q (%v)", path, old, err)
	}
	if err := os.WriteFile(path, bytes.Replace(raw, []byte(old), []byte(new), 1), 0o644); err != nil {
		t.Fatal(err)
	}
}

// agentPID is the pid of the board's running agent (the parent of a
// command it runs).
func agentPID(t *testing.T, b *simBoard) int {
	t.Helper()
	stdout, stderr, code := cli(t, "", "exec", b.ws, "-n", "--", "sh", "-c", "echo $PPID")
	pid, err := strconv.Atoi(strings.TrimSpace(stdout))
	if code != 0 || err != nil {
		t.Fatalf("agent pid: %d %q %s", code, stdout, stderr)
	}
	return pid
}

// waitUp waits until the board answers with a boot other than old.
func waitUp(t *testing.T, b *simBoard, old string) string {
	t.Helper()
	var boot string
	up := false
	defer func() {
		if !up {
			t.Logf("the board's log:\n%s", b.stderr)
		}
	}()
	testenv.Eventually(t, fmt.Sprintf("the board to answer with a boot other than %q", old), func() bool {
		c, err := dispatcher.Dial(t.Context(), b.ws, testDialOptions())
		if err != nil {
			return false
		}
		info, err := c.Info(t.Context())
		c.Close()
		boot = info.BootID
		return err == nil && boot != old
	})
	up = true
	return boot
}

func bootID(t *testing.T, b *simBoard) string {
	t.Helper()
	return waitUp(t, b, "")
}

// TestOTAKilledInEveryState cuts the agent (SIGKILL, a power cut) right
// after each state of an update is persisted. Afterwards the board boots a
// complete, verified slot, the status tells the truth, and the update,
// tried again, finishes.
func TestOTAKilledInEveryState(t *testing.T) {
	testenv.BuildTestHooks(t) // the crash point
	l := newOTALab(t)
	b := startOTABoard(t, l)
	if _, stderr, code := otaCLI(t, b.ws, l.build("1.0.0", l.base, "sim", nil)); code != 0 {
		t.Fatalf("setup update: %d %s", code, stderr)
	}
	for i, tc := range []struct {
		crash   string       // the crash point, see agent/ota/crash.go
		bad     bool         // an image whose health check fails
		outcome proto.Result // the result of the update that was cut
	}{
		{"prepare:1", false, ""},
		{"prepare:4", false, ""},
		{"prepared", false, ""},
		{"activate:1", false, ""},
		{"activate:2", false, proto.ResultCommitted}, // the trial was set: the power cut boots it
		{"trial", false, proto.ResultRolledBack},
		{"commit", false, proto.ResultRolledBack},
		{"done", false, proto.ResultCommitted},
		{"rollback", true, proto.ResultRolledBack},
	} {
		t.Run(tc.crash, func(t *testing.T) {
			version := fmt.Sprintf("1.%d.0", i+1)
			if tc.bad {
				version += "-bad"
			}
			img := l.build(version, l.variant(2+i%3), "sim", nil)
			if err := os.WriteFile(filepath.Join(b.state, "ota", "crash-at"), []byte(tc.crash), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, stderr, code := cli(t, "", "reboot", b.ws, "--wait"); code != 0 { // the crash point is read at start
				t.Fatalf("reboot: %s", stderr)
			}
			boot := bootID(t, b)
			_, stderr, code := otaCLI(t, b.ws, img)
			if _, err := os.Stat(filepath.Join(b.state, "ota", "crash-at")); err == nil {
				t.Fatalf("the agent never reached %s (ota exit %d: %s)", tc.crash, code, stderr)
			}
			waitUp(t, b, boot)
			settled(t, b)
			st := checkBootedSlot(t, b)
			if tc.outcome != "" && (st.Update == nil || st.Update.Result != tc.outcome) {
				t.Fatalf("after a cut in %s: update %+v, want %s", tc.crash, st.Update, tc.outcome)
			}
			if tc.outcome == "" && (st.Update == nil || st.Update.Phase == proto.PhaseDone) {
				t.Fatalf("after a cut in %s: update %+v, want it still under way", tc.crash, st.Update)
			}
			t.Logf("cut in %s (ota exit %d): booted %s, update %s %s %s", tc.crash, code, slotOf(st, true).Name,
				st.Update.Phase, st.Update.Result, st.Update.Reason)
			if tc.bad || st.Update.Result == proto.ResultCommitted {
				return
			}
			rep, stderr, code := otaCLI(t, b.ws, img)
			if code != 0 || rep.Update.Result != proto.ResultCommitted {
				t.Fatalf("retry after a cut in %s: %d %+v %s", tc.crash, code, rep.Update, stderr)
			}
			if strings.HasPrefix(tc.crash, "prepare:4") && rep.Plan.Have == 0 {
				t.Fatalf("the retried update restarted its prepare: plan %+v", rep.Plan)
			}
			checkBootedSlot(t, b)
		})
	}
}

// flashFactory writes the board's slot A behind its agent's back, as a
// factory or a person flashing the board does.
func flashFactory(t *testing.T, b *simBoard, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(b.state, "slots"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.state, "slots", "A.img"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestOTAKilledWhileHashing cuts the agent (SIGKILL) while it hashes a
// slot it did not write, on the first update of a board flashed in the
// factory: the board boots that slot, no update began and no hashes were
// kept; the update, tried again, reads the slot anew and sends only the
// chunks that differ.
func TestOTAKilledWhileHashing(t *testing.T) {
	testenv.BuildTestHooks(t) // the crash point
	l := newOTALab(t)
	b := startOTABoard(t, l)
	flashFactory(t, b, l.base)
	crash := filepath.Join(b.state, "ota", "crash-at")
	if err := os.WriteFile(crash, []byte("hash:3"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := cli(t, "", "reboot", b.ws, "--wait"); code != 0 { // the crash point is read at start
		t.Fatalf("reboot: %s", stderr)
	}
	boot := bootID(t, b)
	img := l.build("1.0.0", l.variant(4), "sim", nil)
	_, stderr, code := otaCLI(t, b.ws, img)
	if _, err := os.Stat(crash); err == nil {
		t.Fatalf("the agent never hashed 3 chunks (ota exit %d: %s)", code, stderr)
	}
	waitUp(t, b, boot)
	if st := checkBootedSlot(t, b); st.Update != nil || slotOf(st, true).Name != "A" {
		t.Fatalf("after a cut while hashing: %+v, want slot A booted and no update", st)
	}
	if _, err := os.Stat(filepath.Join(b.state, "ota", "hashes.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("hashes kept from a read cut short (%v)", err)
	}
	rep, stderr, code := otaCLI(t, b.ws, img)
	changed := (otaChunks + 3) / 4
	if code != 0 || rep.Update.Result != proto.ResultCommitted {
		t.Fatalf("retry: %d %+v %s", code, rep.Update, stderr)
	}
	if p := rep.Plan; p.Hashed != int64(len(l.base)) || p.Copy != otaChunks-changed || len(p.Need) != changed {
		t.Fatalf("retry's plan %+v: want the slot hashed whole, %d chunks copied, %d sent", p, otaChunks-changed, changed)
	}
	checkBootedSlot(t, b)
}

// TestOTAShowsItsWaits runs the first update of a factory-flashed board
// through the display `ota` draws: the board's hashing and copying are
// reported before it answers the start, and after the prepare every wait
// is named with the time it took: the trial's setup, the reboot, the
// health check (held until the display shows it).
func TestOTAShowsItsWaits(t *testing.T) {
	l := newOTALab(t)
	healthy := filepath.Join(t.TempDir(), "healthy")
	b := startSimBoard(t, 50*time.Millisecond, "--trust-key", l.pub,
		"--health-check", fmt.Sprintf("while [ ! -e %s ]; do sleep 0.05; done", healthy))
	flashFactory(t, b, l.base)
	img, err := image.OpenFile(l.build("1.0.0", l.variant(8), "sim", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var out bytes.Buffer
	show := &otaDisplay{w: &out, name: "1.0.0.img", term: true}
	var hashed, copied int64
	rep, err := update(context.Background(), b, img, dispatcher.OTAOptions{Progress: func(p dispatcher.OTAProgress) {
		show.step(p)
		switch p.Phase {
		case proto.ProgressHash:
			hashed = p.Bytes
		case proto.ProgressCopy:
			copied = p.Bytes
		case string(proto.PhaseTrial):
			if err := os.WriteFile(healthy, nil, 0o644); err != nil {
				t.Error(err)
			}
		}
	}})
	show.done(err == nil)
	if err != nil {
		t.Fatalf("update: %v\n%s", err, out.String())
	}
	if changed := (otaChunks + 7) / 8; hashed != int64(len(l.base)) || copied != int64(otaChunks-changed)*otaChunk ||
		len(rep.Plan.Need) != changed {
		t.Fatalf("hashed %d, copied %d bytes, plan %+v: want the slot hashed whole and all but %d chunks copied",
			hashed, copied, rep.Plan, changed)
	}
	text := out.String()
	at := 0
	for _, want := range []string{"setting up the trial boot of slot B (", "rebooting into slot B for its trial (",
		"trial boot of slot B: health check (", "phase done"} {
		i := strings.Index(text[at:], want)
		if i < 0 {
			t.Fatalf("the display lacks %q after %q:\n%s", want, text[:at], text)
		}
		at += i + len(want)
	}
	t.Logf("the display:\n%s", text)
}

// TestOTAWaitsShowOnTerminal: `ota` on a terminal names each wait after
// the prepare, with the time waited as it goes and the time it took.
func TestOTAWaitsShowOnTerminal(t *testing.T) {
	l := newOTALab(t)
	b := startOTABoard(t, l)
	flashFactory(t, b, l.base)
	img := l.build("1.0.0", l.variant(8), "sim", nil)
	code, stdout, term := onPTY(t, context.Background(), "ota", b.ws, img, "--timeout", "2m")
	if code != 0 {
		t.Fatalf("ota: exit %d\n%s%s", code, stdout, term)
	}
	for _, want := range []string{"setting up the trial boot of slot B (", "rebooting into slot B for its trial ("} {
		if !strings.Contains(term, want) {
			t.Fatalf("the terminal never showed %q:\n%q", want, term)
		}
	}
	if !elapsed.MatchString(term) {
		t.Fatalf("the terminal never showed the time waited:\n%q", term)
	}
}

// TestOTAKilledDuringPrepare cuts the agent (SIGKILL) at random byte
// offsets of the chunks crossing the link: 5 cuts, and as a stress test
// with BOARDLINK_E2E=1 200 (50 under the race detector), OTA_KILLS to
// choose (`just ota-kills` runs 10,000). After each cut the board boots a
// verified slot and tells the truth, and the update, tried again, resumes
// its prepare (it holds at least the chunks it held before) and commits.
func TestOTAKilledDuringPrepare(t *testing.T) {
	kills := 5 // about a second each
	switch n, err := strconv.Atoi(os.Getenv("OTA_KILLS")); {
	case err == nil && n > 0:
		kills = n
	case testenv.E2E() && testenv.Race:
		kills = 50 // the same path, several times slower under the detector
	case testenv.E2E():
		kills = 200
	}
	l := newOTALab(t)
	b := startOTABoard(t, l)
	ctx := context.Background()
	resumed := 0
	for k := range kills {
		path := l.build(fmt.Sprintf("3.%d.0", k+1), l.variant(1), "sim", nil)
		img, err := image.OpenFile(path)
		if err != nil {
			t.Fatal(err)
		}
		pid, boot := agentPID(t, b), bootID(t, b)
		frac, _ := rand.Int(rand.Reader, big.NewInt(1000))
		killed := false
		cut := dispatcher.OTAOptions{Progress: func(p dispatcher.OTAProgress) {
			if p.Phase == "send" && !killed && p.Sent*1000 >= p.ToSend*frac.Int64() {
				killed = true
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}}
		first, err := update(ctx, b, img, cut)
		if !killed || err == nil {
			t.Fatalf("cut %d: not killed (%v)", k, err)
		}
		waitUp(t, b, boot)
		settled(t, b)
		st := checkBootedSlot(t, b)
		if u := st.Update; u == nil || u.Phase != proto.PhasePrepare || u.ID != first.Plan.ID {
			t.Fatalf("cut %d: the status says %+v, want update %s still preparing", k, u, first.Plan.ID)
		}
		held := st.Update.ChunksDone
		again, err := update(ctx, b, img, dispatcher.OTAOptions{})
		img.Close()
		l.remove(path) // 10,000 cuts must not leave 80 GB of images behind
		if err != nil {
			t.Fatalf("cut %d: the retried update: %v", k, err)
		}
		if again.Plan.ID != first.Plan.ID || again.Plan.Have < held {
			t.Fatalf("cut %d: the retry restarted: plan %s held %d, first %s", k, again.Plan.ID, again.Plan.Have, first.Plan.ID)
		}
		resumed += again.Plan.Have
		if (k+1)%500 == 0 {
			t.Logf("%d cuts so far, all checked", k+1)
		}
	}
	t.Logf("%d cuts during prepare: each board booted a verified slot, each retry resumed (%.1f of %d chunks kept on average) and committed",
		kills, float64(resumed)/float64(kills), otaChunks)
	if resumed == 0 {
		t.Fatal("no retry kept a chunk: the prepare always restarted")
	}
}

// update runs one update of b to img over a fresh connection.
func update(ctx context.Context, b *simBoard, img *image.Image, opts dispatcher.OTAOptions) (dispatcher.OTAReport, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute) // a stuck update fails the test, not hangs it
	defer cancel()
	c, err := dispatcher.Dial(ctx, b.ws, testDialOptions())
	if err != nil {
		return dispatcher.OTAReport{}, err
	}
	defer c.Close()
	return c.Update(ctx, img, opts)
}

// startOTASim starts one in-process sim board (simlab) that trusts the
// lab's key, and returns its address.
func startOTASim(t *testing.T, l *otaLab) string {
	t.Helper()
	lab, err := simlab.Start(context.Background(), simlab.Options{Boards: 1, Dir: t.TempDir(), Token: testToken, IDPrefix: labPrefix(),
		TrustKeys: []ed25519.PublicKey{l.key.Public().(ed25519.PublicKey)}, BootDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Stop(context.Background()) })
	return lab.Boards[0].Addr()
}

// serveImage serves an image file on loopback through handle.
func serveImage(t *testing.T, path string, handle func(w http.ResponseWriter, r *http.Request, file []byte)) string {
	t.Helper()
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handle(w, r, file) }))
	t.Cleanup(srv.Close)
	return srv.URL + "/" + filepath.Base(path)
}

func serveWithRange(w http.ResponseWriter, r *http.Request, file []byte) {
	http.ServeContent(w, r, "image.img", time.Time{}, bytes.NewReader(file))
}

// TestOTAURLFailures: `ota --url` against servers that cannot give the
// image stops at once, exit 1, with the reason, which ota.status keeps
// (the update halted in prepare); the same command against a server that
// ignores Range (as python3 -m http.server does) resumes the update and
// commits it.
func TestOTAURLFailures(t *testing.T) {
	l := newOTALab(t)
	board := startOTASim(t, l)
	img := l.build("1.0.0", l.base, "sim", nil)
	for _, tc := range []struct {
		name   string
		handle func(w http.ResponseWriter, r *http.Request, file []byte)
		reason string
	}{
		{"500 forever", func(w http.ResponseWriter, r *http.Request, _ []byte) {
			http.Error(w, "broken", http.StatusInternalServerError)
		}, "500 Internal Server Error"},
		{"wrong bytes", func(w http.ResponseWriter, r *http.Request, file []byte) {
			other := bytes.Clone(file)
			for i := len(other) / 2; i < len(other); i += 1000 {
				other[i] ^= 0xff
			}
			serveWithRange(w, r, other)
		}, "not this image"},
		{"short image", func(w http.ResponseWriter, r *http.Request, file []byte) {
			serveWithRange(w, r, file[:len(file)*3/4])
		}, "shorter than the image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := serveImage(t, img, tc.handle)
			rep, stderr, code := otaCLI(t, board, img, "--url", url)
			if code != 1 || !strings.Contains(stderr, tc.reason) || !strings.Contains(stderr, "boardlink ota "+board+" --abort") ||
				rep.Update == nil || rep.Update.Phase != proto.PhaseHalted {
				t.Fatalf("ota --url: exit %d, update %+v, stderr %q; want 1 and %q", code, rep.Update, stderr, tc.reason)
			}
			st := otaStatus(t, board)
			if u := st.Update; u == nil || u.Phase != proto.PhaseHalted || u.FailedPhase != proto.PhasePrepare ||
				!strings.Contains(u.Reason, tc.reason) {
				t.Fatalf("ota.status after the failure: %+v", st.Update)
			}
			t.Logf("%s", strings.TrimSpace(stderr))
		})
	}
	var requests atomic.Int32
	url := serveImage(t, img, func(w http.ResponseWriter, _ *http.Request, file []byte) {
		requests.Add(1)
		w.Write(file) // no Range: 200 and the whole file
	})
	rep, stderr, code := otaCLI(t, board, img, "--url", url)
	if code != 0 || rep.Update.Result != proto.ResultCommitted || rep.BytesSent != 0 || requests.Load() != 1 {
		t.Fatalf("ota --url from a server without Range: exit %d, %+v, %d requests; %s", code, rep.Update, requests.Load(), stderr)
	}
}

// TestOTAAbortAndStatus: an update left on the board (halted here) is
// named by --status with the commands that resume or abort it, blocks
// another image with a message saying how to abort it, and --abort ends
// it, after which the other image installs.
func TestOTAAbortAndStatus(t *testing.T) {
	l := newOTALab(t)
	board := startOTASim(t, l)
	img1 := l.build("1.0.0", l.base, "sim", nil)
	img2 := l.build("1.1.0", l.variant(4), "sim", nil)

	if _, stderr, code := cli(t, "", "ota", board, "--abort"); code != 1 || !strings.Contains(stderr, "nothing to abort") {
		t.Fatalf("--abort without an update: %d %s", code, stderr)
	}
	gone := serveImage(t, img1, func(w http.ResponseWriter, r *http.Request, _ []byte) { http.NotFound(w, r) })
	if _, stderr, code := otaCLI(t, board, img1, "--url", gone); code != 1 {
		t.Fatalf("ota --url to a missing file: %d %s", code, stderr)
	}
	hint := "boardlink ota " + board + " --abort"
	if _, stderr, code := otaCLI(t, board, img2); code != 1 || !strings.Contains(stderr, "abort it first") || !strings.Contains(stderr, hint) {
		t.Fatalf("another image while one is halted: %d %q, want 1 and %q", code, stderr, hint)
	}
	stdout, stderr, code := cli(t, "", "ota", board, "--status")
	if code != 0 || !strings.Contains(stdout, "phase halted") || !strings.Contains(stdout, "404 Not Found") || !strings.Contains(stdout, hint) {
		t.Fatalf("--status of a halted update: %d %q %s", code, stdout, stderr)
	}
	t.Logf("ota --status:\n%s", stdout)

	if _, stderr, code := cli(t, "", "ota", board, "--status", "--abort"); code != 2 {
		t.Fatalf("--status --abort: %d %s, want a usage error", code, stderr)
	}
	stdout, stderr, code = cli(t, "", "ota", board, "--abort")
	if code != 0 || !strings.Contains(stdout, "aborted") {
		t.Fatalf("--abort: %d %q %s", code, stdout, stderr)
	}
	if st := otaStatus(t, board); st.Update.Phase != proto.PhaseDone || st.Update.Result != proto.ResultAborted {
		t.Fatalf("after --abort: %+v", st.Update)
	}
	if stdout, _, _ := cli(t, "", "ota", board, "--status"); strings.Contains(stdout, hint) {
		t.Fatalf("--status of an aborted update still says how to abort it:\n%s", stdout)
	}
	if rep, stderr, code := otaCLI(t, board, img2); code != 0 || rep.Update.Result != proto.ResultCommitted {
		t.Fatalf("the other image after --abort: %d %+v %s", code, rep.Update, stderr)
	}
	if _, stderr, code := cli(t, "", "ota", board, "--abort"); code != 1 || !strings.Contains(stderr, "ended committed") {
		t.Fatalf("--abort after a commit: %d %s", code, stderr)
	}
}
