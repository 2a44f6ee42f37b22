package qemuboard

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Partition sizes of a board's disk.
const (
	ESPSize  = 64 << 20
	SlotSize = 4 << 20
	DataSize = 32 << 20
)

// Slot and data partitions as the booted kernel names them.
const (
	diskDev  = "/dev/vda"
	grubenv  = "/boot/grub/grubenv" // on the ESP
	espMount = "/boot/efi"          // where /init mounts the ESP
	dataDir  = "/data"              // where /init mounts the data partition
)

// Release is what a slot holds: the version of its system and how its
// health check (/slot/health, files/health) goes.
type Release struct {
	Version string
	Health  string // pass, fail or hang
	// Filler, if not zero, adds a file of that many random bytes, so that
	// the image shares little with any other.
	Filler int
}

// SlotImage writes an ext2 file system image of size bytes at path, made
// with mke2fs -d, holding /etc/boardlink-release and /health. The same
// release (without Filler) gives the same bytes (fixed UUID, hash seed and times), so two
// releases differ only in the blocks of what differs.
func SlotImage(ctx context.Context, path string, size int64, r Release) error {
	src, err := os.MkdirTemp("", "qemuboard-slot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(src)
	health, err := files.ReadFile("files/health")
	if err != nil {
		return err
	}
	release := fmt.Sprintf("VERSION=%s\nHEALTH=%s\n", r.Version, r.Health)
	tree := map[string]treeFile{
		"etc/boardlink-release": {perm: 0o644, data: []byte(release)},
		"health":                {perm: 0o755, data: health},
	}
	if r.Filler > 0 {
		filler := make([]byte, r.Filler)
		_, _ = rand.Read(filler)
		tree["filler"] = treeFile{perm: 0o644, data: filler}
	}
	if err := writeTree(src, tree); err != nil {
		return err
	}
	const fixed = "b0a7d11c-0000-4000-8000-000000000001"
	os.Remove(path)
	_, err = run(ctx, "", []string{"E2FSPROGS_FAKE_TIME=1700000000"}, "mke2fs", "-q", "-F", "-t", "ext2",
		"-b", "1024", "-m", "0", "-L", "rootfs", "-U", fixed, "-E", "hash_seed="+fixed+",root_owner=0:0",
		"-d", src, path, strconv.FormatInt(size/1024, 10))
	return err
}

// writeTree writes files under dir with fixed times, for reproducible
// file system images.
func writeTree(dir string, tree map[string]treeFile) error {
	epoch := time.Unix(1700000000, 0)
	for name, f := range tree {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, f.data, f.perm); err != nil {
			return err
		}
		if err := os.Chmod(p, f.perm); err != nil { // past the umask
			return err
		}
		if err := os.Chtimes(p, epoch, epoch); err != nil {
			return err
		}
	}
	return nil
}

// Spec is one board: its identity, its agent's settings and what its
// slots hold.
type Spec struct {
	ID    string // the board id
	Model string // the board model images must name
	// Serial is the agent's port: "ttyS1", a port of its own (the
	// default), or "ttyS0", shared with the kernel console.
	Serial string
	// KernelArgs are added to the kernel command line (loglevel=7).
	KernelArgs string
	// ShellOnly starts no agent: the Serial port has an interactive
	// busybox root shell instead (a board for boardlink bootstrap).
	ShellOnly bool
	// Token is the token hosts prove (at least 16 characters).
	Token string
	// TrustKey, if set, is the public key file OTA images must be signed
	// with.
	TrustKey string
	// HealthTimeout bounds a trial boot's health check (default 60s).
	HealthTimeout time.Duration
	// GrubCfg is the boot loader's configuration, from GrubConfig.
	GrubCfg []byte
	// SlotA and SlotB are the slot images (SlotImage) written to the
	// slots as if in the factory; "" leaves a slot empty (zeros).
	SlotA, SlotB string
}

// Disk is a board's disk image and firmware variables.
type Disk struct {
	Image    string
	OVMFVars string
	Spec     Spec
}

