package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardlink/boardlink/internal/testenv"
)

// hangGuard ends a test that hangs; no test waits on it.
const hangGuard = 5 * time.Minute

// TestPackages builds the amd64 packages as `go run ./packaging` does and
// checks them as dpkg sees them: control fields, the files and their
// modes, the conffile, the maintainer scripts; the binaries static,
// stripped and built as a board runs them; the units with
// systemd-analyze verify; and the packaged agent started on the packaged
// config, as the unit starts it, saying READY=1.
func TestPackages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and the packages")
	}
	for tool, pkg := range map[string]string{"dpkg-deb": "dpkg", "systemd-analyze": "systemd", "sh": "dash"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.SkipOrFail(t, "%s not found (Debian package %s)", tool, pkg)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	out := t.TempDir()
	const ver, maint = "1.2.3", "Lab <lab@example.org>"
	results, err := build(ctx, options{out: out, targets: []target{targets[0]}, version: ver, maintainer: maint})
	if err != nil {
		t.Fatal(err)
	}
	agentDeb, cliDeb := filepath.Join(out, "boardlinkd_1.2.3_amd64.deb"), filepath.Join(out, "boardlink_1.2.3_amd64.deb")
	if len(results) != 1 || !slices.Equal(results[0].packages, []string{agentDeb, cliDeb}) {
		t.Fatalf("built %+v, want %s and %s", results, agentDeb, cliDeb)
	}

	for deb, want := range map[string]string{
		agentDeb: "boardlinkd 1.2.3 amd64 " + maint + " admin",
		cliDeb:   "boardlink 1.2.3 amd64 " + maint + " devel",
	} {
		fields := runCmd(t, "dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Maintainer", "Section")
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(fields), "\n") {
			_, v, _ := strings.Cut(line, ": ")
			got = append(got, v)
		}
		if strings.Join(got, " ") != want {
			t.Errorf("%s: control fields\n%s\nwant %s", filepath.Base(deb), fields, want)
		}
	}

	// The files as dpkg installs them: type, mode, owner.
	checkTree(t, agentDeb, map[string]entry{
		"./usr/sbin/boardlinkd":                                 {tar.TypeReg, 0o755},
		"./usr/lib/systemd/system/boardlinkd.service":           {tar.TypeReg, 0o644},
		"./usr/lib/systemd/system/boardlink-usb-gadget.service": {tar.TypeReg, 0o644},
		"./usr/lib/boardlink/usb-gadget":                        {tar.TypeReg, 0o755},
		"./etc/boardlink/boardlinkd.yaml":                       {tar.TypeReg, 0o644},
		"./var/lib/boardlink/":                                  {tar.TypeDir, 0o700},
	})
	checkTree(t, cliDeb, map[string]entry{
		"./usr/bin/boardlink":                              {tar.TypeReg, 0o755},
		"./usr/lib/systemd/system/boardlink-serve.service": {tar.TypeReg, 0o644},
		"./etc/boardlink/serve.yaml":                       {tar.TypeReg, 0o600},
	})

	// The conffile, and maintainer scripts that a shell takes.
	control := t.TempDir()
	runCmd(t, "dpkg-deb", "-e", agentDeb, control)
	if got := readFile(t, filepath.Join(control, "conffiles")); got != "/etc/boardlink/boardlinkd.yaml\n" {
		t.Errorf("conffiles %q, want the config alone", got)
	}
	for _, script := range []string{"postinst", "prerm", "postrm"} {
		path := filepath.Join(control, script)
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v, %v; want mode 0755", script, fi, err)
			continue
		}
		runCmd(t, "sh", "-n", path)
	}

	root, cliRoot := t.TempDir(), t.TempDir()
	runCmd(t, "dpkg-deb", "-x", agentDeb, root)
	runCmd(t, "dpkg-deb", "-x", cliDeb, cliRoot)
	agent, cli := filepath.Join(root, "usr", "sbin", "boardlinkd"), filepath.Join(cliRoot, "usr", "bin", "boardlink")
	for _, bin := range []string{agent, cli} {
		checkBinary(t, bin)
	}

	verifyUnits(t, root, "boardlinkd.service", "boardlink-usb-gadget.service")
	verifyUnits(t, cliRoot, "boardlink-serve.service")
	if runtime.GOARCH == "amd64" {
		if got := runCmd(t, cli, "--version"); !strings.Contains(got, ver) {
			t.Errorf("boardlink --version: %q, want %s", got, ver)
		}
		startAgent(ctx, t, root, agent)
	} else {
		t.Logf("not starting the amd64 agent on %s", runtime.GOARCH)
	}
}

