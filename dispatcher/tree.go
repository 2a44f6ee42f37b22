package dispatcher

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/boardlink/boardlink/proto"
)

// TreeOptions tune PushTree and PullTree.
type TreeOptions struct {
	// File, if set, is called as each file starts, with where it comes
	// from and goes to, and returns that file's options (its progress).
	File func(from, to string) TransferOptions
	// Done, if set, is called as each file ends well.
	Done func(TreeFile)
	// Skip, if set, is told what is left out: a symlink to a directory,
	// a FIFO, a device, a socket.
	Skip func(path, why string)
}

// TreeFile is one file of a tree that was copied, or skipped because
// its destination already held the same bytes.
type TreeFile struct {
	From, To string
	Result   proto.FileResult
	Same     bool // the destination already held these bytes: nothing moved
}

// PushTree copies the local directory dir to remote on the board, file
// by file, each as Push copies it (resumable, checked by sha256, mode and
// mtime kept); a file the board already holds with the same bytes is
// left as it is, so a cut PushTree run again goes on where it stopped.
// Directories are made as needed (mode 0755); empty ones are not made:
// the protocol makes directories only as a file's parents. It stops at
// the first file that fails.
func (c *Client) PushTree(ctx context.Context, dir, remote string, opts TreeOptions) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Stat(p) // follows a symlink: its target is copied
		if err != nil {
			return err
		}
		switch {
		case st.IsDir() && d.Type()&fs.ModeSymlink != 0:
			opts.skip(p, "a symlink to a directory")
			return nil
		case st.IsDir():
			return nil
		case !st.Mode().IsRegular():
			opts.skip(p, "not a regular file")
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		to := path.Join(remote, filepath.ToSlash(rel))
		if same, err := c.boardHolds(ctx, p, to, st.Size()); err != nil {
			return fmt.Errorf("%s: %w", to, err)
		} else if same {
			opts.done(TreeFile{From: p, To: to, Same: true, Result: proto.FileResult{Path: to, Size: st.Size()}})
			return nil
		}
		o := opts.file(p, to)
		o.Parents = true
		res, err := c.Push(ctx, p, to, o)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		opts.done(TreeFile{From: p, To: to, Result: res})
		return nil
	})
}

// boardHolds reports whether the board's file at remote has the bytes of
// the local file (of size bytes): sizes first, hashes only if they match.
func (c *Client) boardHolds(ctx context.Context, local, remote string, size int64) (bool, error) {
	info, err := c.Stat(ctx, remote, false)
	if err != nil || !info.Exists || info.Dir || info.Size != size {
		return false, err
	}
	if info, err = c.Stat(ctx, remote, true); err != nil {
		return false, err
	}
	sum, err := hashFile(ctx, local)
	return err == nil && sum == info.SHA256, err
}

// PullTree copies the directory remote on the board to the local
// directory dir, file by file, each as Pull copies it (resumable,
// checked, mode and mtime kept), directories with their mode and mtime
// too; a local file that already has the board's bytes is left as it is.
// It stops at the first file that fails.
//
// The protocol lists no directory: the board's own find(1) does, run as
// a command (exec). Every path it names is still fetched through the
// file methods, within the agent's file roots.
func (c *Client) PullTree(ctx context.Context, remote, dir string, opts TreeOptions) error {
	top, dirs, files, err := c.Tree(ctx, remote)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(d)), 0o755); err != nil {
			return err
		}
	}
	for _, f := range files {
		from, to := path.Join(remote, f), filepath.Join(dir, filepath.FromSlash(f))
		if info, same, err := c.localHolds(ctx, from, to); err != nil {
			return fmt.Errorf("%s: %w", from, err)
		} else if same {
			opts.done(TreeFile{From: from, To: to, Same: true, Result: proto.FileResult{Path: from, Size: info.Size}})
			continue
		}
		res, err := c.Pull(ctx, from, to, opts.file(from, to))
		if err != nil {
			return fmt.Errorf("%s: %w", from, err)
		}
		opts.done(TreeFile{From: from, To: to, Result: res})
	}
	// Deepest first: setting a directory's mtime after its contents.
	slices.Reverse(dirs)
	for _, d := range append(dirs, ".") {
		info := top
		if d != "." {
			if info, err = c.Stat(ctx, path.Join(remote, d), false); err != nil {
				return err
			}
		}
		local := filepath.Join(dir, filepath.FromSlash(d))
		if err := os.Chmod(local, os.FileMode(info.Mode)|0o700); err != nil { // we still write in it
			return err
		}
		if err := os.Chtimes(local, time.Time{}, info.ModTime); err != nil {
			return err
		}
	}
	return nil
}

