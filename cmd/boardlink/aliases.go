package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/dispatcher"
)

// boardsFile is ~/.config/boardlink/boards.yaml: names for boards, as
// ssh's config has for hosts, each with its address and, if it needs
// them, its token file and its key's fingerprint; a token file for every
// board of the file (a lab's) that names none of its own.
//
//	token_file: ~/.config/boardlink/lab.token
//	boards:
//	  bench1:
//	    address: 10.0.0.5
//	    fingerprint: SHA256:...
//	  qemu:
//	    address: unix:///tmp/qemu-serial.sock
//	    token_file: ~/.config/boardlink/qemu.token
type boardsFile struct {
	path      string
	tokenFile string
	boards    map[string]boardAlias
}

// boardAlias is one board of the file.
type boardAlias struct {
	name, address, tokenFile string
	fingerprint              auth.Fingerprint
}

// The keys the file knows.
var (
	boardsFileKeys = []string{"boards", "token_file"}
	boardAliasKeys = []string{"address", "fingerprint", "token_file"}
)

// defaultBoardsFile is $XDG_CONFIG_HOME/boardlink/boards.yaml.
func defaultBoardsFile() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "boardlink", "boards.yaml"), nil
}

// loadBoardsFile reads path; a missing file is an empty one. Its errors
// name the line and the key, never a Go type.
func loadBoardsFile(path string) (*boardsFile, error) {
	f := &boardsFile{path: path, boards: map[string]boardAlias{}}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return f, nil // empty
	}
	err = eachKey(doc.Content[0], "", boardsFileKeys, func(key string, v *yaml.Node) error {
		switch key {
		case "token_file":
			return f.pathValue(v, key, &f.tokenFile)
		default: // boards
			return eachEntry(v, "boards", func(name string, b *yaml.Node) error {
				return f.addBoard(name, b)
			})
		}
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// addBoard reads the entry of board name.
func (f *boardsFile) addBoard(name string, n *yaml.Node) error {
	a := boardAlias{name: name}
	if _, err := dispatcher.ParseAddress(name); !errors.Is(err, dispatcher.ErrNeedsDiscovery) {
		return fmt.Errorf("line %d: boards: %q: a name is one word of letters, digits, '-' and '_' (it stands where a board id does)", n.Line, name)
	}
	err := eachKey(n, "boards: "+name, boardAliasKeys, func(key string, v *yaml.Node) error {
		var s string
		if err := f.value(v, name+": "+key, &s); err != nil {
			return err
		}
		switch key {
		case "address":
			if _, err := dispatcher.ParseAddress(s); err != nil && !errors.Is(err, dispatcher.ErrNeedsDiscovery) {
				return fmt.Errorf("line %d: %s: address: %w", v.Line, name, err)
			}
			a.address = s
		case "fingerprint":
			fp, err := auth.ParseFingerprint(s)
			if err != nil {
				return fmt.Errorf("line %d: %s: fingerprint: %w", v.Line, name, err)
			}
			a.fingerprint = fp
		default: // token_file
			return f.pathValue(v, name+": "+key, &a.tokenFile)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if a.address == "" {
		return fmt.Errorf("line %d: boards: %s: no address (HOST[:PORT], a URL, or a board id)", n.Line, name)
	}
	f.boards[name] = a
	return nil
}

// value reads a scalar.
func (f *boardsFile) value(v *yaml.Node, what string, out *string) error {
	if v.Kind != yaml.ScalarNode || v.Value == "" {
		return fmt.Errorf("line %d: %s: want a value", v.Line, what)
	}
	*out = v.Value
	return nil
}

// pathValue reads a path: ~/ is the home directory, and a relative path
// is taken from the file's directory.
func (f *boardsFile) pathValue(v *yaml.Node, what string, out *string) error {
	if err := f.value(v, what, out); err != nil {
		return err
	}
	if rest, ok := strings.CutPrefix(*out, "~/"); ok {
		home, err := os.UserHomeDir()
		if err != nil {
			return fmt.Errorf("line %d: %s: %w", v.Line, what, err)
		}
		*out = filepath.Join(home, rest)
	} else if !filepath.IsAbs(*out) {
		*out = filepath.Join(filepath.Dir(f.path), *out)
	}
	return nil
}

// eachKey calls each for every key of the mapping n, which may hold
// only known keys; where names the mapping in errors.
func eachKey(n *yaml.Node, where string, known []string, each func(key string, v *yaml.Node) error) error {
	return eachEntry(n, where, func(key string, v *yaml.Node) error {
		if !slices.Contains(known, key) {
			in := ""
			if where != "" {
				in = " in " + where
			}
			return fmt.Errorf("line %d: unknown key %s%s; known keys: %s", v.Line, key, in, strings.Join(known, ", "))
		}
		return each(key, v)
	})
}

// eachEntry calls each for every key and value of the mapping n.
func eachEntry(n *yaml.Node, where string, each func(key string, v *yaml.Node) error) error {
	if n.Kind != yaml.MappingNode {
		if where == "" {
			return fmt.Errorf("line %d: want keys and values (token_file:, boards:)", n.Line)
		}
		return fmt.Errorf("line %d: %s: want keys and values", n.Line, where)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if seen[k.Value] {
			return fmt.Errorf("line %d: %s given twice", k.Line, k.Value)
		}
		seen[k.Value] = true
		if err := each(k.Value, v); err != nil {
			return err
		}
	}
	return nil
}

// alias is board's entry, if board names one.
func (f *boardsFile) alias(board string) (boardAlias, bool) {
	a, ok := f.boards[board]
	return a, ok
}

// names are the file's board names, sorted.
func (f *boardsFile) names() []string {
	out := make([]string, 0, len(f.boards))
	for name := range f.boards {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}