// runCmd runs a command and returns its stdout; it fails the test if the
// command fails.
func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// entry is a file of a package's data: its tar type and its mode.
type entry struct {
	typ  byte
	mode int64
}

// checkTree reads deb's data as dpkg unpacks it and checks that every
// file is root's, that want's files are there with their type and mode,
// and that every other entry is a directory leading to them.
func checkTree(t *testing.T, deb string, want map[string]entry) {
	t.Helper()
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", deb)
	data, err := cmd.Output()
	if err != nil {
		t.Fatalf("dpkg-deb --fsys-tarfile %s: %v", deb, err)
	}
	tr := tar.NewReader(bytes.NewReader(data))
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || (h.Uname != "root" && h.Uname != "") {
			t.Errorf("%s: %s owned by %d:%d (%s), want root", filepath.Base(deb), h.Name, h.Uid, h.Gid, h.Uname)
		}
		w, ok := want[h.Name]
		switch {
		case ok && (h.Typeflag != w.typ || h.Mode&0o7777 != w.mode):
			t.Errorf("%s: %s type %c mode %#o, want %c %#o", filepath.Base(deb), h.Name, h.Typeflag, h.Mode&0o7777, w.typ, w.mode)
		case !ok && (h.Typeflag != tar.TypeDir || h.Mode&0o7777 != 0o755):
			t.Errorf("%s: unexpected %s (type %c mode %#o)", filepath.Base(deb), h.Name, h.Typeflag, h.Mode&0o7777)
		}
		seen[h.Name] = true
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("%s lacks %s", filepath.Base(deb), name)
		}
	}
}

// checkBinary checks that bin is what a board needs: static (no program
// interpreter, no shared library), stripped (no symbol table, no DWARF),
// and built without cgo and without the builder's paths.
func checkBinary(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		t.Errorf("%s: machine %v", bin, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s: has a %v segment: not static", bin, p.Type)
		}
	}
	for _, s := range f.Sections {
		if s.Name == ".symtab" || strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_") {
			t.Errorf("%s: has section %s: not stripped", bin, s.Name)
		}
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	// -trimpath leaves -ldflags out of the build info: the sections above
	// show -s -w, and the versions the binaries say show -X.
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("%s built with %v", bin, settings)
	}
}

// verifyUnits runs systemd-analyze verify on the packaged units, their
// programs taken from root, where dpkg-deb put them.
func verifyUnits(t *testing.T, root string, names ...string) {
	t.Helper()
	units := t.TempDir()
	var paths []string
	for _, name := range names {
		unit := readFile(t, filepath.Join(root, "usr", "lib", "systemd", "system", name))
		for _, prog := range []string{"/usr/sbin/boardlinkd", "/usr/lib/boardlink/usb-gadget", "/usr/bin/boardlink"} {
			unit = strings.ReplaceAll(unit, "="+prog+" ", "="+filepath.Join(root, prog)+" ")
		}
		path := filepath.Join(units, name)
		if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, path)
	}
	cmd := exec.Command("systemd-analyze", append([]string{"verify", "--man=no"}, paths...)...)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// startAgent starts the packaged agent as the unit does, on the packaged
// config (with a state dir and an address of the test's own, and an id
// and a model where this host may have none), under a notification
// socket: it must say READY=1, and stop cleanly on SIGTERM.
func startAgent(ctx context.Context, t *testing.T, root, agent string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cmd := exec.Command(agent, "--config", filepath.Join(root, "etc", "boardlink", "boardlinkd.yaml"),
		"--state-dir", filepath.Join(t.TempDir(), "state"), "--listen", "127.0.0.1:0", "--no-mdns",
		"--id", "pkg-1", "--model", "pkg-model", "--reboot-command", "true")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	var logs testenv.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("boardlinkd's log:\n%s", logs.String())
		}
	}()
	ready := make(chan string, 1)
	go func() {
		buf := make([]byte, 256)
		if n, err := pc.Read(buf); err == nil {
			ready <- string(buf[:n])
		}
	}()
	select {
	case msg := <-ready:
		if msg != "READY=1" {
			t.Errorf("notified %q, want READY=1", msg)
		}
	case err := <-done:
		done <- err
		t.Fatalf("boardlinkd exited on the packaged config: %v", err)
	case <-ctx.Done():
		t.Fatal("no READY=1")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Errorf("boardlinkd on SIGTERM: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("boardlinkd did not stop on SIGTERM")
	}
	// It ran on the packaged settings (pairing on, files under /tmp), and
	// is the version the package says.
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	var started string
	for sc.Scan() {
		if strings.Contains(sc.Text(), `msg="boardlinkd started"`) {
			started = sc.Text()
		}
	}
	if !strings.Contains(started, "version=1.2.3 ") || !strings.Contains(started, "roots=[/tmp]") || !strings.Contains(started, `ota="off: no A/B slots"`) ||
		!strings.Contains(logs.String(), "pairing=true") {
		t.Errorf("not the packaged settings:\n%s", logs.String())
	}
}

