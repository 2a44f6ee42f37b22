package linux

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/internal/testenv"
)

// needTools skips the test loudly (fails under BOARDLINK_E2E=1) when a
// boot loader tool is missing.
func needTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			testenv.SkipOrFail(t, "%s is not installed (Debian package %s)", n, tools[n])
		}
	}
}

const ubootEnvSize = 0x4000

// ubootEnvImage returns a CRC-valid U-Boot environment of size bytes
// holding vars, as mkenvimage makes it: a little-endian CRC-32 of the
// data, a flags byte for a redundant copy, then NAME=VALUE strings, each
// ending in NUL, an empty one, and 0xff padding.
func ubootEnvImage(size int, redundant bool, flags byte, vars ...string) []byte {
	head := 4
	if redundant {
		head = 5
	}
	data := bytes.Repeat([]byte{0xff}, size-head)
	var b bytes.Buffer
	for _, v := range vars {
		b.WriteString(v)
		b.WriteByte(0)
	}
	b.WriteByte(0)
	copy(data, b.Bytes())
	img := binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(data))
	if redundant {
		img = append(img, flags)
	}
	return append(img, data...)
}

// fakeBoard is a board's boot loader environment and kernel command line
// in a directory, and the boot loader's script (docs/boot.md) acted out
// with the same tools, so that a test can "boot" it.
type fakeBoard struct {
	t       *testing.T
	loader  Loader
	env     string // fw_env.config, or grubenv
	images  []string
	cmdline string
	bc      *BootControl
}

