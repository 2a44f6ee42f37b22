// Package atomicfile replaces files so that a crash or a power cut at any
// moment leaves either the old or the new content under the name, never a
// mix, plus a small envelope for versioned JSON state files.
package atomicfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// WriteFile atomically replaces path with data: it writes a temporary file
// in the same directory (so the rename cannot cross file systems), fsyncs
// it, renames it over path and fsyncs the directory so the rename itself
// is durable. perm is applied as given, without the umask.
//
// A crash may leave a temporary file named ".BASE.tmp-*" next to path;
// readers of path never see it.
func WriteFile(path string, data []byte, perm fs.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	return nil
}

// SyncDir makes a rename or a creation in dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	// Some file systems cannot fsync a directory; the rename is then as
	// durable as they make it, which is all we can do.
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		return err
	}
	return nil
}

// ErrFormat is wrapped by ReadJSON's error for a file whose format version
// is not the one asked for (typically written by a newer build).
var ErrFormat = errors.New("unsupported format version")

// envelope is the on-disk shape of a versioned JSON file.
type envelope struct {
	Format int             `json:"format"`
	Data   json.RawMessage `json:"data"`
}

// WriteJSON atomically writes v to path as {"format": version, "data": v},
// readable by people and by ReadJSON. The file is created with mode 0644.
func WriteJSON(path string, version int, v any) error {
	return WriteJSONPerm(path, version, v, 0o644)
}

// WriteJSONPerm is WriteJSON with the file's mode: 0600 for a secret.
func WriteJSONPerm(path string, version int, v any, perm fs.FileMode) error {
	if version < 1 {
		return fmt.Errorf("write %s: format version %d: must be at least 1", path, version)
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("write %s: encode: %w", path, err)
	}
	b, err := json.MarshalIndent(envelope{Format: version, Data: data}, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: encode: %w", path, err)
	}
	return WriteFile(path, append(b, '\n'), perm)
}

// ReadJSON reads a file written by WriteJSON into v. It refuses a file
// whose format is not wantVersion with an error wrapping ErrFormat, and a
// file that is not such an envelope at all. A missing file yields an error
// wrapping fs.ErrNotExist.
func ReadJSON(path string, wantVersion int, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return DecodeJSON(path, b, wantVersion, v)
}

// DecodeJSON is ReadJSON of b, the contents of the file path, already read.
func DecodeJSON(path string, b []byte, wantVersion int, v any) error {
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return fmt.Errorf("read %s: not a versioned JSON file: %w", path, err)
	}
	if env.Format == 0 || len(env.Data) == 0 {
		return fmt.Errorf("read %s: not a versioned JSON file: no format or data field", path)
	}
	if env.Format != wantVersion {
		return fmt.Errorf("read %s: %w %d (this build reads format %d)", path, ErrFormat, env.Format, wantVersion)
	}
	if err := json.Unmarshal(env.Data, v); err != nil {
		return fmt.Errorf("read %s: decode format %d: %w", path, env.Format, err)
	}
	return nil
}
