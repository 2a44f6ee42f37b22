package qemuboard

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
)

// tool finds a host tool, skipping the test without it (failing under
// BOARDLINK_E2E=1).
func tool(t *testing.T, name string) {
	t.Helper()
	if _, err := lookTool(name); err != nil {
		testenv.SkipOrFail(t, "%v", err)
	}
}

// The boards' grub.cfg is the one docs/boot.md states, and GRUB's own
// parser accepts it with the kernel arguments a test adds.
func TestGrubConfigIsTheDocs(t *testing.T) {
	tool(t, "grub-script-check")
	doc, err := os.ReadFile("../../docs/boot.md")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := GrubConfig(doc)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = withKernelArgs(cfg, "loglevel=7")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"load_env boot_slot trial_slot trial_booted\n",
		"save_env trial_slot trial_booted\n",
		// The slot's partition on the disk the agent's slots name.
		"linux /vmlinuz root=" + diskDev + "${slot_part} ro panic=5 boardlink.slot=${slot} console=ttyS0,115200 loglevel=7\n",
	} {
		if !bytes.Contains(cfg, []byte(want)) {
			t.Errorf("grub.cfg has no %q:\n%s", want, cfg)
		}
	}
	if n := bytes.Count(cfg, []byte("menuentry ")); n != 1 {
		t.Errorf("grub.cfg has %d menu entries, want the ESP one only:\n%s", n, cfg)
	}
	path := filepath.Join(t.TempDir(), "grub.cfg")
	if err := os.WriteFile(path, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := run(context.Background(), "", nil, "grub-script-check", path); err != nil {
		t.Errorf("GRUB refuses the grub.cfg: %v\n%s", err, cfg)
	}
	if _, err := GrubConfig([]byte("no blocks")); err == nil {
		t.Error("GrubConfig of a document without the blocks: no error")
	}
}

// WriteGPT makes a table that gdisk finds valid, with each partition's
// name, type and image where it says.
func TestWriteGPT(t *testing.T) {
	tool(t, "sgdisk")
	dir := t.TempDir()
	img := filepath.Join(dir, "part.img")
	payload := bytes.Repeat([]byte("slot A "), 1000)
	if err := os.WriteFile(img, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.img")
	err := WriteGPT(disk, []Partition{
		{Name: "ESP", Type: TypeESP, Size: 1 << 20},
		{Name: "rootfs_A", Type: TypeLinux, Size: 2 << 20, Image: img},
		{Name: "data", Type: TypeLinux, Size: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	out, err := run(ctx, "", nil, "sgdisk", "-v", disk)
	if err != nil || !strings.Contains(string(out), "No problems found") {
		t.Fatalf("sgdisk -v: %v\n%s", err, out)
	}
	out, err = run(ctx, "", nil, "sgdisk", "-p", disk)
	if err != nil {
		t.Fatal(err)
	}
	// Number, start and end sectors, size, type code, name.
	for _, want := range []string{
		"1            2048            4095   1024.0 KiB  EF00  ESP",
		"2            4096            8191   2.0 MiB     8300  rootfs_A",
		"3            8192           10239   1024.0 KiB  8300  data",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("sgdisk -p has no %q:\n%s", want, out)
		}
	}
	b, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if got := b[4096*sector : 4096*sector+len(payload)]; !bytes.Equal(got, payload) {
		t.Error("rootfs_A does not start with its image")
	}

	if err := WriteGPT(disk, []Partition{{Name: "big", Type: TypeLinux, Size: 1, Image: filepath.Join(dir, "disk.img")}}); err == nil {
		t.Error("an image larger than its partition: no error")
	}
	if err := WriteGPT(disk, []Partition{{Name: "x", Type: "not a guid", Size: 1}}); err == nil {
		t.Error("a bad type GUID: no error")
	}
}

// A missing tool is ErrUnavailable and names its Debian package.
func TestLookToolNamesThePackage(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := lookTool("qemu-system-x86_64")
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "qemu-system-x86") {
		t.Errorf("lookTool of a missing tool: %v", err)
	}
}

// Building an entry removes the entries of its kind left unused for a
// day, and keeps the others; a hit marks an entry used.
func TestCachePrunesUnusedEntries(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	fill := func(name, k string) string {
		t.Helper()
		dir, err := c.entry(name, k, func(dir string) error { return os.WriteFile(filepath.Join(dir, "f"), []byte(k), 0o644) })
		if err != nil {
			t.Fatal(err)
		}
		return dir
	}
	stale, used, other := fill("esp", "0000000000000001"), fill("esp", "0000000000000002"), fill("initramfs", "0000000000000003")
	long := time.Now().Add(-2 * pruneAge)
	for _, d := range []string{stale, used, other} {
		if err := os.Chtimes(d, long, long); err != nil {
			t.Fatal(err)
		}
	}
	if fill("esp", "0000000000000002") != used { // a hit
		t.Fatal("a hit is not the entry")
	}
	fresh := fill("esp", "0000000000000004")
	for d, want := range map[string]bool{stale: false, used: true, other: true, fresh: true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", filepath.Base(d), err == nil, want)
		}
	}
}

func TestTail(t *testing.T) {
	console := []byte("one\ntwo\nthree\nfour")
	for _, c := range []struct {
		lines int
		want  string
	}{{2, "three\nfour"}, {4, "one\ntwo\nthree\nfour"}, {9, "one\ntwo\nthree\nfour"}, {0, ""}} {
		if got := Tail(console, c.lines); got != c.want {
			t.Errorf("Tail(%d) = %q, want %q", c.lines, got, c.want)
		}
	}
}