func newFakeBoard(t *testing.T, loader Loader, redundant bool) *fakeBoard {
	t.Helper()
	dir := t.TempDir()
	b := &fakeBoard{t: t, loader: loader, cmdline: filepath.Join(dir, "cmdline")}
	switch loader {
	case UBoot:
		needTools(t, "fw_printenv", "fw_setenv")
		var config strings.Builder
		copies := 1
		if redundant {
			copies = 2
		}
		for i := range copies {
			img := filepath.Join(dir, fmt.Sprintf("env%d.img", i))
			// The first copy is current; a redundant second copy is older.
			if err := os.WriteFile(img, ubootEnvImage(ubootEnvSize, redundant, byte(1-i), "bootdelay=0", "bootlimit=1"), 0o644); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&config, "%s 0x0000 0x%x\n", img, ubootEnvSize)
			b.images = append(b.images, img)
		}
		b.env = filepath.Join(dir, "fw_env.config")
		if err := os.WriteFile(b.env, []byte(config.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	case GRUB:
		needTools(t, "grub-editenv")
		b.env = filepath.Join(dir, "grubenv")
		b.tool("grub-editenv", b.env, "create")
		b.images = []string{b.env}
	}
	b.setCmdline("console=ttyS0,115200 root=/dev/mmcblk0p2 rootwait boardlink.slot=A")
	bc, err := New(Config{Loader: loader, Env: b.env, Cmdline: b.cmdline,
		Devices: map[string]string{"A": "/dev/mmcblk0p2", "B": "/dev/mmcblk0p3"}})
	if err != nil {
		t.Fatal(err)
	}
	b.bc = bc
	return b
}

func (b *fakeBoard) setCmdline(line string) {
	b.t.Helper()
	if err := os.WriteFile(b.cmdline, []byte(line+"\n"), 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *fakeBoard) tool(name string, args ...string) string {
	b.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		b.t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// vars reads the environment with the tool.
func (b *fakeBoard) vars() map[string]string {
	b.t.Helper()
	var out string
	if b.loader == UBoot {
		out = b.tool("fw_printenv", "-c", b.env)
	} else {
		out = b.tool("grub-editenv", b.env, "list")
	}
	vars, err := parseVars(out, b.loader == UBoot)
	if err != nil {
		b.t.Fatal(err)
	}
	return vars
}

// set writes variables as the boot loader would (saveenv, save_env).
func (b *fakeBoard) set(kvs ...string) {
	b.t.Helper()
	if b.loader == UBoot {
		script := filepath.Join(b.t.TempDir(), "script")
		if err := os.WriteFile(script, []byte(strings.Join(kvs, "\n")+"\n"), 0o644); err != nil {
			b.t.Fatal(err)
		}
		b.tool("fw_setenv", "-c", b.env, "-s", script)
		return
	}
	b.tool("grub-editenv", append([]string{b.env, "set"}, kvs...)...)
}

// boot acts out the boot script of docs/boot.md and returns the slot it
// boots, which it puts on the kernel command line.
func (b *fakeBoard) boot() string {
	b.t.Helper()
	v := b.vars()
	slot := v["boot_slot"]
	if slot != "B" {
		slot = "A"
	}
	switch b.loader {
	case UBoot:
		// CONFIG_BOOTCOUNT_LIMIT with CONFIG_BOOTCOUNT_ENV: the count is
		// kept while upgrade_available=1; past bootlimit, altbootcmd.
		if v["upgrade_available"] == "1" {
			count, _ := strconv.Atoi(v["bootcount"])
			limit, _ := strconv.Atoi(v["bootlimit"])
			count++
			b.set("bootcount=" + strconv.Itoa(count))
			if limit > 0 && count > limit {
				slot = board.Other(slot)
				b.set("boot_slot="+slot, "upgrade_available=0", "bootcount=0")
			}
		}
	case GRUB:
		if v["trial_slot"] != "" {
			if v["trial_booted"] == "" {
				b.set("trial_booted=1")
				slot = v["trial_slot"]
			} else {
				b.set("trial_slot=", "trial_booted=")
			}
		}
	}
	b.setCmdline("console=ttyS0,115200 rootwait boardlink.slot=" + slot)
	return slot
}

// snapshot is the environment's bytes, to tell whether a call wrote it.
func (b *fakeBoard) snapshot() string {
	b.t.Helper()
	var all []byte
	for _, img := range b.images {
		data, err := os.ReadFile(img)
		if err != nil {
			b.t.Fatal(err)
		}
		all = append(all, data...)
	}
	return string(all)
}

var loaders = []struct {
	name      string
	loader    Loader
	redundant bool
}{
	{"uboot", UBoot, false},
	{"uboot redundant", UBoot, true},
	{"grub", GRUB, false},
}

// TestBootLoaderStateMachine drives the real tools on file-backed
// environments through the same sequences as the sim board's bootloader,
// booting with the boot script of docs/boot.md.
func TestBootLoaderStateMachine(t *testing.T) {
	type step struct {
		do     string // "trial X", "commit", "rollback", "boot"
		want   board.BootState
		trying bool
		err    string
		quiet  bool // the call must not write the environment
	}
	st := func(booted, active, trial string) board.BootState {
		return board.BootState{Booted: booted, Active: active, Trial: trial}
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"fresh board", []step{
			{do: "boot", want: st("A", "A", "")},
			{do: "rollback", want: st("A", "A", ""), quiet: true},
			{do: "commit", want: st("A", "A", "")}, // writes the defaults, once
			{do: "commit", want: st("A", "A", ""), quiet: true},
		}},
		{"a trial not committed falls back", []step{
			{do: "trial B", want: st("A", "A", "B")},
			{do: "boot", want: st("B", "A", "B"), trying: true},
			{do: "boot", want: st("A", "A", "")},
			{do: "boot", want: st("A", "A", "")},
		}},
		{"commit, and a trial back to A", []step{
			{do: "trial B", want: st("A", "A", "B")},
			{do: "boot", want: st("B", "A", "B"), trying: true},
			{do: "commit", want: st("B", "B", "")},
			{do: "commit", want: st("B", "B", ""), quiet: true},
			{do: "boot", want: st("B", "B", "")},
			{do: "trial A", want: st("B", "B", "A")},
			{do: "boot", want: st("A", "B", "A"), trying: true},
			{do: "commit", want: st("A", "A", "")},
			{do: "boot", want: st("A", "A", "")},
		}},
		{"rollback during the trial boot", []step{
			{do: "trial B", want: st("A", "A", "B")},
			{do: "boot", want: st("B", "A", "B"), trying: true},
			{do: "rollback", want: st("B", "A", "")},
			{do: "rollback", want: st("B", "A", ""), quiet: true},
			{do: "trial A", want: st("B", "A", ""), err: "active slot", quiet: true},
			{do: "boot", want: st("A", "A", "")},
		}},
		{"rollback of a pending trial", []step{
			{do: "trial B", want: st("A", "A", "B")},
			{do: "trial B", want: st("A", "A", "B"), quiet: true},
			{do: "rollback", want: st("A", "A", "")},
			{do: "rollback", want: st("A", "A", ""), quiet: true},
			{do: "boot", want: st("A", "A", "")},
		}},
		{"set trial refuses", []step{
			{do: "trial A", want: st("A", "A", ""), err: "booted slot", quiet: true},
			{do: "trial C", want: st("A", "A", ""), err: "no such slot", quiet: true},
			{do: "trial B", want: st("A", "A", "B")},
			{do: "boot", want: st("B", "A", "B"), trying: true},
			{do: "trial A", want: st("B", "A", "B"), trying: true, err: "active slot", quiet: true},
			{do: "trial B", want: st("B", "A", "B"), trying: true, err: "booted slot", quiet: true},
		}},
	}
	ctx := context.Background()
	for _, l := range loaders {
		t.Run(l.name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					b := newFakeBoard(t, l.loader, l.redundant)
					for i, s := range tt.steps {
						before := b.snapshot()
						var err error
						switch verb, arg, _ := strings.Cut(s.do, " "); verb {
						case "trial":
							err = b.bc.SetTrial(ctx, arg)
						case "commit":
							err = b.bc.Commit(ctx)
						case "rollback":
							err = b.bc.Rollback(ctx)
						case "boot":
							b.boot()
						default:
							t.Fatalf("unknown step %q", s.do)
						}
						if s.err == "" && err != nil || s.err != "" && (err == nil || !strings.Contains(err.Error(), s.err)) {
							t.Fatalf("step %d %q: error %v, want %q", i, s.do, err, s.err)
						}
						if s.quiet && b.snapshot() != before {
							t.Errorf("step %d %q wrote the environment", i, s.do)
						}
						got, err := b.bc.State(ctx)
						if err != nil {
							t.Fatalf("step %d %q: State: %v", i, s.do, err)
						}
						if got != s.want || got.Trying() != s.trying {
							t.Fatalf("step %d %q: state %+v (trying %v), want %+v (trying %v); env %v",
								i, s.do, got, got.Trying(), s.want, s.trying, b.vars())
						}
					}
				})
			}
		})
	}
}