func TestNewOptions(t *testing.T) {
	o, err := newOptions("dist", "arm64,armhf", "v1.2.3", "7")
	if err != nil || len(o.targets) != 2 || o.targets[0].goarch != "arm64" || o.targets[1] != (target{deb: "armhf", goarch: "arm", goarm: "7"}) {
		t.Errorf("newOptions: %+v, %v", o, err)
	}
	if o, err := newOptions("dist", "armhf", "1", "6"); err != nil || o.targets[0].goarm != "6" || targets[2].goarm != "7" {
		t.Errorf("a GOARM=6 armhf: %+v, %v (targets %+v)", o, err, targets)
	}
	for _, bad := range []struct{ out, arches, ver, goarm, want string }{
		{"", "amd64", "1", "7", "-o: an output directory is required"},
		{"d", "i386", "1", "7", `-arch "i386": want some of amd64,arm64,armhf,riscv64`},
		{"d", "amd64,amd64", "1", "7", "-arch amd64: given twice"},
		{"d", "amd64", "1.0 beta", "7", `-version "1.0 beta"`},
		{"d", "amd64", "../1", "7", `-version "../1"`},
		{"d", "armhf", "1", "5", `-armhf-goarm "5": want 6 or 7`},
	} {
		if _, err := newOptions(bad.out, bad.arches, bad.ver, bad.goarm); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("newOptions(%q, %q, %q, %q) = %v, want %q", bad.out, bad.arches, bad.ver, bad.goarm, err, bad.want)
		}
	}
}

