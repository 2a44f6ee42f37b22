package qemuboard

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The Debian packages the boards are made of.
const (
	KernelMeta  = "linux-image-cloud-amd64" // depends on the versioned kernel package
	BusyboxDeb  = "busybox-static"
	GrubEFIDeb  = "grub-efi-amd64-bin"
	OVMFDeb     = "ovmf"
	grubModDir  = "usr/lib/grub/x86_64-efi"
	ovmfCode    = "usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars    = "usr/share/OVMF/OVMF_VARS_4M.fd"
	busyboxPath = "bin/busybox"
)

// grubModules are built into GRUB's EFI image: what grub.cfg uses, and
// the partition table and file systems it reads.
var grubModules = []string{"part_gpt", "fat", "ext2", "normal", "configfile", "linux", "loadenv",
	"echo", "test", "regexp", "search", "search_label", "search_fs_uuid", "probe", "reboot", "halt", "sleep"}

// bootModules are the kernel modules /init loads, in this order, each after
// those it depends on (the initramfs has no module index; the cloud kernel
// builds them as modules): virtio-blk for the disk, then vfat to mount the
// ESP, where the grubenv is.
var bootModules = []string{
	"drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko",
	"drivers/virtio/virtio_pci_legacy_dev.ko", "drivers/virtio/virtio_pci_modern_dev.ko",
	"drivers/virtio/virtio_pci.ko", "drivers/block/virtio_blk.ko",
	"fs/fat/fat.ko", "fs/fat/vfat.ko", "fs/nls/nls_cp437.ko", "fs/nls/nls_ascii.ko",
}

//go:embed files
var files embed.FS

// Assets are the parts every board is made of, in the cache.
type Assets struct {
	Kernel        string // the kernel, a bzImage (vmlinuz)
	KernelRelease string // its uname -r
	Initrd        string // the initramfs, a gzipped cpio
	GrubEFI       string // GRUB's EFI image, BOOTX64.EFI
	OVMFCode      string // the firmware, read-only
	OVMFVars      string // the firmware's variables, copied for each board
}

// Prepare builds, or finds in the cache, every part of the boards: the
// kernel, the initramfs with agent (a static boardlinkd, from Agent),
// GRUB and OVMF.
func (c *Cache) Prepare(ctx context.Context, agent string) (*Assets, error) {
	// Every tool, building the boards or running them, is looked for
	// first: a missing one fails before anything is downloaded.
	for _, t := range []string{"apt-get", "apt-cache", "dpkg-deb", "grub-mkimage", "grub-editenv", "ldd",
		"mkfs.vfat", "mcopy", "mmd", "mke2fs", "qemu-system-x86_64"} {
		if _, err := lookTool(t); err != nil {
			return nil, err
		}
	}
	kpkg, err := KernelPackage(ctx, KernelMeta)
	if err != nil {
		return nil, err
	}
	debs := map[string]string{}
	for _, pkg := range []string{kpkg, BusyboxDeb, GrubEFIDeb, OVMFDeb} {
		if debs[pkg], err = c.Deb(ctx, pkg); err != nil {
			return nil, err
		}
	}
	a := &Assets{
		OVMFCode: filepath.Join(debs[OVMFDeb], ovmfCode),
		OVMFVars: filepath.Join(debs[OVMFDeb], ovmfVars),
	}
	release := strings.TrimPrefix(kpkg, "linux-image-")
	a.Kernel, a.KernelRelease = filepath.Join(debs[kpkg], "boot", "vmlinuz-"+release), release
	for _, f := range []string{a.Kernel, a.OVMFCode, a.OVMFVars} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("qemuboard: the package does not hold what it should: %w", err)
		}
	}
	if a.GrubEFI, err = c.grubEFI(ctx, filepath.Join(debs[GrubEFIDeb], grubModDir)); err != nil {
		return nil, err
	}
	modules := filepath.Join(debs[kpkg], "lib", "modules", release, "kernel")
	if a.Initrd, err = c.initramfs(ctx, agent, filepath.Join(debs[BusyboxDeb], busyboxPath), modules); err != nil {
		return nil, err
	}
	return a, nil
}