// Build makes the disk of the board spec in dir: a GPT with the ESP (GRUB,
// grub.cfg, a grubenv, the kernel and the initramfs), slot A and slot B
// (SlotSize each), and a data partition (DataSize, ext4) holding the
// agent's config, token, trusted key and state.
func (c *Cache) Build(ctx context.Context, a *Assets, spec Spec, dir string) (*Disk, error) {
	if spec.Serial == "" {
		spec.Serial = "ttyS1"
	}
	if spec.HealthTimeout == 0 {
		spec.HealthTimeout = time.Minute
	}
	if len(spec.GrubCfg) == 0 {
		return nil, errors.New("qemuboard: the spec has no grub.cfg")
	}
	for _, t := range []string{"mkfs.vfat", "mcopy", "mmd", "mke2fs"} {
		if _, err := lookTool(t); err != nil {
			return nil, err
		}
	}
	base, err := c.espBase(ctx, a)
	if err != nil {
		return nil, err
	}
	d := &Disk{Image: filepath.Join(dir, "disk.img"), OVMFVars: filepath.Join(dir, "OVMF_VARS.fd"), Spec: spec}
	if err := copyFile(a.OVMFVars, d.OVMFVars); err != nil {
		return nil, err
	}

	// The ESP: the cached base, then this board's grub.cfg and grubenv.
	esp := filepath.Join(dir, "esp.img")
	if err := copyFile(base, esp); err != nil {
		return nil, err
	}
	menu, err := withKernelArgs(spec.GrubCfg, spec.KernelArgs)
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "grub.cfg")
	env := filepath.Join(dir, "grubenv")
	if err := os.WriteFile(cfg, menu, 0o644); err != nil {
		return nil, err
	}
	os.Remove(env)
	if _, err := run(ctx, "", nil, "grub-editenv", env, "create"); err != nil {
		return nil, err
	}
	if _, err := run(ctx, "", nil, "mcopy", "-o", "-i", esp, cfg, env, "::/boot/grub/"); err != nil {
		return nil, err
	}

	data, err := c.dataImage(ctx, spec, dir)
	if err != nil {
		return nil, err
	}
	err = WriteGPT(d.Image, []Partition{
		{Name: "ESP", Type: TypeESP, Size: ESPSize, Image: esp},
		{Name: "rootfs_A", Type: TypeLinux, Size: SlotSize, Image: spec.SlotA},
		{Name: "rootfs_B", Type: TypeLinux, Size: SlotSize, Image: spec.SlotB},
		{Name: "data", Type: TypeLinux, Size: DataSize, Image: data},
	})
	os.Remove(esp)
	os.Remove(data)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// espBase makes the FAT file system of the ESP, but for grub.cfg and
// grubenv: GRUB as the removable-media boot path, the kernel, the
// initramfs.
func (c *Cache) espBase(ctx context.Context, a *Assets) (string, error) {
	k, err := fileKey(a.GrubEFI, a.Kernel, a.Initrd)
	if err != nil {
		return "", err
	}
	dir, err := c.entry("esp", k, func(dir string) error {
		img := filepath.Join(dir, "esp.img")
		if _, err := run(ctx, "", nil, "mkfs.vfat", "-C", "-n", "ESP", img, strconv.Itoa(ESPSize/1024)); err != nil {
			return err
		}
		if _, err := run(ctx, "", nil, "mmd", "-i", img, "::/EFI", "::/EFI/BOOT", "::/boot", "::/boot/grub"); err != nil {
			return err
		}
		for src, dst := range map[string]string{a.GrubEFI: "::/EFI/BOOT/BOOTX64.EFI", a.Kernel: "::/vmlinuz", a.Initrd: "::/initrd.img"} {
			if _, err := run(ctx, "", nil, "mcopy", "-i", img, src, dst); err != nil {
				return err
			}
		}
		return nil
	})
	return filepath.Join(dir, "esp.img"), err
}

// agentConfig is the agent's --config file on the data partition.
type agentConfig struct {
	Board         string            `yaml:"board"`
	StateDir      string            `yaml:"state_dir"`
	Listen        string            `yaml:"listen"`
	NoMDNS        bool              `yaml:"no_mdns"`
	Serial        string            `yaml:"serial"`
	TokenFile     []string          `yaml:"token_file"`
	ID            string            `yaml:"id"`
	Model         string            `yaml:"model"`
	Boot          string            `yaml:"boot"`
	Slots         map[string]string `yaml:"slots"`
	BootEnv       string            `yaml:"boot_env"`
	RebootCommand string            `yaml:"reboot_command"`
	Roots         []string          `yaml:"roots"`
	TrustKeys     []string          `yaml:"trust_keys,omitempty"`
	HealthChecks  []string          `yaml:"health_checks"`
	HealthTimeout time.Duration     `yaml:"health_timeout"`
}

