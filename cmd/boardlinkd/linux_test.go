package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/board/linux"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/internal/testenv"
	"github.com/boardlink/boardlink/proto"
)

// needTool skips the test loudly (fails under BOARDLINK_E2E=1) without a
// boot loader tool.
func needTool(t *testing.T, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		testenv.SkipOrFail(t, "%s is not installed (Debian package %s)", name, pkg)
	}
}

// linuxFiles are the files a linux board's flags name, in a directory.
type linuxFiles struct {
	dir, slotA, slotB, grubenv, fwEnv, cmdline string
}

func newLinuxFiles(t *testing.T) linuxFiles {
	t.Helper()
	dir := t.TempDir()
	f := linuxFiles{dir: dir, slotA: filepath.Join(dir, "slotA"), slotB: filepath.Join(dir, "slotB"),
		grubenv: filepath.Join(dir, "grubenv"), fwEnv: filepath.Join(dir, "fw_env.config"), cmdline: filepath.Join(dir, "cmdline")}
	for path, content := range map[string]string{f.slotA: "", f.slotB: "", f.grubenv: "", f.fwEnv: "/dev/mmcblk0 0x3c0000 0x20000\n",
		f.cmdline: "console=ttyS0,115200 root=/dev/mmcblk0p2 rootwait boardlink.slot=A\n"} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// TestLinuxSettings checks what --board linux takes, from flags and from a
// config file, and that every bad setting is an error naming its flag.
func TestLinuxSettings(t *testing.T) {
	f := newLinuxFiles(t)
	state := filepath.Join(f.dir, "state")
	linuxArgs := func(extra ...string) []string {
		return append([]string{"--board", "linux", "--state-dir", state, "--boot", "grub", "--boot-env", f.grubenv,
			"--slot", "A=" + f.slotA, "--slot", "B=" + f.slotB, "--cmdline", f.cmdline}, extra...)
	}
	// without is linuxArgs without any flag (and value) named flag.
	without := func(flag string) []string {
		var out []string
		args := linuxArgs()
		for i := 0; i < len(args); i++ {
			if args[i] == flag {
				i++
				continue
			}
			out = append(out, args[i])
		}
		return out
	}
	dirDev := filepath.Join(f.dir, "adir")
	os.Mkdir(dirDev, 0o755)
	link := filepath.Join(f.dir, "link-to-A")
	os.Symlink(f.slotA, link)
	missing := filepath.Join(f.dir, "missing")

	bad := []struct {
		name string
		args []string
		want []string // substrings of the error
	}{
		{"unknown board", []string{"--board", "rpi", "--state-dir", state}, []string{`--board "rpi": want linux or sim`}},
		// With --boot or --slot the board has A/B slots, and needs the rest.
		{"boot loader without slots", append(without("--slot"), "--boot", "grub"),
			[]string{"--slot A=DEVICE is required with --boot", "--slot B=DEVICE is required with --boot"}},
		{"one slot", append(without("--slot"), "--slot", "A="+f.slotA), []string{"--slot B=DEVICE is required with --boot"}},
		{"no boot loader", without("--boot"), []string{"--boot is required with --slot: uboot or grub"}},
		// Without them it takes no updates: their settings are mistakes.
		{"plain with boot env", []string{"--board", "linux", "--state-dir", state, "--boot-env", f.grubenv},
			[]string{"--boot-env: only for a board with A/B slots (give --boot and --slot A=DEV --slot B=DEV)"}},
		{"plain with cmdline", []string{"--board", "linux", "--state-dir", state, "--cmdline", f.cmdline}, []string{"--cmdline: only for a board with A/B slots"}},
		{"plain with trust key", []string{"--board", "linux", "--state-dir", state, "--trust-key", f.cmdline}, []string{"--trust-key: only for a board with A/B slots"}},
		{"plain with health check", []string{"--board", "linux", "--state-dir", state, "--health-check", "true"},
			[]string{"--health-check: only for a board with A/B slots", "without them the board takes no updates"}},
		{"plain with blank reboot command", []string{"--board", "linux", "--state-dir", state, "--reboot-command", " "},
			[]string{"--reboot-command: an empty command"}},
		{"sim boot loader", linuxArgs("--boot", "sim"), []string{"--boot sim: the sim boot loader is the sim board's supervisor"}},
		{"unknown boot loader", linuxArgs("--boot", "lilo"), []string{`--boot "lilo": want uboot or grub`}},
		{"slot without device", linuxArgs("--slot", "A"), []string{`--slot "A": want SLOT=DEVICE`}},
		{"slot with empty device", linuxArgs("--slot", "A="), []string{`--slot "A=": want SLOT=DEVICE`}},
		{"slot twice", linuxArgs("--slot", "A="+f.slotB), []string{"--slot A: given twice"}},
		{"slot C", linuxArgs("--slot", "C="+f.slotB), []string{"--slot C: no such slot (A or B)"}},
		{"missing device", append(without("--slot"), "--slot", "A="+f.slotA, "--slot", "B="+missing),
			[]string{"--slot B=" + missing + ": stat " + missing + ": no such file"}},
		{"directory", append(without("--slot"), "--slot", "A="+dirDev, "--slot", "B="+f.slotB), []string{"--slot A=" + dirDev + ": a directory"}},
		{"one device", append(without("--slot"), "--slot", "A="+link, "--slot", "B="+f.slotA), []string{"are the same device"}},
		{"no grubenv", linuxArgs("--boot-env", missing), []string{"--boot-env, the grubenv (make one with grub-editenv FILE create): open " + missing}},
		{"no fw_env.config", linuxArgs("--boot", "uboot", "--boot-env", missing), []string{"--boot-env, the U-Boot environment's fw_env.config: open " + missing}},
		{"no command line", linuxArgs("--cmdline", missing), []string{"--cmdline: open " + missing}},
		{"blank reboot command", linuxArgs("--reboot-command", " "), []string{"--reboot-command: an empty command"}},
		// The sim board has none of it.
		{"sim with slots", []string{"--board", "sim", "--state-dir", state, "--slot", "A=" + f.slotA}, []string{"--slot: only for --board linux"}},
		{"sim with boot env", []string{"--board", "sim", "--state-dir", state, "--boot-env", f.grubenv}, []string{"--boot-env: only for --board linux"}},
		{"sim with cmdline", []string{"--board", "sim", "--state-dir", state, "--cmdline", f.cmdline}, []string{"--cmdline: only for --board linux"}},
		{"sim with reboot command", []string{"--board", "sim", "--state-dir", state, "--reboot-command", "reboot"}, []string{"--reboot-command: only for --board linux"}},
		{"sim with grub", []string{"--board", "sim", "--state-dir", state, "--boot", "grub"}, []string{"--boot grub: U-Boot and GRUB need --board linux"}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(t, tc.args...)
			if err == nil {
				t.Fatalf("%v: accepted", tc.args)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%v:\n%v\nlacks %q", tc.args, err, w)
				}
			}
		})
	}

	t.Run("missing tool", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := parseConfig(t, linuxArgs()...)
		if err == nil || !strings.Contains(err.Error(), `--boot grub: linux: exec: "grub-editenv": executable file not found`) ||
			!strings.Contains(err.Error(), "grub-common") {
			t.Errorf("without grub-editenv: %v", err)
		}
	})

	t.Run("flags", func(t *testing.T) {
		needTool(t, "grub-editenv", "grub-common")
		cfg, err := parseConfig(t, linuxArgs("--reboot-command", "systemctl reboot --no-wall")...)
		if err != nil {
			t.Fatal(err)
		}
		want := &linux.Config{Loader: linux.GRUB, Env: f.grubenv, Cmdline: f.cmdline, Devices: map[string]string{"A": f.slotA, "B": f.slotB}}
		if got := cfg.bootConfig(); !reflect.DeepEqual(got, want) {
			t.Errorf("boot config %+v, want %+v", got, want)
		}
		if cfg.Board != "linux" || cfg.RebootCommand != "systemctl reboot --no-wall" {
			t.Errorf("config %+v", cfg)
		}
		// The defaults of the boot loader's files.
		cfg, err = parseConfig(t, without("--cmdline")...)
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.bootConfig(); got.Cmdline != "" || got.Env != f.grubenv {
			t.Errorf("default command line: %+v", got)
		}
		if (&Config{Board: "linux", Boot: "grub"}).bootEnv() != linux.DefaultGRUBEnv ||
			(&Config{Board: "linux", Boot: "uboot"}).bootEnv() != linux.DefaultUBootEnv {
			t.Error("the default boot environments")
		}
	})

	t.Run("config file", func(t *testing.T) {
		needTool(t, "fw_printenv", "libubootenv-tool")
		needTool(t, "fw_setenv", "libubootenv-tool")
		file := filepath.Join(f.dir, "agent.yaml")
		yaml := "board: linux\nstate_dir: " + state + "\nmodel: imx8mp-evk\nboot: uboot\nslots:\n  A: " + f.slotA + "\n  B: " + f.slotB +
			"\nboot_env: " + f.fwEnv + "\ncmdline: " + f.cmdline + "\nreboot_command: touch /run/rebooting\n"
		if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := parseConfig(t, "--config", file)
		if err != nil {
			t.Fatal(err)
		}
		want := &linux.Config{Loader: linux.UBoot, Env: f.fwEnv, Cmdline: f.cmdline, Devices: map[string]string{"A": f.slotA, "B": f.slotB}}
		if got := cfg.bootConfig(); !reflect.DeepEqual(got, want) || cfg.RebootCommand != "touch /run/rebooting" || cfg.Model != "imx8mp-evk" {
			t.Errorf("from the file: %+v, boot %+v", cfg, got)
		}
		// Flags win: --slot replaces the file's slots as a whole.
		other := filepath.Join(f.dir, "slotB2")
		os.WriteFile(other, nil, 0o644)
		cfg, err = parseConfig(t, "--config", file, "--slot", "A="+f.slotA, "--slot", "B="+other, "--reboot-command", "reboot -f")
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(cfg.Slots, map[string]string{"A": f.slotA, "B": other}) || cfg.RebootCommand != "reboot -f" {
			t.Errorf("flags over the file: %+v", cfg)
		}
		// A --slot for one slot replaces both: B is then missing.
		if _, err := parseConfig(t, "--config", file, "--slot", "A="+f.slotA); err == nil || !strings.Contains(err.Error(), "--slot B=DEVICE is required") {
			t.Errorf("one --slot over the file: %v", err)
		}
	})

	t.Run("without slots", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir()) // no boot loader tool is needed
		cfg, err := parseConfig(t, "--board", "linux", "--state-dir", state, "--reboot-command", "reboot -f")
		if err != nil {
			t.Fatal(err)
		}
		if cfg.bootConfig() != nil || cfg.hasSlots() {
			t.Errorf("a board without slots has a boot config: %+v", cfg.bootConfig())
		}
		file := filepath.Join(f.dir, "plain.yaml")
		if err := os.WriteFile(file, []byte("board: linux\nstate_dir: "+state+"\nlisten: \":7207\"\npairing: true\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if cfg, err = parseConfig(t, "--config", file); err != nil || cfg.bootConfig() != nil || cfg.Listen != ":7207" {
			t.Errorf("from a file: %+v, %v", cfg, err)
		}
	})
}

