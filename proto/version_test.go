package proto

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// methodConstants reads every Method* constant declared in this package's
// sources, so a method added without its version fails the test below.
func methodConstants(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	consts := map[string]string{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			for i, name := range vs.Names {
				if !strings.HasPrefix(name.Name, "Method") || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Fatalf("%s is not a string literal", name.Name)
				}
				consts[name.Name], _ = strconv.Unquote(lit.Value)
			}
			return true
		})
	}
	if len(consts) == 0 {
		t.Fatal("no Method constants found")
	}
	return consts
}

func TestEveryMethodHasAVersion(t *testing.T) {
	consts := methodConstants(t)
	declared := map[string]bool{}
	for name, method := range consts {
		declared[method] = true
		if v, ok := MethodVersion(method); !ok || v < MinVersion || v > Version {
			t.Errorf("%s (%q): version %d, %v; list it in the History entry that added it", name, method, v, ok)
		}
	}
	seen := map[string]int{}
	for _, c := range History {
		for _, m := range c.Methods {
			if prev, dup := seen[m]; dup {
				t.Errorf("%s is listed by versions %d and %d", m, prev, c.Version)
			}
			seen[m] = c.Version
			if !declared[m] {
				t.Errorf("version %d lists %q, which is no Method constant", c.Version, m)
			}
		}
	}
}

func TestCheckMethodVersion(t *testing.T) {
	tests := []struct {
		method  string
		version int
		refused string
	}{
		{MethodExecStart, 1, ""},
		{MethodFileStat, 1, "file.stat needs protocol 2; this session speaks 1"},
		{MethodFileStat, 2, ""},
		{MethodOTAStatus, 1, "ota.status needs protocol 3; this session speaks 1"},
		{MethodOTAStatus, 2, "ota.status needs protocol 3; this session speaks 2"},
		{MethodOTAStatus, Version, ""},
		{MethodAuth, 3, "session.auth needs protocol 4; this session speaks 3"},
		{"no.such", 1, ""}, // its handler answers for it
	}
	for _, tc := range tests {
		err := CheckMethodVersion(tc.method, tc.version)
		switch {
		case tc.refused == "" && err != nil:
			t.Errorf("%s at %d: %v", tc.method, tc.version, err)
		case tc.refused != "" && (err == nil || err.Reason() != ReasonMethodNotFound || err.Code != CodeMethodNotFound || err.Message != tc.refused):
			t.Errorf("%s at %d: %v, want method_not_found %q", tc.method, tc.version, err, tc.refused)
		}
	}
}