// dataImage makes the data partition: the agent's config, token and
// trusted key, and a file root (/data/files, besides /tmp).
func (c *Cache) dataImage(ctx context.Context, spec Spec, dir string) (string, error) {
	cfg := agentConfig{
		Board:         "linux",
		StateDir:      dataDir + "/state",
		Listen:        "", // no network: the serial line only
		NoMDNS:        true,
		Serial:        "/dev/" + spec.Serial + ":115200",
		TokenFile:     []string{dataDir + "/token"},
		ID:            spec.ID,
		Model:         spec.Model,
		Boot:          "grub",
		Slots:         map[string]string{"A": diskDev + "2", "B": diskDev + "3"},
		BootEnv:       espMount + grubenv,
		RebootCommand: "/sbin/board-reboot",
		Roots:         []string{dataDir + "/files", "/tmp"},
		HealthChecks:  []string{"/slot/health"},
		HealthTimeout: spec.HealthTimeout,
	}
	tree := map[string]treeFile{
		"token":       {perm: 0o600, data: []byte(spec.Token + "\n")},
		"files/.keep": {perm: 0o644},
	}
	if spec.ShellOnly {
		tree["shell-only"] = treeFile{perm: 0o644, data: []byte(spec.Serial + "\n")}
	}
	if spec.TrustKey != "" {
		pub, err := os.ReadFile(spec.TrustKey)
		if err != nil {
			return "", err
		}
		tree["release.pub"] = treeFile{perm: 0o644, data: pub}
		cfg.TrustKeys = []string{dataDir + "/release.pub"}
	}
	y, err := yaml.Marshal(cfg)
	if err != nil {
		return "", err
	}
	tree["boardlinkd.yaml"] = treeFile{perm: 0o644, data: y}
	src := filepath.Join(dir, "data")
	if err := writeTree(src, tree); err != nil {
		return "", err
	}
	defer os.RemoveAll(src)
	img := filepath.Join(dir, "data.img")
	os.Remove(img)
	_, err = run(ctx, "", nil, "mke2fs", "-q", "-F", "-t", "ext4", "-L", "data", "-E", "root_owner=0:0",
		"-d", src, img, strconv.Itoa(DataSize/1024))
	return img, err
}

// GrubConfig is the test boards' grub.cfg, as docs/boot.md (bootDoc)
// states it: the block that starts "# grub.cfg:" up to its menuentry
// (which picks the slot and boots a trial once), then the block that
// starts "# grub.cfg menu entry:" (one kernel on the ESP for both slots).
// The boards thus prove the documented contract with the real GRUB.
func GrubConfig(bootDoc []byte) ([]byte, error) {
	main, err := docBlock(bootDoc, "# grub.cfg:")
	if err != nil {
		return nil, err
	}
	logic, _, ok := bytes.Cut(main, []byte("\nmenuentry "))
	if !ok {
		return nil, errors.New("qemuboard: the grub.cfg of docs/boot.md has no menuentry")
	}
	entry, err := docBlock(bootDoc, "# grub.cfg menu entry:")
	if err != nil {
		return nil, err
	}
	return slices.Concat(logic, []byte("\n"), entry), nil
}

// docBlock returns the ``` block of doc whose first line starts with
// head, with a final newline.
func docBlock(doc []byte, head string) ([]byte, error) {
	_, rest, ok := bytes.Cut(doc, []byte("```\n"+head))
	if !ok {
		return nil, fmt.Errorf("qemuboard: docs/boot.md has no ``` block starting with %q", head)
	}
	block, _, ok := bytes.Cut(rest, []byte("\n```"))
	if !ok {
		return nil, fmt.Errorf("qemuboard: the block %q of docs/boot.md does not end", head)
	}
	return slices.Concat([]byte(head), block, []byte("\n")), nil
}

// withKernelArgs appends args to every linux line of cfg.
func withKernelArgs(cfg []byte, args string) ([]byte, error) {
	if args == "" {
		return cfg, nil
	}
	lines := strings.Split(string(cfg), "\n")
	n := 0
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "linux ") {
			lines[i] += " " + args
			n++
		}
	}
	if n == 0 {
		return nil, errors.New("qemuboard: the grub.cfg has no linux line for the kernel arguments")
	}
	return []byte(strings.Join(lines, "\n")), nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}