// TestHelpListsEveryKey: the help's list of config file keys is every
// key Config has, and its example config is one loadConfigFile takes.
func TestHelpListsEveryKey(t *testing.T) {
	var out strings.Builder
	if err := run(t.Context(), []string{"--help"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	i := strings.Index(help, "under the\nkeys ")
	j := strings.Index(help, "; an unknown key is an error")
	if i < 0 || j < i {
		t.Fatalf("no key list in --help:\n%s", help)
	}
	listed := map[string]bool{}
	for _, k := range strings.FieldsFunc(help[i+len("under the\nkeys "):j], func(r rune) bool {
		return r == ',' || r == ' ' || r == '\n'
	}) {
		if k != "and" {
			listed[k] = true
		}
	}
	var check func(typ reflect.Type)
	check = func(typ reflect.Type) {
		for i := range typ.NumField() {
			key := typ.Field(i).Tag.Get("yaml")
			if key == ",inline" {
				check(typ.Field(i).Type)
				continue
			}
			if !listed[key] {
				t.Errorf("--help does not list the key %s", key)
			}
			delete(listed, key)
		}
	}
	check(reflect.TypeFor[Config]())
	for k := range listed {
		t.Errorf("--help lists %q, which is no key", k)
	}
	for _, want := range []string{"--board linux", "--slot B=DEV", "--boot-env", "--cmdline", "--reboot-command", "boardlink.slot=A",
		"grub-editenv FILE create", "libubootenv-tool", "systemctl reboot"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q", want)
		}
	}

	// The U-Boot board's example config, indented by 4.
	start := strings.Index(help, "    board: linux\n")
	if start < 0 {
		t.Fatal("no example config in --help")
	}
	var yaml strings.Builder
	for line := range strings.Lines(help[start:]) {
		if !strings.HasPrefix(line, "    ") {
			break
		}
		yaml.WriteString(strings.TrimPrefix(line, "    "))
	}
	file := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(file, []byte(yaml.String()), 0o644)
	cfg, err := loadConfigFile(file)
	if err != nil {
		t.Fatalf("the example config: %v\n%s", err, yaml.String())
	}
	if cfg.Board != "linux" || cfg.Boot != "uboot" || len(cfg.Slots) != 2 || cfg.BootEnv == "" || cfg.HealthTimeout != 2*time.Minute {
		t.Errorf("the example config: %+v", cfg)
	}
}

// TestLinuxBoard runs the real boardlinkd on a linux board whose slots
// are files and whose boot loader is GRUB, with a real grubenv: it
// answers board.info and ota.status from its boot loader, plans and
// prepares an update to slot B, sets the trial in the grubenv, stops
// cleanly and runs the reboot command; started again as GRUB's script
// would boot it (the trial slot on the command line), it runs the health
// check and commits.
func TestLinuxBoard(t *testing.T) {
	needTool(t, "grub-editenv", "grub-common")
	bin := buildAgent(t)
	f := newLinuxFiles(t)
	if out, err := exec.Command("grub-editenv", f.grubenv, "create").CombinedOutput(); err != nil {
		t.Fatalf("grub-editenv create: %v\n%s", err, out)
	}
	// Slot A holds a factory image; B is blank.
	factory := make([]byte, 200<<10)
	rand.Read(factory)
	if err := os.WriteFile(f.slotA, factory, 0o644); err != nil {
		t.Fatal(err)
	}
	pub, priv, err := image.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(f.dir, "key")
	if err := image.WriteKeyPair(keyPath, pub, priv); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(f.dir, "state")
	marker := filepath.Join(f.dir, "rebooted")
	uart := filepath.Join(f.dir, "uart.sock")
	files := filepath.Join(f.dir, "files")
	if err := os.Mkdir(files, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"--board", "linux", "--root", files, "--boot", "grub", "--boot-env", f.grubenv, "--slot", "A=" + f.slotA, "--slot", "B=" + f.slotB,
		"--cmdline", f.cmdline, "--state-dir", state, "--listen", "127.0.0.1:0", "--no-mdns", "--trust-key", keyPath + ".pub",
		"--model", "m1", "--label", "rack=9", "--reboot-command", "touch " + marker, "--serial", "unix:" + uart,
		"--health-check", `test "$BOARDLINK_SLOT" = B`}
	// The id: the host's name, or its machine id, as a first start makes it.
	wantID, err := linux.DefaultID(linux.DefaultProc, linux.DefaultMachineID)
	if err != nil {
		t.Logf("no default id on this host (%v): giving --id", err)
		wantID = "linux-test-1"
		args = append(args, "--id", wantID)
	}
	bootID := strings.TrimSpace(readFile(t, "/proc/sys/kernel/random/boot_id"))

	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	b := startBoard(t, bin, args...)
	c, err := dispatcher.Dial(ctx, b.addr(t), b.opts())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != wantID || info.Model != "m1" || info.Labels["rack"] != "9" || info.BootID != bootID {
		t.Errorf("info: id %q model %q labels %v boot %q; want %q m1 rack=9 %q", info.ID, info.Model, info.Labels, info.BootID, wantID, bootID)
	}
	if d := time.Since(info.BootedAt) - time.Duration(info.UptimeMs)*time.Millisecond; d < -2*time.Second || d > 2*time.Second {
		t.Errorf("booted at %v, up %dms: they disagree by %v", info.BootedAt, info.UptimeMs, d)
	}
	if up := uptime(t); time.Duration(info.UptimeMs)*time.Millisecond < up-5*time.Second {
		t.Errorf("uptime %dms, the kernel's %v", info.UptimeMs, up)
	}
	wantSlots := []proto.Slot{{Name: "A", Booted: true, Active: true}, {Name: "B"}}
	if !reflect.DeepEqual(info.Slots, wantSlots) {
		t.Errorf("slots %+v, want %+v", info.Slots, wantSlots)
	}
	for _, capa := range []string{proto.CapReboot, proto.CapOTA, proto.CapExec, proto.CapFile} {
		if !strings.Contains(strings.Join(info.Capabilities, " "), capa) {
			t.Errorf("capabilities %v lack %s", info.Capabilities, capa)
		}
	}
	st, err := c.OTAStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Update != nil || len(st.Slots) != 2 || !st.Slots[0].Booted || !st.Slots[0].Active || st.Slots[1].Booted || st.Slots[1].Active || st.Slots[1].Trial {
		t.Errorf("ota status %+v (update %+v)", st.Slots, st.Update)
	}

	// The same board on its serial line, which it opens itself.
	sc, err := dispatcher.Dial(ctx, "unix://"+uart, b.opts())
	if err != nil {
		t.Fatal(err)
	}
	if si, err := sc.Info(ctx); err != nil || si.ID != wantID || si.BootID != bootID {
		t.Errorf("info over the serial line: %+v, %v", si, err)
	}
	sc.Close()

	// An image for the board's model.
	payload := make([]byte, 5*(64<<10)+123)
	rand.Read(payload)
	in, img := filepath.Join(f.dir, "payload"), filepath.Join(f.dir, "2.0.0.img")
	if err := os.WriteFile(in, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := image.BuildFile(img, in, image.BuildOptions{Key: priv, Models: []string{"m1"}, Version: "2.0.0", ChunkSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	im, err := image.OpenFile(img)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	plan, err := c.OTAPlan(ctx, im, false)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Slot != "B" || plan.Version != "2.0.0" || plan.Chunks != 6 || len(plan.Need) != 6 {
		t.Errorf("plan %+v: want all 6 chunks to slot B", plan)
	}

	// The whole update up to the reboot: the reboot command only touches
	// the marker, after which boardlinkd exits, and Update, which would
	// wait for the board to come back, is called off then.
	uctx, ucancel := context.WithCancel(ctx)
	go func() {
		defer ucancel()
		select {
		case <-uctx.Done():
		case <-b.done:
		}
	}()
	_, err = c.Update(uctx, im, dispatcher.OTAOptions{})
	if uctx.Err() == nil {
		t.Fatalf("Update returned before the reboot: %v\n%s", err, b.logs.String())
	}
	if err := b.wait(t); err != nil {
		t.Fatalf("boardlinkd after the reboot command: %v (want exit status 0)\n%s", err, b.logs.String())
	}
	if got := readFile(t, f.slotB); got != string(payload) {
		t.Errorf("slot B holds %d bytes, not the payload's %d", len(got), len(payload))
	}
	if env := grubVars(t, f.grubenv); env["trial_slot"] != "B" || env["trial_booted"] != "" || env["boot_slot"] != "" {
		t.Errorf("grubenv after the activation: %v; want trial_slot=B only", env)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the reboot command did not run: %v", err)
	}
	logs := b.logs.String()
	stopped, rebooting := strings.Index(logs, `msg="boardlinkd stopped"`), strings.Index(logs, `msg="reboot: running the reboot command"`)
	if stopped < 0 || rebooting < stopped || !strings.Contains(logs, `command="/bin/sh -c touch `+marker+`"`) {
		t.Errorf("the reboot command must run after the clean stop:\n%s", logs)
	}

	// GRUB's script boots the trial once: trial_booted=1, boardlink.slot=B.
	if out, err := exec.Command("grub-editenv", f.grubenv, "set", "trial_booted=1").CombinedOutput(); err != nil {
		t.Fatalf("grub-editenv set: %v\n%s", err, out)
	}
	if err := os.WriteFile(f.cmdline, []byte("console=ttyS0,115200 root=/dev/mmcblk0p3 rootwait boardlink.slot=B\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(marker)
	b = startBoard(t, bin, args...)
	c2, err := dispatcher.Dial(ctx, b.addr(t), b.opts())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	testenv.Eventually(t, "the trial boot commits", func() bool {
		st, err := c2.OTAStatus(ctx)
		return err == nil && st.Update != nil && st.Update.Result != ""
	})
	st, err = c2.OTAStatus(ctx)
	if err != nil || st.Update.Result != proto.ResultCommitted || st.Update.Version != "2.0.0" {
		t.Fatalf("after the trial boot: %+v, %v\n%s", st.Update, err, b.logs.String())
	}
	if env := grubVars(t, f.grubenv); env["boot_slot"] != "B" || env["trial_slot"] != "" || env["trial_booted"] != "" {
		t.Errorf("grubenv after the commit: %v; want boot_slot=B, no trial", env)
	}
	info, err = c2.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []proto.Slot{{Name: "A"}, {Name: "B", Version: "2.0.0", Booted: true, Active: true}}; !reflect.DeepEqual(info.Slots, want) {
		t.Errorf("slots after the commit %+v, want %+v", info.Slots, want)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the committed trial boot rebooted")
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	if err := b.wait(t); err != nil {
		t.Errorf("SIGTERM: %v\n%s", err, b.logs.String())
	}
}

// TestLinuxRebootCommandFails: system.reboot stops the agent cleanly and
// runs the reboot command; when that fails, boardlinkd says why and exits
// with status 1.
func TestLinuxRebootCommandFails(t *testing.T) {
	needTool(t, "grub-editenv", "grub-common")
	bin := buildAgent(t)
	f := newLinuxFiles(t)
	if out, err := exec.Command("grub-editenv", f.grubenv, "create").CombinedOutput(); err != nil {
		t.Fatalf("grub-editenv create: %v\n%s", err, out)
	}
	b := startBoard(t, bin, "--board", "linux", "--boot", "grub", "--boot-env", f.grubenv, "--slot", "A="+f.slotA, "--slot", "B="+f.slotB,
		"--cmdline", f.cmdline, "--state-dir", filepath.Join(f.dir, "state"), "--listen", "127.0.0.1:0", "--model", "m1", "--id", "lin-2",
		"--reboot-command", "echo reboot: not permitted >&2; exit 3")
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	c, err := dispatcher.Dial(ctx, b.addr(t), b.opts())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	err = b.wait(t)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1\n%s", err, b.logs.String())
	}
	if logs := b.logs.String(); !strings.Contains(logs, "boardlinkd: linux: reboot: /bin/sh -c echo reboot: not permitted >&2; exit 3: exit status 3: reboot: not permitted") ||
		!strings.Contains(logs, `msg="boardlinkd stopped"`) {
		t.Errorf("logs:\n%s", logs)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// grubVars lists a grubenv with grub-editenv.
func grubVars(t *testing.T, file string) map[string]string {
	t.Helper()
	out, err := exec.Command("grub-editenv", file, "list").Output()
	if err != nil {
		t.Fatalf("grub-editenv list: %v", err)
	}
	vars := map[string]string{}
	for line := range strings.Lines(string(bytes.TrimSpace(out))) {
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
		vars[k] = v
	}
	return vars
}

// uptime is the kernel's.
func uptime(t *testing.T) time.Duration {
	t.Helper()
	f := strings.Fields(readFile(t, "/proc/uptime"))
	sec, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(sec * float64(time.Second))
}