// TestUSBGadgetScript runs the packaged usb-gadget script's start on a
// configfs and a UDC class in directories: it makes the gadget with one
// ACM function and binds it to the controller, and a second start leaves
// a bound gadget alone. (A real configfs makes the attribute files and
// removes them with rmdir, so stop is left to a board.)
func TestUSBGadgetScript(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		testenv.SkipOrFail(t, "sh not found (Debian package dash)")
	}
	configfs, udc := t.TempDir(), t.TempDir()
	if err := os.Mkdir(filepath.Join(configfs, "usb_gadget"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(udc, "fe980000.usb"), 0o755); err != nil {
		t.Fatal(err)
	}
	start := func() {
		cmd := exec.Command("sh", "files/usb-gadget", "start")
		cmd.Env = append(os.Environ(), "BOARDLINK_CONFIGFS="+configfs, "BOARDLINK_UDC_CLASS="+udc)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("usb-gadget start: %v\n%s", err, out)
		}
	}
	start()
	g := filepath.Join(configfs, "usb_gadget", "boardlink")
	for file, want := range map[string]string{
		"UDC": "fe980000.usb\n", "idVendor": "0x1d6b\n", "idProduct": "0x0104\n",
		"strings/0x409/product": "boardlink board\n", "configs/c.1/MaxPower": "250\n",
	} {
		if got := readFile(t, filepath.Join(g, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if dst, err := os.Readlink(filepath.Join(g, "configs", "c.1", "acm.usb0")); err != nil || dst != filepath.Join(g, "functions", "acm.usb0") {
		t.Errorf("the ACM function in the configuration: %q, %v", dst, err)
	}
	// Bound already: the second start writes nothing.
	if err := os.WriteFile(filepath.Join(g, "idVendor"), []byte("kept\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	start()
	if got := readFile(t, filepath.Join(g, "idVendor")); got != "kept\n" {
		t.Errorf("a second start rewrote the bound gadget: idVendor %q", got)
	}
	cmd := exec.Command("sh", "files/usb-gadget", "bogus")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "usage:") {
		t.Errorf("usb-gadget bogus: %v, %s", err, out)
	}
}

// TestMaintainerScripts runs the packaged maintainer scripts as dpkg
// would, with deb-systemd-helper, deb-systemd-invoke and systemctl
// replaced by stubs that record their calls, on a system running
// systemd (a tmpfs /run holding /run/systemd/system, in a mount
// namespace of the test's own) and on one without: what each install,
// upgrade, removal and purge asks of systemd.
func TestMaintainerScripts(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		testenv.SkipOrFail(t, "unshare not found (Debian package util-linux)")
	}
	if err := exec.Command("unshare", "--mount", "true").Run(); err != nil {
		testenv.SkipOrFail(t, "cannot make a mount namespace (root or user namespaces needed): %v", err)
	}
	stubs := t.TempDir()
	for _, tool := range []string{"deb-systemd-helper", "deb-systemd-invoke", "systemctl"} {
		// was-enabled answers yes: a first install, or an enabled unit.
		stub := "#!/bin/sh\necho \"" + tool + " $*\" >>\"$STUB_LOG\"\n"
		if err := os.WriteFile(filepath.Join(stubs, tool), []byte(stub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const (
		agent, gadget = "boardlinkd.service", "boardlink-usb-gadget.service"
		helper        = "deb-systemd-helper "
		reload        = "systemctl --system daemon-reload"
	)
	enable := []string{helper + "unmask " + agent + " " + gadget, helper + "--quiet was-enabled " + agent,
		helper + "enable " + agent, helper + "update-state " + gadget}
	purgeRoot := t.TempDir()
	tests := []struct {
		name    string
		systemd bool
		env     []string
		args    []string
		want    []string
	}{
		{"first install", true, nil, []string{"postinst", "configure", ""},
			append(slices.Clone(enable), reload, "deb-systemd-invoke start "+agent)},
		{"upgrade", true, nil, []string{"postinst", "configure", "0.9.0"},
			append(slices.Clone(enable), reload, "deb-systemd-invoke restart "+agent)},
		{"install without systemd", false, nil, []string{"postinst", "configure", ""}, enable},
		{"install into another root", true, []string{"DPKG_ROOT=" + purgeRoot}, []string{"postinst", "configure", ""}, enable},
		{"triggered", true, nil, []string{"postinst", "triggered", "x"}, nil},
		{"prerm on removal", true, nil, []string{"prerm", "remove"}, []string{"deb-systemd-invoke stop " + agent + " " + gadget}},
		{"prerm on upgrade", true, nil, []string{"prerm", "upgrade", "1.2.3"}, nil},
		{"prerm without systemd", false, nil, []string{"prerm", "remove"}, nil},
		{"postrm on removal", true, nil, []string{"postrm", "remove"}, []string{reload, helper + "mask " + agent + " " + gadget}},
		{"postrm on upgrade", true, nil, []string{"postrm", "upgrade", "1.2.3"}, nil},
		{"purge", false, []string{"DPKG_ROOT=" + purgeRoot}, []string{"postrm", "purge"},
			[]string{helper + "purge " + agent + " " + gadget, helper + "unmask " + agent + " " + gadget}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.MkdirAll(filepath.Join(purgeRoot, "var", "lib", "boardlink", "auth"), 0o700); err != nil {
				t.Fatal(err)
			}
			log := filepath.Join(t.TempDir(), "calls")
			script := filepath.Join("files", tt.args[0])
			// /run of the test's own: with systemd/system in it, or empty.
			setup := "mount -t tmpfs tmpfs /run && "
			if tt.systemd {
				setup += "mkdir -p /run/systemd/system && "
			}
			cmd := exec.Command("unshare", append([]string{"--mount", "sh", "-c", setup + `exec sh "$@"`, "sh", script}, tt.args[1:]...)...)
			cmd.Env = append(os.Environ(), "PATH="+stubs+":/usr/sbin:/usr/bin:/sbin:/bin", "STUB_LOG="+log)
			cmd.Env = append(cmd.Env, tt.env...)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", strings.Join(tt.args, " "), err, out)
			}
			var calls []string
			if b, err := os.ReadFile(log); err == nil {
				calls = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
			}
			if !slices.Equal(calls, tt.want) {
				t.Errorf("%s called\n  %s\nwant\n  %s", strings.Join(tt.args, " "), strings.Join(calls, "\n  "), strings.Join(tt.want, "\n  "))
			}
			_, err := os.Stat(filepath.Join(purgeRoot, "var", "lib", "boardlink"))
			if purged := tt.args[0] == "postrm" && tt.args[1] == "purge"; purged != os.IsNotExist(err) {
				t.Errorf("the state dir after %s: %v", strings.Join(tt.args, " "), err)
			}
		})
	}
}
