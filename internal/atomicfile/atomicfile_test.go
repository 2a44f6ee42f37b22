package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteFile(t *testing.T) {
	tests := []struct {
		name string
		old  []byte // nil: path does not exist yet
		data []byte
		perm fs.FileMode
	}{
		{name: "create", data: []byte("hello\n"), perm: 0o644},
		{name: "replace", old: []byte("a much longer old content\n"), data: []byte("new"), perm: 0o600},
		{name: "empty", old: []byte("x"), data: []byte{}, perm: 0o640},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			if tt.old != nil {
				if err := os.WriteFile(path, tt.old, 0o666); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteFile(path, tt.data, tt.perm); err != nil {
				t.Fatalf("WriteFile: %v", err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(tt.data) {
				t.Errorf("content = %q, want %q", got, tt.data)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tt.perm {
				t.Errorf("perm = %v, want %v", fi.Mode().Perm(), tt.perm)
			}
			assertOnly(t, dir, "f")
		})
	}
}

func TestWriteFileRelativePath(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := WriteFile("rel", []byte("x"), 0o644); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	if b, err := os.ReadFile("rel"); err != nil || string(b) != "x" {
		t.Fatalf("read back %q, %v", b, err)
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	dir := t.TempDir()
	err := WriteFile(filepath.Join(dir, "nodir", "f"), []byte("x"), 0o644)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want fs.ErrNotExist", err)
	}
	assertOnly(t, dir)
}

type state struct {
	Name  string         `json:"name"`
	Count int            `json:"count"`
	Tags  map[string]int `json:"tags,omitempty"`
}

func TestJSONRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.json")
	want := state{Name: "b1", Count: 3, Tags: map[string]int{"a": 1}}
	if err := WriteJSON(path, 2, want); err != nil {
		t.Fatalf("WriteJSON: %v", err)
	}
	var got state
	if err := ReadJSON(path, 2, &got); err != nil {
		t.Fatalf("ReadJSON: %v", err)
	}
	if got.Name != want.Name || got.Count != want.Count || got.Tags["a"] != 1 {
		t.Errorf("got %+v, want %+v", got, want)
	}
	raw, _ := os.ReadFile(path)
	if !strings.Contains(string(raw), `"format": 2`) {
		t.Errorf("file does not carry its format: %s", raw)
	}
}

// A crash between creating the temporary file and the rename leaves a
// partial temporary file behind: readers and later writers must ignore it.
func TestLeftoverTempFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.json")
	leftover := filepath.Join(dir, ".s.json.tmp-123456")
	if err := os.WriteFile(leftover, []byte(`{"format": 1, "data": {"name": "tru`), 0o644); err != nil {
		t.Fatal(err)
	}
	var s state
	if err := ReadJSON(path, 1, &s); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadJSON with only a leftover temp file: err = %v, want fs.ErrNotExist", err)
	}
	if err := WriteJSON(path, 1, state{Name: "good"}); err != nil {
		t.Fatalf("WriteJSON: %v", err)
	}
	if err := ReadJSON(path, 1, &s); err != nil || s.Name != "good" {
		t.Fatalf("ReadJSON = %+v, %v; want name good", s, err)
	}
	assertOnly(t, dir, ".s.json.tmp-123456", "s.json")
}

func TestReadJSONRejects(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    int
		isFmt   bool   // error wraps ErrFormat
		msg     string // substring of the error
	}{
		{name: "newer format", content: `{"format": 2, "data": {}}`, want: 1, isFmt: true, msg: "format version 2 (this build reads format 1)"},
		{name: "older format", content: `{"format": 1, "data": {}}`, want: 3, isFmt: true, msg: "format version 1"},
		{name: "no envelope", content: `{"name": "x"}`, want: 1, msg: "not a versioned JSON file"},
		{name: "not an object", content: `[1, 2]`, want: 1, msg: "not a versioned JSON file"},
		{name: "truncated", content: `{"format": 1, "da`, want: 1, msg: "not a versioned JSON file"},
		{name: "wrong data type", content: `{"format": 1, "data": {"count": "x"}}`, want: 1, msg: "decode format 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.json")
			if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			var s state
			err := ReadJSON(path, tt.want, &s)
			if err == nil {
				t.Fatal("ReadJSON accepted the file")
			}
			if errors.Is(err, ErrFormat) != tt.isFmt {
				t.Errorf("errors.Is(err, ErrFormat) = %v, want %v (err: %v)", !tt.isFmt, tt.isFmt, err)
			}
			if !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), path) {
				t.Errorf("err = %q, want it to name the file and say %q", err, tt.msg)
			}
		})
	}
}

func TestWriteJSONRejectsVersionZero(t *testing.T) {
	if err := WriteJSON(filepath.Join(t.TempDir(), "s.json"), 0, state{}); err == nil {
		t.Fatal("WriteJSON accepted format version 0, which ReadJSON cannot tell from a missing field")
	}
}

// assertOnly fails unless dir holds exactly the named entries.
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("directory holds %q, want %q", got, names)
	}
}
