package linux

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/board"
	"github.com/boardlink/boardlink/internal/atomicfile"
)

// fakeProc is a procfs in a directory with what Open reads: the host
// name, the boot id and /proc/stat's btime.
type fakeProc struct {
	t   *testing.T
	dir string
}

func newFakeProc(t *testing.T, hostname, bootID string, btime int64) *fakeProc {
	t.Helper()
	p := &fakeProc{t: t, dir: t.TempDir()}
	if hostname != "" {
		p.write("sys/kernel/hostname", hostname+"\n")
	}
	if bootID != "" {
		p.write("sys/kernel/random/boot_id", bootID+"\n")
	}
	if btime != 0 {
		p.setBtime(btime)
	}
	return p
}

func (p *fakeProc) write(name, content string) {
	p.t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func (p *fakeProc) setBtime(sec int64) {
	p.t.Helper()
	p.write("stat", "cpu  1 2 3 4 5 6 7 0 0 0\nintr 1\nctxt 99\nbtime "+strconv.FormatInt(sec, 10)+"\nprocesses 7\n")
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDefaultID(t *testing.T) {
	const mid = "0123456789abcdef0123456789abcdef"
	tests := []struct {
		name      string
		hostname  string // "" no file
		machineID string // "" no file
		want      string
		err       string
	}{
		// The machine id first: a stock image's host name is every board's.
		{name: "machine id", hostname: "raspberrypi", machineID: mid + "\n", want: "linux-0123456789ab"},
		{name: "host name without a machine id", hostname: "rpi4-7", want: "rpi4-7"},
		{name: "fully qualified", hostname: "rpi4-7.lab.example.org", want: "rpi4-7"},
		{name: "uninitialized machine id", hostname: "rpi4-7", machineID: "uninitialized\n", want: "rpi4-7"},
		{name: "localhost", hostname: "localhost", err: `host name "localhost" is no board id`},
		{name: "kernel default", hostname: "(none)", machineID: "uninitialized", err: "is not one"},
		{name: "nothing at all", err: "no default board id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proc := newFakeProc(t, tt.hostname, "", 0)
			midFile := filepath.Join(t.TempDir(), "machine-id")
			if tt.machineID != "" {
				writeFile(t, midFile, tt.machineID)
			}
			got, err := DefaultID(proc.dir, midFile)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("DefaultID = %q, %v; want an error saying %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("DefaultID = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestOpen(t *testing.T) {
	fb := newFakeBoard(t, GRUB, false)
	const bootID = "5e1c3f0a-8b2d-4c6e-9f10-2a3b4c5d6e7f"
	proc := newFakeProc(t, "bench-3.lab", bootID, 1_700_000_000)
	dir := filepath.Join(t.TempDir(), "state")
	marker := filepath.Join(t.TempDir(), "rebooted")
	cfg := BoardConfig{Dir: dir, Proc: proc.dir, Sys: t.TempDir(), MachineID: filepath.Join(t.TempDir(), "none"),
		Boot:          &Config{Loader: GRUB, Env: fb.env, Cmdline: fb.cmdline, Devices: map[string]string{"A": "/dev/sda2", "B": "/dev/sda3"}},
		RebootCommand: "touch " + marker}

	// The first start needs a model: neither the device tree nor DMI
	// names one here.
	if _, err := Open(cfg); !errors.Is(err, board.ErrNoModel) {
		t.Fatalf("Open without a model = %v, want board.ErrNoModel", err)
	}
	if _, err := os.Stat(filepath.Join(dir, board.IdentityFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed Open stored an identity: %v", err)
	}

	cfg.Model = "imx8"
	cfg.Labels = map[string]string{"rack": "3"}
	b, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := board.Identity{ID: "bench-3", Model: "imx8", Labels: map[string]string{"rack": "3"}}
	if got := b.Identity(); got.ID != want.ID || got.Model != want.Model || !maps.Equal(got.Labels, want.Labels) {
		t.Errorf("identity %+v, want %+v", got, want)
	}
	var stored board.Identity
	if err := atomicfile.ReadJSON(filepath.Join(dir, board.IdentityFile), board.IdentityFormat, &stored); err != nil || stored.ID != "bench-3" {
		t.Errorf("stored identity %+v, %v", stored, err)
	}
	if b.BootID() != bootID || b.Dir() != dir {
		t.Errorf("boot id %q, dir %q", b.BootID(), b.Dir())
	}
	if got := b.BootedAt(); !got.Equal(time.Unix(1_700_000_000, 0)) {
		t.Errorf("booted at %v", got)
	}
	// The clock was set: btime follows, and so does BootedAt.
	proc.setBtime(1_700_000_100)
	if got := b.BootedAt(); !got.Equal(time.Unix(1_700_000_100, 0)) {
		t.Errorf("booted at %v after the clock moved", got)
	}
	os.Remove(filepath.Join(proc.dir, "stat"))
	if got := b.BootedAt(); !got.Equal(time.Unix(1_700_000_000, 0)) {
		t.Errorf("booted at %v without /proc/stat: want what Open read", got)
	}
	proc.setBtime(1_700_000_000)
	st, err := b.BootControl().State(t.Context())
	if err != nil || st != (board.BootState{Booted: "A", Active: "A"}) {
		t.Errorf("boot state %+v, %v", st, err)
	}
	if p, _ := b.BootControl().SlotPath("B"); p != "/dev/sda3" {
		t.Errorf("slot B is %q", p)
	}

	// The stored identity stays when the host name changes (an update
	// brought another one); flags still override it.
	proc.write("sys/kernel/hostname", "other\n")
	b, err = Open(BoardConfig{Dir: dir, Proc: proc.dir, Boot: cfg.Boot, RebootCommand: cfg.RebootCommand})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Identity(); got.ID != "bench-3" || got.Model != "imx8" || got.Labels["rack"] != "3" {
		t.Errorf("second start: identity %+v", got)
	}
	b, err = Open(BoardConfig{Dir: dir, Proc: proc.dir, Boot: cfg.Boot, RebootCommand: cfg.RebootCommand, ID: "bench-4"})
	if err != nil || b.Identity().ID != "bench-4" {
		t.Fatalf("--id over the stored one: %+v, %v", b.Identity(), err)
	}

	// Reboot runs the command.
	if got := b.RebootCommand(); !slices.Equal(got, []string{"/bin/sh", "-c", "touch " + marker}) {
		t.Errorf("reboot command %q", got)
	}
	if err := b.Reboot(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the reboot command did not run: %v", err)
	}
}

// fakeSys is a sysfs in a directory, with the files DefaultModel reads.
func fakeSys(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, path, content)
	}
	return dir
}

func TestDefaultModel(t *testing.T) {
	const (
		procDT  = "device-tree/model"
		sysDT   = "firmware/devicetree/base/model"
		product = "class/dmi/id/product_name"
		boardNm = "class/dmi/id/board_name"
	)
	tests := []struct {
		name      string
		proc, sys map[string]string
		want      string
	}{
		{name: "device tree", proc: map[string]string{procDT: "Raspberry Pi 4 Model B Rev 1.4\x00"},
			sys: map[string]string{product: "ignored"}, want: "Raspberry Pi 4 Model B Rev 1.4"},
		{name: "device tree in sysfs only", sys: map[string]string{sysDT: "NXP i.MX8MPlus EVK board\x00"}, want: "NXP i.MX8MPlus EVK board"},
		{name: "procfs first", proc: map[string]string{procDT: "from proc\x00"}, sys: map[string]string{sysDT: "from sys\x00"}, want: "from proc"},
		{name: "DMI product", sys: map[string]string{product: "Standard PC (Q35 + ICH9, 2009)\n", boardNm: "ignored\n"},
			want: "Standard PC (Q35 + ICH9, 2009)"},
		{name: "DMI placeholder", sys: map[string]string{product: "To Be Filled By O.E.M.\n", boardNm: "X570 AORUS ELITE\n"},
			want: "X570 AORUS ELITE"},
		{name: "empty device tree", proc: map[string]string{procDT: "\x00"}, sys: map[string]string{boardNm: "NUC7i5BNB\n"}, want: "NUC7i5BNB"},
		{name: "not printable", proc: map[string]string{procDT: "bad\x01model\x00"}, sys: map[string]string{product: "good\n"}, want: "good"},
		{name: "too long", sys: map[string]string{product: strings.Repeat("m", 250), boardNm: "short"}, want: "short"},
		{name: "only placeholders", sys: map[string]string{product: "System Product Name\n", boardNm: "Default string\n"}},
		{name: "nothing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DefaultModel(fakeSys(t, tt.proc), fakeSys(t, tt.sys)); got != tt.want {
				t.Errorf("DefaultModel = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestOpenWithoutSlots opens a board that has no A/B slots: no boot
// control, its id from the machine id (or --id) and its model from the
// device tree (or DMI) at the first start, kept afterwards; with no
// model anywhere Open names where it looked.
func TestOpenWithoutSlots(t *testing.T) {
	proc := newFakeProc(t, "rpi", "id-1", 1)
	mid := writeFile(t, filepath.Join(t.TempDir(), "machine-id"), "5f0c2e1d9a8b7c6d5f0c2e1d9a8b7c6d\n")
	cfg := BoardConfig{Dir: t.TempDir(), Proc: proc.dir, Sys: t.TempDir(), MachineID: mid, RebootCommand: "true"}

	_, err := Open(cfg)
	if !errors.Is(err, board.ErrNoModel) {
		t.Fatalf("Open with no model anywhere = %v, want board.ErrNoModel", err)
	}
	for _, f := range modelFiles(cfg.Proc, cfg.Sys) {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("the error does not name %s: %v", f, err)
		}
	}

	proc.write("device-tree/model", "Raspberry Pi 4 Model B Rev 1.4\x00")
	b, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if b.BootControl() != nil {
		t.Error("a board without slots has a boot control")
	}
	if got := b.Identity(); got.ID != "linux-5f0c2e1d9a8b" || got.Model != "Raspberry Pi 4 Model B Rev 1.4" {
		t.Errorf("identity %+v", got)
	}
	// The stored model stays when the device tree changes (a new kernel
	// names the board otherwise); --model changes it.
	proc.write("device-tree/model", "Raspberry Pi 4 Model B\x00")
	if b, err = Open(cfg); err != nil || b.Identity().Model != "Raspberry Pi 4 Model B Rev 1.4" {
		t.Errorf("second start: %+v, %v", b.Identity(), err)
	}
	cfg.Model = "rpi4"
	if b, err = Open(cfg); err != nil || b.Identity().Model != "rpi4" {
		t.Errorf("--model over the stored one: %+v, %v", b.Identity(), err)
	}

	// A PC or a VM: no device tree, DMI names it; --id names the board
	// whatever its machine id.
	pc := BoardConfig{Dir: t.TempDir(), Proc: newFakeProc(t, "pc", "id-2", 1).dir, MachineID: mid, RebootCommand: "true", ID: "bench-9",
		Sys: fakeSys(t, map[string]string{"class/dmi/id/product_name": "Standard PC (Q35 + ICH9, 2009)\n"})}
	if b, err = Open(pc); err != nil || b.Identity().ID != "bench-9" || b.Identity().Model != "Standard PC (Q35 + ICH9, 2009)" {
		t.Errorf("a PC without slots: %+v, %v", b.Identity(), err)
	}
}

func TestOpenRejects(t *testing.T) {
	fb := newFakeBoard(t, GRUB, false)
	good := func(t *testing.T) BoardConfig {
		return BoardConfig{Dir: t.TempDir(), Model: "m", Proc: newFakeProc(t, "b1", "id-1", 1).dir, RebootCommand: "true",
			Boot: &Config{Loader: GRUB, Env: fb.env, Cmdline: fb.cmdline, Devices: map[string]string{"A": "/dev/sda2", "B": "/dev/sda3"}}}
	}
	if _, err := Open(good(t)); err != nil {
		t.Fatalf("the good config: %v", err)
	}
	tests := []struct {
		name string
		edit func(t *testing.T, c *BoardConfig)
		want string
	}{
		{"no state dir", func(t *testing.T, c *BoardConfig) { c.Dir = "" }, "state directory is required"},
		{"no boot id", func(t *testing.T, c *BoardConfig) { c.Proc = newFakeProc(t, "b1", "", 1).dir }, "boot id"},
		{"no btime", func(t *testing.T, c *BoardConfig) {
			p := newFakeProc(t, "b1", "id-1", 0)
			p.write("stat", "cpu 1 2 3\n")
			c.Proc = p.dir
		}, "has no btime line"},
		{"bad btime", func(t *testing.T, c *BoardConfig) {
			p := newFakeProc(t, "b1", "id-1", 0)
			p.write("stat", "btime soon\n")
			c.Proc = p.dir
		}, `btime "soon"`},
		{"blank reboot command", func(t *testing.T, c *BoardConfig) { c.RebootCommand = "  " }, "reboot command: an empty command"},
		{"bad boot loader", func(t *testing.T, c *BoardConfig) { c.Boot.Loader = "lilo" }, `boot loader "lilo"`},
		{"bad id", func(t *testing.T, c *BoardConfig) { c.ID = "a/b" }, "board id"},
		{"state dir is a file", func(t *testing.T, c *BoardConfig) { c.Dir = writeFile(t, filepath.Join(t.TempDir(), "f"), "") }, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good(t)
			tt.edit(t, &c)
			if _, err := Open(c); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open = %v, want an error saying %q", err, tt.want)
			}
		})
	}
}

func TestReboot(t *testing.T) {
	// A failing command says what ran and what it said.
	b := &Board{reboot: []string{"/bin/sh", "-c", "echo not permitted >&2; exit 3"}}
	err := b.Reboot(t.Context())
	if err == nil || !strings.Contains(err.Error(), "exit status 3: not permitted") || !strings.Contains(err.Error(), "echo not permitted") {
		t.Errorf("Reboot = %v", err)
	}

	// The default: reboot where there is no systemctl.
	bin := t.TempDir()
	writeFile(t, filepath.Join(bin, "reboot"), "#!/bin/sh\nexit 0\n")
	os.Chmod(filepath.Join(bin, "reboot"), 0o755)
	t.Setenv("PATH", bin)
	if got, err := rebootArgv(""); err != nil || !slices.Equal(got, []string{filepath.Join(bin, "reboot")}) {
		t.Errorf("default without systemctl: %q, %v", got, err)
	}
	// systemctl reboot where systemd is the init system.
	writeFile(t, filepath.Join(bin, "systemctl"), "#!/bin/sh\nexit 0\n")
	os.Chmod(filepath.Join(bin, "systemctl"), 0o755)
	want := []string{filepath.Join(bin, "reboot")}
	if fi, err := os.Stat(systemdRunDir); err == nil && fi.IsDir() {
		want = []string{filepath.Join(bin, "systemctl"), "reboot"}
	}
	if got, err := rebootArgv(""); err != nil || !slices.Equal(got, want) {
		t.Errorf("default with systemctl: %q, %v; want %q", got, err, want)
	}
	// Neither.
	t.Setenv("PATH", t.TempDir())
	if _, err := rebootArgv(""); err == nil || !strings.Contains(err.Error(), "neither systemctl") {
		t.Errorf("no reboot tool: %v", err)
	}
}
