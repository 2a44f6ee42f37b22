package main

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

// target is an architecture the packages are built for.
type target struct {
	deb    string // Debian's name of it
	goarch string
	goarm  string
}

// targets are the boards' architectures. armhf is Debian's: ARMv7 with
// hardware floating point (GOARM=7), as `just cross` builds it; a
// Raspberry Pi 1 or Zero (ARMv6) needs -armhf-goarm 6.
var targets = []target{
	{deb: "amd64", goarch: "amd64"},
	{deb: "arm64", goarch: "arm64"},
	{deb: "armhf", goarch: "arm", goarm: "7"},
	{deb: "riscv64", goarch: "riscv64"},
}

func targetNames() []string {
	var names []string
	for _, t := range targets {
		names = append(names, t.deb)
	}
	return names
}

// The packaged files (files/), and where each goes.
//
//go:embed files
var packaged embed.FS

// result is what build made for one target.
type result struct {
	target             target
	packages           []string // paths of the .deb files
	agentSize, cliSize int64    // bytes of the stripped binaries
}

const module = "github.com/boardlink/boardlink"

// build builds the binaries and the packages of every target into
// o.out, and says what it made.
func build(ctx context.Context, o options) ([]result, error) {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	work, err := os.MkdirTemp("", "boardlink-packaging-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	// nfpm reads its sources from files.
	src := filepath.Join(work, "files")
	if err := os.CopyFS(work, packaged); err != nil {
		return nil, fmt.Errorf("packaged files: %w", err)
	}
	var results []result
	for _, t := range o.targets {
		r := result{target: t}
		dir := filepath.Join(work, t.deb)
		agent, cli := filepath.Join(dir, "boardlinkd"), filepath.Join(dir, "boardlink")
		if r.agentSize, err = goBuild(ctx, t, o.version, module+"/cmd/boardlinkd", agent); err != nil {
			return nil, err
		}
		if r.cliSize, err = goBuild(ctx, t, o.version, module+"/cmd/boardlink", cli); err != nil {
			return nil, err
		}
		for _, info := range []*nfpm.Info{agentPackage(t, o.version, agent, src), cliPackage(t, o.version, cli, src)} {
			info.Maintainer = o.maintainer
			path, err := writeDeb(o.out, info)
			if err != nil {
				return nil, err
			}
			r.packages = append(r.packages, path)
		}
		results = append(results, r)
	}
	return results, nil
}

// goBuild builds pkg for t as a board runs it: static (no cgo), stripped
// of its symbol table and DWARF (-s -w), without the builder's paths, and
// with version as its --version. It returns the binary's size.
func goBuild(ctx context.Context, t target, ver, pkg, out string) (int64, error) {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath",
		"-ldflags", "-s -w -X "+module+"/internal/version.Version="+ver, "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+t.goarch, "GOARM="+t.goarm)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("go build %s for %s: %w\n%s", pkg, t.deb, err, strings.TrimSpace(stderr.String()))
	}
	fi, err := os.Stat(out)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

const homepage = "https://github.com/boardlink/boardlink"

// agentPackage is boardlinkd's package: the agent, its unit, its config,
// its state dir, and the USB gadget serial port's unit and script.
func agentPackage(t target, ver, bin, src string) *nfpm.Info {
	file := func(source, dst string, mode os.FileMode) *files.Content {
		return &files.Content{Source: source, Destination: dst, FileInfo: &files.ContentFileInfo{Mode: mode}}
	}
	in := func(name string) string { return filepath.Join(src, name) }
	return &nfpm.Info{
		Name: "boardlinkd", Arch: t.deb, Version: ver, Section: "admin", Priority: "optional", Homepage: homepage,
		Description: `boardlink agent: a structured device API for a lab's board
boardlinkd runs on a board and serves the boardlink protocol over
WebSocket (TLS with the board's own key) and a framed serial line:
commands with real exit codes and separate output, files both ways,
downloads, reboot, and signed A/B updates on a board with slots. Hosts
drive it with boardlink (package boardlink).`,
		Overridables: nfpm.Overridables{
			Contents: files.Contents{
				file(bin, "/usr/sbin/boardlinkd", 0o755),
				file(in("boardlinkd.service"), "/usr/lib/systemd/system/boardlinkd.service", 0o644),
				{Source: in("boardlinkd.yaml"), Destination: "/etc/boardlink/boardlinkd.yaml", Type: files.TypeConfig,
					FileInfo: &files.ContentFileInfo{Mode: 0o644}},
				// Only root reads the state: the board's key, the hosts it
				// trusts, its update state.
				{Destination: "/var/lib/boardlink", Type: files.TypeDir, FileInfo: &files.ContentFileInfo{Mode: 0o700}},
				file(in("usb-gadget"), "/usr/lib/boardlink/usb-gadget", 0o755),
				file(in("boardlink-usb-gadget.service"), "/usr/lib/systemd/system/boardlink-usb-gadget.service", 0o644),
			},
			Scripts: nfpm.Scripts{PostInstall: in("postinst"), PreRemove: in("prerm"), PostRemove: in("postrm")},
		},
	}
}

// cliPackage is boardlink's package: the host's CLI, and the lab
// service's unit (not enabled) and config.
func cliPackage(t target, ver, bin, src string) *nfpm.Info {
	return &nfpm.Info{
		Name: "boardlink", Arch: t.deb, Version: ver, Section: "devel", Priority: "optional", Homepage: homepage,
		Description: `boardlink: drive lab boards that run boardlinkd
boardlink finds boards (mDNS and USB serial), runs commands on them with
real exit codes, moves files, reboots them, builds signed images and
rolls updates out across a lab. A board on a USB serial port is opened
as a member of the dialout group.`,
		Overridables: nfpm.Overridables{
			Contents: files.Contents{
				{Source: bin, Destination: "/usr/bin/boardlink", FileInfo: &files.ContentFileInfo{Mode: 0o755}},
				{Source: filepath.Join(src, "boardlink-serve.service"), Destination: "/usr/lib/systemd/system/boardlink-serve.service",
					FileInfo: &files.ContentFileInfo{Mode: 0o644}},
				// Its users' token hashes and boards: root's alone.
				{Source: filepath.Join(src, "serve.yaml"), Destination: "/etc/boardlink/serve.yaml", Type: files.TypeConfig,
					FileInfo: &files.ContentFileInfo{Mode: 0o600}},
			},
		},
	}
}

// writeDeb writes info's package into dir under Debian's name for it.
func writeDeb(dir string, info *nfpm.Info) (string, error) {
	info = nfpm.WithDefaults(info)
	path := filepath.Join(dir, deb.Default.ConventionalFileName(info))
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if err := deb.Default.Package(info, f); err != nil {
		f.Close()
		return "", fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return path, nil
}