// Agent builds the static agent of the module at moduleRoot, stripped,
// into the cache under the hash of its bytes (the go command's own cache
// makes a rebuild of an unchanged tree quick). Without VCS stamping: the
// bytes do not change with the checkout's state, and git does not refuse
// a checkout another user owns.
func (c *Cache) Agent(ctx context.Context, moduleRoot string) (string, error) {
	tmp, err := os.MkdirTemp("", "qemuboard-agent-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "boardlinkd")
	if _, err := run(ctx, moduleRoot, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"},
		"go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", bin, "./cmd/boardlinkd"); err != nil {
		return "", err
	}
	k, err := fileKey(bin)
	if err != nil {
		return "", err
	}
	dir, err := c.entry("agent", k, func(dir string) error {
		return os.Rename(bin, filepath.Join(dir, "boardlinkd"))
	})
	return filepath.Join(dir, "boardlinkd"), err
}

// grubEFI makes GRUB's EFI image from the modules in modDir, its prefix
// /boot/grub on the partition it is loaded from (the ESP): there it reads
// grub.cfg, and load_env and save_env the grubenv.
func (c *Cache) grubEFI(ctx context.Context, modDir string) (string, error) {
	k, err := fileKey(filepath.Join(modDir, "kernel.img"), filepath.Join(modDir, "moddep.lst"))
	if err != nil {
		return "", fmt.Errorf("qemuboard: GRUB's modules: %w", err)
	}
	dir, err := c.entry("grub-efi", key([]byte(k), []byte(strings.Join(grubModules, " "))), func(dir string) error {
		args := append([]string{"-O", "x86_64-efi", "-d", modDir, "-p", "/boot/grub",
			"-o", filepath.Join(dir, "BOOTX64.EFI")}, grubModules...)
		_, err := run(ctx, "", nil, "grub-mkimage", args...)
		return err
	})
	return filepath.Join(dir, "BOOTX64.EFI"), err
}

// initramfs makes the boards' initramfs: busybox and its applets, /init
// (files/init), the agent, the disk's and vfat's modules, and grub-editenv
// with the shared libraries it needs, taken from this host (an x86_64
// Linux too).
func (c *Cache) initramfs(ctx context.Context, agent, busybox, modules string) (string, error) {
	editenv, err := lookTool("grub-editenv")
	if err != nil {
		return "", err
	}
	libs, err := sharedLibs(ctx, editenv)
	if err != nil {
		return "", err
	}
	inputs := append([]string{agent, busybox, editenv}, libs...)
	for _, m := range bootModules {
		inputs = append(inputs, filepath.Join(modules, m))
	}
	k, err := fileKey(inputs...)
	if err != nil {
		return "", err
	}
	scripts, err := scriptsKey()
	if err != nil {
		return "", err
	}
	dir, err := c.entry("initramfs", key([]byte(k), []byte(scripts), []byte(diskDev)), func(dir string) error {
		t := newTree()
		for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/boot/efi", "/data", "/slot", "/root", "/usr/bin", "/sbin"} {
			t.mkdirAll(d)
		}
		t.Char("/dev/console", 5, 1)
		if err := addFile(t, "/bin/busybox", busybox, 0o755); err != nil {
			return err
		}
		applets, err := run(ctx, "", nil, busybox, "--list")
		if err != nil {
			return err
		}
		for _, a := range strings.Fields(string(applets)) {
			if a != "busybox" {
				t.Symlink("/bin/"+a, "busybox")
			}
		}
		if err := addFile(t, "/sbin/boardlinkd", agent, 0o755); err != nil {
			return err
		}
		if err := addFile(t, "/usr/bin/grub-editenv", editenv, 0o755); err != nil {
			return err
		}
		for _, l := range libs {
			if err := addFile(t, l, l, 0o755); err != nil {
				return err
			}
		}
		var load []string
		for _, m := range bootModules {
			if err := addFile(t, "/lib/modules/"+filepath.Base(m), filepath.Join(modules, m), 0o644); err != nil {
				return err
			}
			load = append(load, filepath.Base(m))
		}
		t.File("/lib/modules/load", 0o644, []byte(strings.Join(load, "\n")+"\n"))
		t.File("/etc/boardlink-disk", 0o644, []byte(diskDev+"\n")) // /init's disk, as the agent's slots name it
		for src, dst := range map[string]string{"init": "/init", "reboot": "/sbin/board-reboot"} {
			b, err := files.ReadFile("files/" + src)
			if err != nil {
				return err
			}
			t.File(dst, 0o755, b)
		}
		t.File("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
		t.File("/etc/group", 0o644, []byte("root:x:0:\n"))
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		if err := t.writeCPIO(zw); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "initrd.img"), buf.Bytes(), 0o644)
	})
	return filepath.Join(dir, "initrd.img"), err
}

// addFile adds the host file src to the tree as name.
func addFile(t *tree, name, src string, perm os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	t.File(name, perm, b)
	return nil
}

// scriptsKey hashes the embedded scripts.
func scriptsKey() (string, error) {
	var parts [][]byte
	ents, err := files.ReadDir("files")
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		b, err := files.ReadFile("files/" + e.Name())
		if err != nil {
			return "", err
		}
		parts = append(parts, []byte(e.Name()), b)
	}
	return key(parts...), nil
}

// sharedLibs lists the shared libraries bin loads, with its program
// interpreter, as ldd prints them (absolute paths, symlinks not resolved:
// the initramfs gets each under the name the loader looks for).
func sharedLibs(ctx context.Context, bin string) ([]string, error) {
	out, err := run(ctx, "", nil, "ldd", bin)
	if err != nil {
		return nil, err
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
		// "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
		switch {
		case len(f) == 4 && f[1] == "=>":
			libs = append(libs, f[2])
		case len(f) == 2 && filepath.IsAbs(f[0]):
			libs = append(libs, f[0])
		}
	}
	if len(libs) == 0 {
		return nil, fmt.Errorf("ldd %s: no libraries in %q", bin, out)
	}
	return libs, nil
}
