package deptest

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/boardlink/boardlink"

// pkg is what go list says of one package.
type pkg struct {
	ImportPath string
	Imports    []string
}

// graph is the module's import graph: each package of the module and the
// packages of the module it imports directly (tests excluded).
func graph(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g := map[string][]string{}
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		var ours []string
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, module+"/") {
				ours = append(ours, strings.TrimPrefix(imp, module+"/"))
			}
		}
		g[strings.TrimPrefix(p.ImportPath, module+"/")] = ours
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	return g
}

// reach returns every package from reaches, not walking into the packages
// in through.
func reach(g map[string][]string, from string, through ...string) map[string]bool {
	seen := map[string]bool{}
	var walk func(string)
	walk = func(p string) {
		for _, q := range g[p] {
			if seen[q] || slices.Contains(through, q) {
				continue
			}
			seen[q] = true
			walk(q)
		}
	}
	walk(from)
	return seen
}

// under reports whether p is dir or inside it.
func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

func TestLayering(t *testing.T) {
	g := graph(t)
	rules := []struct {
		from    string
		never   []string // packages (and what is under them) never reached
		only    []string // if set, the only packages of ours reachable
		through []string // allowed detours, not walked into
		why     string
	}{
		{from: "proto", only: []string{}, why: "proto is shared by both ends and imports nothing of ours"},
		{from: "auth", only: []string{"internal/atomicfile"}, why: "auth is the cryptography both ends share"},
		{from: "board", never: []string{"agent", "transport", "dispatcher"}, why: "a board knows nothing of who drives it"},
		{from: "transport", never: []string{"agent", "dispatcher", "board"}, why: "the links carry messages for either end"},
		{from: "discovery", never: []string{"agent", "dispatcher"}, why: "discovery only announces and listens"},
		{from: "dispatcher", never: []string{"agent", "board"}, why: "the host side reaches a board only over the wire"},
		{from: "dispatcher", never: []string{"dispatcher/store", "dispatcher/service"},
			why: "a client of the dispatcher must not link the store's SQL drivers or the service (their init runs at every start of a CLI call)"},
		{from: "agent", never: []string{"dispatcher", "cmd"}, why: "the board side never drives another board"},
		{from: "cmd/boardlinkd", never: []string{"dispatcher"}, why: "the agent binary carries no host side"},
		{from: "bench/heldexec/client", only: []string{"bench/heldexec"},
			why: "the held path's client measures the floor of a fresh process (docs/benchmarks.md): nothing of ours but its socket's name"},
		// The demo runs its boards in this process (internal/simlab), so
		// the CLI links the agent through it; nothing else of the CLI may.
		{from: "cmd/boardlink", never: []string{"agent", "board/linux"}, through: []string{"internal/simlab"},
			why: "the CLI drives boards over the wire; only the demo's in-process lab links an agent"},
	}
	for _, r := range rules {
		if _, ok := g[r.from]; !ok {
			t.Errorf("no package %s", r.from)
			continue
		}
		for p := range reach(g, r.from, r.through...) {
			for _, n := range r.never {
				if under(p, n) {
					t.Errorf("%s reaches %s: %s", r.from, p, r.why)
				}
			}
			if r.only != nil && !slices.ContainsFunc(r.only, func(o string) bool { return under(p, o) }) {
				t.Errorf("%s reaches %s: %s", r.from, p, r.why)
			}
		}
	}
	// The one detour is real: the demo's lab links the agent.
	if !reach(g, "internal/simlab")["agent/ota"] {
		t.Error("internal/simlab no longer links agent/ota: drop the detour from the cmd/boardlink rule")
	}
}

// heavy are modules whose package init costs a fresh process milliseconds
// (docs/benchmarks.md): SQL drivers, metrics, a browser driver.
var heavy = []string{"modernc.org/sqlite", "github.com/jackc/pgx", "github.com/prometheus/", "github.com/chromedp/", "database/sql"}

// TestLightClient keeps the heavy modules out of what every command of the
// CLI that talks to a board links: a binary runs the init of each package
// it links, whichever verb runs.
func TestLightClient(t *testing.T) {
	pkgs := []string{"dispatcher", "transport/...", "auth", "proto", "discovery"}
	args := []string{"list", "-deps"}
	for _, p := range pkgs {
		args = append(args, module+"/"+p)
	}
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for dep := range strings.FieldsSeq(string(out)) {
		for _, h := range heavy {
			if strings.HasPrefix(dep, h) {
				t.Errorf("%v link %s: keep it out of the client's path (a fresh CLI call pays its init)", pkgs, dep)
			}
		}
	}
}