// TestBootLoaderVariables pins the variables each call writes: the
// contract with the boot script of docs/boot.md.
func TestBootLoaderVariables(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		loader                  Loader
		trial, trying, rollback map[string]string
	}{
		{UBoot,
			map[string]string{"boot_slot": "B", "upgrade_available": "1", "bootcount": "0", "bootlimit": "1"},
			map[string]string{"boot_slot": "B", "upgrade_available": "0", "bootcount": "0"}, // committed
			map[string]string{"boot_slot": "A", "upgrade_available": "0", "bootcount": "0"}},
		{GRUB,
			map[string]string{"trial_slot": "B", "trial_booted": ""},
			map[string]string{"boot_slot": "B", "trial_slot": "", "trial_booted": ""},
			map[string]string{"trial_slot": "", "trial_booted": ""}},
	}
	check := func(t *testing.T, b *fakeBoard, when string, want map[string]string) {
		t.Helper()
		got := b.vars()
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s=%q, want %q (env %v)", when, k, got[k], v, got)
			}
		}
	}
	for _, tt := range tests {
		t.Run(string(tt.loader), func(t *testing.T) {
			b := newFakeBoard(t, tt.loader, false)
			if err := b.bc.SetTrial(ctx, "B"); err != nil {
				t.Fatal(err)
			}
			check(t, b, "set trial", tt.trial)
			if err := b.bc.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			check(t, b, "rollback", tt.rollback)
			if err := b.bc.SetTrial(ctx, "B"); err != nil {
				t.Fatal(err)
			}
			if b.boot() != "B" {
				t.Fatal("the trial was not booted")
			}
			if err := b.bc.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			check(t, b, "commit", tt.trying)
			if got := b.vars()["bootdelay"]; tt.loader == UBoot && got != "0" {
				t.Errorf("the other variables were lost: bootdelay=%q", got)
			}
		})
	}
}

