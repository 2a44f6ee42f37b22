package bootstrap

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrNoAgent: no agent binary for the board's architecture was found.
var ErrNoAgent = errors.New("bootstrap: no agent binary for the board")

// arches maps what `uname -m` says to Go's GOARCH and the ELF machine.
var arches = map[string]struct {
	goarch  string
	machine elf.Machine
}{
	"x86_64":  {"amd64", elf.EM_X86_64},
	"amd64":   {"amd64", elf.EM_X86_64},
	"aarch64": {"arm64", elf.EM_AARCH64},
	"arm64":   {"arm64", elf.EM_AARCH64},
	"armv6l":  {"arm", elf.EM_ARM},
	"armv7l":  {"arm", elf.EM_ARM},
	"armv8l":  {"arm", elf.EM_ARM},
	"i386":    {"386", elf.EM_386},
	"i486":    {"386", elf.EM_386},
	"i586":    {"386", elf.EM_386},
	"i686":    {"386", elf.EM_386},
	"riscv64": {"riscv64", elf.EM_RISCV},
	"ppc64le": {"ppc64le", elf.EM_PPC64},
	"s390x":   {"s390x", elf.EM_S390},
	"mips":    {"mips", elf.EM_MIPS},
	"mipsel":  {"mipsle", elf.EM_MIPS},
}

// GoArch is the GOARCH of a board whose `uname -m` says machine.
func GoArch(machine string) (string, bool) {
	a, ok := arches[machine]
	return a.goarch, ok
}

// AgentDirs are the directories FindAgent looks in, in order: beside
// the running binary, $XDG_DATA_HOME/boardlink/agents (default
// ~/.local/share), /usr/lib/boardlink/agents.
func AgentDirs() []string {
	var dirs []string
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(exe))
	}
	data := os.Getenv("XDG_DATA_HOME")
	if data == "" {
		if home, err := os.UserHomeDir(); err == nil {
			data = filepath.Join(home, ".local", "share")
		}
	}
	if data != "" {
		dirs = append(dirs, filepath.Join(data, "boardlink", "agents"))
	}
	return append(dirs, "/usr/lib/boardlink/agents")
}

// FindAgent returns the static agent for a board whose `uname -m` says
// machine: boardlinkd-linux-GOARCH (or -MACHINE) in the first of dirs
// that has it. The error names every place it looked.
func FindAgent(machine string, dirs []string) (string, error) {
	a, ok := arches[machine]
	if !ok {
		return "", fmt.Errorf("%w: the board's architecture %q is not one boardlink builds for (give --agent)", ErrNoAgent, machine)
	}
	names := []string{"boardlinkd-linux-" + a.goarch}
	if machine != a.goarch {
		names = append(names, "boardlinkd-linux-"+machine)
	}
	var tried []string
	for _, d := range dirs {
		for _, n := range names {
			p := filepath.Join(d, n)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				return p, nil
			}
			tried = append(tried, p)
		}
	}
	return "", fmt.Errorf("%w: the board is %s and none of these exists: %s (give --agent FILE)",
		ErrNoAgent, machine, strings.Join(tried, ", "))
}

// checkAgent makes sure path is a Linux executable for machine, so that
// a wrong --agent fails before it is sent.
func checkAgent(path, machine string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %s is not an ELF executable: %w", ErrNoAgent, path, err)
	}
	defer f.Close()
	a, ok := arches[machine]
	if ok && f.Machine != a.machine {
		return fmt.Errorf("%w: %s is built for %v, the board is %s", ErrNoAgent, path, f.Machine, machine)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%w: %s is not an executable (%v)", ErrNoAgent, path, f.Type)
	}
	return nil
}