// Tree lists the directory remote on the board: its own info, and the
// directories and the regular files under it, as sorted paths relative
// to it (symlinks, devices and the like are not listed). The protocol
// lists no directory: the board's own find(1) does, run as a command.
func (c *Client) Tree(ctx context.Context, remote string) (top proto.FileInfo, dirs, files []string, err error) {
	top, err = c.Stat(ctx, remote, false)
	switch {
	case err != nil:
		return top, nil, nil, err
	case !top.Exists:
		return top, nil, nil, proto.Errorf(proto.ReasonNotFound, "%s: no such directory on the board", remote)
	case !top.Dir:
		return top, nil, nil, proto.InvalidField("path", "dir", "%s is not a directory", remote)
	}
	if dirs, err = c.find(ctx, remote, "d"); err != nil {
		return top, nil, nil, err
	}
	files, err = c.find(ctx, remote, "f")
	return top, dirs, files, err
}

// localHolds reports whether the local file has the bytes of the board's
// file at remote: sizes first, hashes only if they match.
func (c *Client) localHolds(ctx context.Context, remote, local string) (proto.FileInfo, bool, error) {
	st, err := os.Stat(local)
	if err != nil || !st.Mode().IsRegular() {
		return proto.FileInfo{}, false, nil
	}
	info, err := c.Stat(ctx, remote, false)
	if err != nil || !info.Exists || info.Size != st.Size() {
		return info, false, err
	}
	if info, err = c.Stat(ctx, remote, true); err != nil {
		return info, false, err
	}
	sum, err := hashFile(ctx, local)
	return info, err == nil && sum == info.SHA256, err
}

// find lists what is under dir on the board, of find(1)'s -type kind
// (d or f), as paths relative to dir, sorted.
func (c *Client) find(ctx context.Context, dir, kind string) ([]string, error) {
	var out, errs bytes.Buffer
	res, err := c.Exec(ctx, ExecRequest{Argv: []string{"find", dir, "-mindepth", "1", "-type", kind, "-print0"},
		Stdout: &out, Stderr: &errs})
	if err != nil {
		return nil, fmt.Errorf("listing %s on the board: %w", dir, err)
	}
	if res.ExitCode != 0 || res.Signal != "" {
		return nil, fmt.Errorf("listing %s on the board: find failed (exit %d %s): %s", dir, res.ExitCode, res.Signal,
			strings.TrimSpace(errs.String()))
	}
	var names []string
	for _, p := range strings.Split(out.String(), "\x00") {
		if rel, ok := strings.CutPrefix(p, strings.TrimSuffix(dir, "/")+"/"); ok && rel != "" {
			names = append(names, rel)
		}
	}
	slices.Sort(names)
	return names, nil
}

// hashFile is the hex sha256 of the local file at p.
func hashFile(ctx context.Context, p string) (string, error) {
	_, sum, err := HashFile(ctx, p)
	return sum, err
}

// HashFile is the size and hex sha256 of the local file at p; ctx ends
// it.
func HashFile(ctx context.Context, p string) (int64, string, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, "", err
	}
	sum, err := hashRange(ctx, f, st.Size())
	return st.Size(), sum, err
}

func (o TreeOptions) file(from, to string) TransferOptions {
	if o.File == nil {
		return TransferOptions{}
	}
	return o.File(from, to)
}

func (o TreeOptions) done(f TreeFile) {
	if o.Done != nil {
		o.Done(f)
	}
}

func (o TreeOptions) skip(p, why string) {
	if o.Skip != nil {
		o.Skip(p, why)
	}
}