func TestStateReadsOddEnvironments(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		loader Loader
		vars   []string // set before State
		booted string
		want   board.BootState
		err    string
	}{
		{"uboot: bad slot", UBoot, []string{"boot_slot=C"}, "A", board.BootState{}, `boot_slot="C" is not a slot`},
		{"uboot: bad upgrade_available", UBoot, []string{"upgrade_available=yes"}, "A", board.BootState{}, `upgrade_available="yes"`},
		{"uboot: bad bootcount", UBoot, []string{"upgrade_available=1", "bootcount=x"}, "A", board.BootState{}, `bootcount="x" is not a count`},
		{"uboot: spent trial", UBoot, []string{"boot_slot=B", "upgrade_available=1", "bootcount=2"}, "A",
			board.BootState{Booted: "A", Active: "A"}, ""},
		{"uboot: trial counted while A runs", UBoot, []string{"boot_slot=B", "upgrade_available=1", "bootcount=1"}, "A",
			board.BootState{Booted: "A", Active: "A"}, ""},
		{"uboot: a value with a newline", UBoot, nil, "A", board.BootState{Booted: "A", Active: "A"}, ""},
		{"grub: bad slot", GRUB, []string{"boot_slot=b"}, "A", board.BootState{}, `boot_slot="b" is not a slot`},
		{"grub: bad trial", GRUB, []string{"trial_slot=AB"}, "A", board.BootState{}, `trial_slot="AB" is not a slot`},
		{"grub: bad trial_booted", GRUB, []string{"trial_slot=B", "trial_booted=yes"}, "A", board.BootState{}, `trial_booted="yes"`},
		{"grub: spent trial", GRUB, []string{"trial_slot=B", "trial_booted=1"}, "A", board.BootState{Booted: "A", Active: "A"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newFakeBoard(t, tt.loader, false)
			if len(tt.vars) > 0 {
				b.set(tt.vars...)
			}
			if tt.name == "uboot: a value with a newline" {
				// fw_printenv prints it on two lines; the second continues it.
				b.tool("fw_setenv", "-c", b.env, "motd", "hello\nworld")
				if got := b.vars()["motd"]; got != "hello\nworld" {
					t.Errorf("motd read as %q", got)
				}
			}
			b.setCmdline("boardlink.slot=" + tt.booted)
			got, err := b.bc.State(ctx)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("State = %+v, %v; want error %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("State = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestCorruptOrMissingEnvironment(t *testing.T) {
	ctx := context.Background()
	t.Run("uboot: bad CRC", func(t *testing.T) {
		b := newFakeBoard(t, UBoot, false)
		img := ubootEnvImage(ubootEnvSize, false, 0, "boot_slot=A")
		img[0] ^= 0xff
		if err := os.WriteFile(b.images[0], img, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := b.bc.State(ctx)
		if err == nil || !strings.Contains(err.Error(), "fw_printenv -c "+b.env) || !strings.Contains(err.Error(), "Cannot read environment") {
			t.Fatalf("State: %v, want fw_printenv's complaint", err)
		}
		if err := b.bc.SetTrial(ctx, "B"); err == nil || !strings.HasPrefix(err.Error(), "linux: set trial B: u-boot environment: ") {
			t.Fatalf("SetTrial: %v", err)
		}
		if got, _ := os.ReadFile(b.images[0]); !bytes.Equal(got, img) {
			t.Error("SetTrial wrote a corrupt environment")
		}
	})
	t.Run("uboot: missing config", func(t *testing.T) {
		b := newFakeBoard(t, UBoot, false)
		os.Remove(b.env)
		if _, err := b.bc.State(ctx); err == nil || !strings.Contains(err.Error(), "fw_printenv") {
			t.Fatalf("State: %v", err)
		}
	})
	t.Run("grub: garbage", func(t *testing.T) {
		b := newFakeBoard(t, GRUB, false)
		if err := os.WriteFile(b.env, []byte("garbage\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := b.bc.State(ctx); err == nil || !strings.Contains(err.Error(), "invalid environment block") {
			t.Fatalf("State: %v, want grub-editenv's complaint", err)
		}
		if err := b.bc.Rollback(ctx); err == nil {
			t.Fatal("Rollback of a garbage grubenv succeeded")
		}
	})
	t.Run("grub: missing file is not created", func(t *testing.T) {
		b := newFakeBoard(t, GRUB, false)
		os.Remove(b.env)
		if _, err := b.bc.State(ctx); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("State: %v, want ErrNotExist", err)
		}
		if err := b.bc.SetTrial(ctx, "B"); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("SetTrial: %v, want ErrNotExist", err)
		}
		if _, err := os.Stat(b.env); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("the grubenv was created: %v", err)
		}
	})
	t.Run("grub: the edit leaves no temporary file", func(t *testing.T) {
		b := newFakeBoard(t, GRUB, false)
		if err := b.bc.SetTrial(ctx, "B"); err != nil {
			t.Fatal(err)
		}
		ents, err := os.ReadDir(filepath.Dir(b.env))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") {
				t.Errorf("left behind: %s", e.Name())
			}
		}
		if fi, err := os.Stat(b.env); err != nil || fi.Size() != 1024 {
			t.Errorf("grubenv: %v, %v; want 1024 bytes", fi, err)
		}
	})
}

func TestBootedSlot(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		cmdline, want, err string
	}{
		{"root=/dev/sda2 boardlink.slot=A quiet", "A", ""},
		{"rauc.slot=B", "B", ""},
		{"rauc.slot=A boardlink.slot=B", "B", ""}, // ours wins
		{"boardlink.slot=a", "A", ""},
		{`boardlink.slot="B"`, "B", ""},
		{"boardlink.slot=A boardlink.slot=B", "B", ""}, // the last one counts
		{"boardlink.slot=C", "", `boardlink.slot="C" is not a slot`},
		{"boardlink.slot=", "", `boardlink.slot="" is not a slot`},
		{"root=/dev/sda2 quiet", "", "no boardlink.slot= or rauc.slot= parameter"},
		{"", "", "no boardlink.slot="},
	}
	for i, tt := range tests {
		p := filepath.Join(dir, strconv.Itoa(i))
		if err := os.WriteFile(p, []byte(tt.cmdline+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := BootedSlot(p)
		if got != tt.want || tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%q: %q, %v; want %q, %q", tt.cmdline, got, err, tt.want, tt.err)
		}
	}
	if _, err := BootedSlot(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestNewRejects(t *testing.T) {
	devs := map[string]string{"A": "/dev/a", "B": "/dev/b"}
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{Loader: "lilo", Devices: devs}, `boot loader "lilo"`},
		{Config{Loader: UBoot}, "slot A: no device"},
		{Config{Loader: UBoot, Devices: map[string]string{"A": "/dev/a"}}, "slot B: no device"},
		{Config{Loader: GRUB, Devices: map[string]string{"A": "/dev/a", "B": "/dev/a"}}, "both /dev/a"},
		{Config{Loader: GRUB, Devices: map[string]string{"A": "/dev/a", "B": "/dev/b", "C": "/dev/c"}}, "A and B only"},
	}
	for _, tt := range tests {
		if _, err := New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
}

func TestMissingToolsAreNamed(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	devs := map[string]string{"A": "/dev/a", "B": "/dev/b"}
	for loader, want := range map[Loader]string{UBoot: "fw_printenv", GRUB: "grub-editenv"} {
		_, err := New(Config{Loader: loader, Devices: devs})
		if !errors.Is(err, exec.ErrNotFound) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tools[want]) {
			t.Errorf("%s: New = %v, want %s not found, naming %s", loader, err, want, tools[want])
		}
	}
}

func TestSlotPathAndDefaults(t *testing.T) {
	needTools(t, "fw_printenv", "fw_setenv", "grub-editenv")
	devs := map[string]string{"A": "/dev/mmcblk0p2", "B": "/dev/mmcblk0p3"}
	u, err := New(Config{Loader: UBoot, Devices: devs})
	if err != nil {
		t.Fatal(err)
	}
	if u.cfg.Env != DefaultUBootEnv || u.cfg.Cmdline != DefaultCmdline {
		t.Errorf("uboot defaults: %+v", u.cfg)
	}
	g, err := New(Config{Loader: GRUB, Devices: devs})
	if err != nil {
		t.Fatal(err)
	}
	if g.cfg.Env != DefaultGRUBEnv {
		t.Errorf("grub defaults: %+v", g.cfg)
	}
	if s := u.Slots(); len(s) != 2 || s[0] != "A" || s[1] != "B" {
		t.Errorf("Slots = %v", s)
	}
	for slot, dev := range devs {
		if got, err := u.SlotPath(slot); err != nil || got != dev {
			t.Errorf("SlotPath(%s) = %q, %v", slot, got, err)
		}
	}
	if _, err := u.SlotPath("C"); !errors.Is(err, board.ErrNoSlot) {
		t.Errorf("SlotPath(C) = %v", err)
	}
}

func TestParseVars(t *testing.T) {
	tests := []struct {
		out       string
		continued bool
		want      map[string]string
		err       bool
	}{
		{"", false, map[string]string{}, false},
		{"a=1\nb=\nc=x=y\n", false, map[string]string{"a": "1", "b": "", "c": "x=y"}, false},
		{"a=1\nmore\n", true, map[string]string{"a": "1\nmore"}, false},
		{"a=1\nmore\n", false, nil, true},
		{"Cannot read environment\n", true, nil, true},
		{"=1\n", true, nil, true},
		{"a b=1\n", false, nil, true},
		{"a=1", false, map[string]string{"a": "1"}, false}, // no final newline
	}
	for _, tt := range tests {
		got, err := parseVars(tt.out, tt.continued)
		if tt.err != (err != nil) || fmt.Sprint(got) != fmt.Sprint(tt.want) && !tt.err {
			t.Errorf("parseVars(%q, %v) = %v, %v; want %v (error %v)", tt.out, tt.continued, got, err, tt.want, tt.err)
		}
	}
}
