package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/dispatcher/service"
	"github.com/boardlink/boardlink/internal/units"
	"github.com/boardlink/boardlink/proto"
)

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// fileFailure maps a transfer error to an exit status: a refused path or
// argument is a usage error (2), a missing file or a bad checksum is 1,
// anything else is the link (255).
func fileFailure(err error) error {
	switch proto.ReasonOf(err) {
	case proto.ReasonInvalidParams:
		return &usageError{err}
	case proto.ReasonNotFound, proto.ReasonChecksumMismatch, proto.ReasonBusy, proto.ReasonUnavailable, proto.ReasonNoSpace:
		return &exitError{code: 1, err: err}
	}
	if errors.Is(err, dispatcher.ErrChecksum) || errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
		return &exitError{code: 1, err: err}
	}
	return linkFailure(err)
}

// summary is the line a finished transfer prints; took is the wall time
// seen here, hashing included.
func summary(verb string, res proto.FileResult, took time.Duration) string {
	s := fmt.Sprintf("%s %s: %s in %s (%s), sha256 %s", verb, res.Path, humanBytes(res.Size),
		took.Round(time.Millisecond), humanRate(res.Bytes, took), res.SHA256)
	if res.Offset > 0 {
		s += fmt.Sprintf("; resumed at %s, %s moved", humanBytes(res.Offset), humanBytes(res.Bytes))
	}
	return s
}

// transfer is one push or pull of the CLI: what it shows and says, for
// one file or a tree of them.
type transfer struct {
	verb    string // push or pull
	stderr  io.Writer
	out     io.Writer
	asJSON  bool
	results []proto.FileResult

	mu      sync.Mutex
	current string // the file under way
	done    int64  // its bytes so far
	total   int64
}

// options are the TransferOptions of one file: its bar, its phases, and
// what an interrupt reports.
func (t *transfer) options(name string) (dispatcher.TransferOptions, *progressBar) {
	bar := newProgressBar(t.stderr, t.verb+" "+name, 0)
	t.mu.Lock()
	t.current, t.done, t.total = name, 0, 0
	t.mu.Unlock()
	return dispatcher.TransferOptions{
		Progress: func(done, total int64) {
			t.mu.Lock()
			t.done, t.total = done, total
			t.mu.Unlock()
			bar.set(done, total)
		},
		Phase: func(p dispatcher.TransferPhase) {
			if p == dispatcher.PhaseSend {
				bar.setPhase("")
				return
			}
			bar.setPhase(string(p))
		},
	}, bar
}

// finished reports a file done.
func (t *transfer) finished(res proto.FileResult, took time.Duration, same bool) {
	t.results = append(t.results, res)
	switch {
	case t.asJSON:
	case same:
		fmt.Fprintf(t.out, "%s: already there (%s, same sha256), nothing moved\n", res.Path, humanBytes(res.Size))
	default:
		past := map[string]string{"push": "pushed", "pull": "pulled"}[t.verb]
		fmt.Fprintln(t.out, summary(past, res, took))
	}
}

// end prints the results as JSON, one object for one file, an array for
// several.
func (t *transfer) end(several bool) error {
	if !t.asJSON {
		return nil
	}
	if !several && len(t.results) == 1 {
		return writeJSON(t.out, t.results[0])
	}
	return writeJSON(t.out, t.results)
}

// failed maps a transfer's error: after Ctrl-C, what was left and how to
// go on; else fileFailure's status.
func (t *transfer) failed(ctx context.Context, err error, resume string) error {
	if ctx.Err() == nil {
		return fileFailure(err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	at := "before any byte moved"
	if t.total > 0 {
		at = fmt.Sprintf("at %s of %s", humanBytes(t.done), humanBytes(t.total))
	}
	return interrupted(ctx, "%s of %s stopped %s; %s", t.verb, t.current, at, resume)
}

// tree is the TreeOptions of a push -r or pull -r.
func (t *transfer) tree() dispatcher.TreeOptions {
	var (
		bar   *progressBar
		start time.Time
	)
	return dispatcher.TreeOptions{
		File: func(from, to string) dispatcher.TransferOptions {
			start = time.Now()
			var o dispatcher.TransferOptions
			o, bar = t.options(from)
			return o
		},
		Done: func(f dispatcher.TreeFile) {
			bar.done(true)
			bar = nil
			t.finished(f.Result, time.Since(start), f.Same)
		},
		Skip: func(p, why string) { fmt.Fprintf(t.stderr, "boardlink: %s: skipped: %s\n", p, why) },
	}
}

func newPushCmd(g *globals) *cobra.Command {
	var (
		asJSON, parents, recursive bool
	)
	cmd := &cobra.Command{
		Use:   "push BOARD LOCAL... REMOTE [-r] [--parents] [--json]",
		Short: "Copy files (or with -r directories) to a board",
		Long: `push copies the local file LOCAL to REMOTE on the board, an absolute
path inside one of the agent's file roots. When REMOTE is a directory on
the board (or ends in "/"), the file keeps its name there. Several LOCAL
files go into the directory REMOTE. LOCAL "-" is stdin, pushed to the file
REMOTE. With -r, a LOCAL directory is copied with everything in it, into
REMOTE when that directory exists (as LOCAL's last name), else as REMOTE;
directories are made on the board as needed (0755; empty ones are not
made), symlinks are followed, FIFOs, devices and sockets left out.

The bytes are streamed with flow control over WebSocket or the serial link
and checked end to end with sha256. The board writes each file into a
hidden partial file beside it, fsyncs it and renames it into place only
when every byte is there and hashes right: a cut link never leaves a half
file. Mode and mtime are kept. Pushing the same file again after a cut
resumes from what the board already holds (checked by hash) instead of
starting over; with -r, a file the board already holds with the same bytes
is not sent again.

A progress bar per file is drawn on stderr when it is a terminal: hashing
(the local file is hashed before a byte is sent), the bytes, and
verifying (the board syncs and checks the file). Ctrl-C stops at once and
says where; the board keeps what it received: the same push resumes it.

--json prints the result as a JSON object, or an array of them for several
files or -r.

With --server (or $BOARDLINK_SERVER) the lab service pushes the files
(with -r, a directory as a tar stream the service passes on file by file),
under the lease of $BOARDLINK_LEASE if set: a board another lease
holds is refused (exit 1, naming the holder).

Exit status: 0 done; 1 a missing file, a missing directory on the board
(--parents makes it) or a checksum mismatch; 2 a path the agent refuses
(outside its roots, or leaving them through a symlink or ".."), a
directory without -r, or another mistake in the command line; 130 after
Ctrl-C; 255 the link failed (push again to resume).`,
		Example: `  boardlink push board1 ./rootfs.ext4 /data/images/
  boardlink push board1 build/*.tar.gz /data/suites/
  boardlink push -r board1 ./test-suite /opt
  tar cz logs | boardlink push board1 - /data/logs.tar.gz
  boardlink push 10.77.0.2 build/test-suite.tar.gz /tmp/suite.tar.gz --json`,
		Args: minArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			sources, remote := args[1:len(args)-1], args[len(args)-1]
			for _, src := range sources {
				if err := checkPushSource(src, len(sources), recursive); err != nil {
					return err
				}
			}
			t := &transfer{verb: "push", stderr: cmd.ErrOrStderr(), out: cmd.OutOrStdout(), asJSON: asJSON}
			if g.serverURL() != "" {
				return g.pushViaServer(ctx, t, cmd.InOrStdin(), args[0], sources, remote, parents, recursive)
			}
			c, err := g.dial(ctx, args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			several := len(sources) > 1 || recursive
			intoDir, err := remoteDir(ctx, c, remote, several)
			if err != nil {
				return err
			}
			for _, src := range sources {
				if err := pushOne(ctx, c, t, cmd.InOrStdin(), src, remote, intoDir, parents); err != nil {
					return err
				}
			}
			return t.end(several)
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "copy directories, with everything in them")
	cmd.Flags().BoolVarP(&parents, "parents", "p", false, "create missing parent directories on the board")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON (an array for several files)")
	return cmd
}

// checkPushSource refuses, before anything is dialed, a source push
// cannot take: a missing file (1), a directory without -r, stdin beside
// other sources (2).
func checkPushSource(src string, sources int, recursive bool) error {
	if src == "-" {
		if sources > 1 {
			return &usageError{errors.New(`push: "-" (stdin) goes alone, to a file REMOTE`)}
		}
		return nil
	}
	st, err := os.Stat(src)
	switch {
	case err != nil:
		return &exitError{code: 1, err: err}
	case st.IsDir() && !recursive:
		return &usageError{fmt.Errorf("push: %s is a directory: give -r to copy it and what it holds", src)}
	case !st.IsDir() && !st.Mode().IsRegular():
		return &usageError{fmt.Errorf("push: %s is not a regular file", src)}
	}
	return nil
}

// remoteDir reports whether remote names a directory on the board that
// sources go into: it ends in "/", or it is one. Several sources need one.
func remoteDir(ctx context.Context, c *dispatcher.Client, remote string, several bool) (bool, error) {
	info, err := c.Stat(ctx, strings.TrimSuffix(remote, "/"), false)
	if err != nil {
		return false, fileFailure(err)
	}
	switch {
	case info.Dir:
		return true, nil
	case strings.HasSuffix(remote, "/"):
		return true, nil // made as a parent, with --parents
	case several && info.Exists:
		return false, &usageError{fmt.Errorf("push: %s is a file on the board; several files (or -r) go into a directory", remote)}
	}
	return false, nil
}

// pushOne pushes src (a file, a directory with -r, or "-") to remote.
func pushOne(ctx context.Context, c *dispatcher.Client, t *transfer, stdin io.Reader, src, remote string, intoDir, parents bool) error {
	if src == "-" {
		if intoDir {
			return &usageError{fmt.Errorf("push: %s is a directory: name the file stdin goes to", remote)}
		}
		spool, err := spoolStdin(ctx, stdin)
		if err != nil {
			return err
		}
		defer os.Remove(spool)
		return pushFile(ctx, c, t, spool, "stdin", remote, parents)
	}
	to := strings.TrimSuffix(remote, "/")
	if intoDir {
		to = path.Join(to, filepath.Base(src))
	}
	if st, err := os.Stat(src); err == nil && st.IsDir() {
		if err := parentOnBoard(ctx, c, to, parents); err != nil {
			return err
		}
		if err := c.PushTree(ctx, src, to, t.tree()); err != nil {
			return t.failed(ctx, err, "run the same push again: the files the board holds already are skipped, the cut one resumes")
		}
		return nil
	}
	return pushFile(ctx, c, t, src, filepath.Base(src), to, parents)
}

// pushFile pushes one local file to remote, named name on its bar.
func pushFile(ctx context.Context, c *dispatcher.Client, t *transfer, local, name, remote string, parents bool) error {
	opts, bar := t.options(name)
	opts.Parents = parents
	start := time.Now()
	res, err := c.Push(ctx, local, remote, opts)
	bar.done(err == nil)
	if proto.IsReason(err, proto.ReasonNotFound) {
		err = fmt.Errorf("%s: the directory %s does not exist on the board (--parents makes it): %w", remote, path.Dir(remote), err)
	}
	if err != nil {
		return t.failed(ctx, err, "the board keeps what it received: run the same push again to resume")
	}
	t.finished(res, time.Since(start), false)
	return nil
}

// parentOnBoard checks, unless parents, that the directory remote goes
// into exists on the board.
func parentOnBoard(ctx context.Context, c *dispatcher.Client, remote string, parents bool) error {
	if parents {
		return nil
	}
	dir := path.Dir(remote)
	info, err := c.Stat(ctx, dir, false)
	switch {
	case err != nil:
		return fileFailure(err)
	case !info.Exists:
		return &exitError{code: 1, err: fmt.Errorf("%s: the directory %s does not exist on the board (--parents makes it)", remote, dir)}
	}
	return nil
}

// spoolStdin copies stdin to a temporary file (a push needs its size and
// sha256 before the first byte) and returns its path.
func spoolStdin(ctx context.Context, stdin io.Reader) (string, error) {
	f, err := os.CreateTemp("", "boardlink-stdin-")
	if err != nil {
		return "", &exitError{code: 1, err: err}
	}
	copied := make(chan error, 1)
	go func() { // a terminal's read does not end with ctx: not waited for then
		_, err := io.Copy(f, stdin)
		copied <- err
	}()
	select {
	case err = <-copied:
	case <-ctx.Done():
		os.Remove(f.Name())
		return "", interrupted(ctx, "push of stdin stopped while reading it; nothing was sent")
	}
	if cerr := f.Chmod(0o644); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", &exitError{code: 1, err: fmt.Errorf("reading stdin: %w", err)}
	}
	return f.Name(), nil
}

func newPullCmd(g *globals) *cobra.Command {
	var asJSON, recursive bool
	cmd := &cobra.Command{
		Use:   "pull BOARD REMOTE... LOCAL [-r] [--json]",
		Short: "Copy files (or with -r directories) from a board",
		Long: `pull copies REMOTE, a file on the board inside one of the agent's file
roots, to LOCAL (an existing directory keeps the file's name). Several
REMOTE files go into the directory LOCAL. LOCAL "-" is stdout (one file).
With -r, a REMOTE directory is copied with everything in it, into LOCAL
when that directory exists (as REMOTE's last name), else as LOCAL; the
board's find(1) lists it.

The bytes go into a hidden partial file beside each local file, which is
fsynced and renamed into place only when complete and its sha256 matches
the board's. Mode and mtime are kept (of directories too, with -r). After
a cut link, pulling again resumes from the bytes already received, if the
board's file still begins with them; with -r, a local file that already
has the board's bytes is not fetched again.

A progress bar per file is drawn on stderr when it is a terminal. Ctrl-C
stops at once and says where; the bytes received are kept: the same pull
resumes it.

--json prints the result as a JSON object, or an array of them for several
files or -r.

With --server (or $BOARDLINK_SERVER) the lab service pulls the files
(with -r, a directory as a tar stream; nothing of a cut one is kept),
under the lease of $BOARDLINK_LEASE if set: a board another lease
holds is refused (exit 1, naming the holder).

Exit status: 0 done; 1 no such file or a checksum mismatch; 2 a path the
agent refuses, a directory without -r, or another mistake in the command
line; 130 after Ctrl-C; 255 the link failed (pull again to resume).`,
		Example: `  boardlink pull board1 /var/log/test-results.xml .
  boardlink pull -r board1 /data/results ./results-board1
  boardlink pull board1 /data/core.1234 - | gdb -c /dev/stdin
  boardlink pull serial:///dev/ttyACM0 /data/core.1234 ./core.1234`,
		Args: minArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			sources, local := args[1:len(args)-1], args[len(args)-1]
			several := len(sources) > 1 || recursive
			if local == "-" && (several || asJSON) {
				return &usageError{errors.New(`pull: "-" (stdout) takes one file, without -r or --json`)}
			}
			st, err := os.Stat(local)
			intoDir := err == nil && st.IsDir()
			if len(sources) > 1 && !intoDir {
				return &usageError{fmt.Errorf("pull: several files go into a directory: %s is none", local)}
			}
			t := &transfer{verb: "pull", stderr: cmd.ErrOrStderr(), out: cmd.OutOrStdout(), asJSON: asJSON}
			if g.serverURL() != "" {
				return g.pullViaServer(ctx, t, args[0], sources, local, intoDir, recursive)
			}
			c, err := g.dial(ctx, args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			for _, src := range sources {
				if err := pullOne(ctx, c, t, src, local, intoDir, recursive); err != nil {
					return err
				}
			}
			return t.end(several)
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "copy directories, with everything in them")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON (an array for several files)")
	return cmd
}

// pullOne pulls remote (a file, or a directory with -r) to local.
func pullOne(ctx context.Context, c *dispatcher.Client, t *transfer, remote, local string, intoDir, recursive bool) error {
	info, err := c.Stat(ctx, remote, false)
	switch {
	case err != nil:
		return fileFailure(err)
	case !info.Exists:
		return &exitError{code: 1, err: fmt.Errorf("%s: no such file on the board", remote)}
	case info.Dir && !recursive:
		return &usageError{fmt.Errorf("pull: %s is a directory on the board: give -r to copy it and what it holds", remote)}
	}
	to := local
	if intoDir {
		to = filepath.Join(local, path.Base(remote))
	}
	if info.Dir {
		if err := c.PullTree(ctx, remote, to, t.tree()); err != nil {
			return t.failed(ctx, err, "run the same pull again: the files held already are skipped, the cut one resumes")
		}
		return nil
	}
	opts, bar := t.options(path.Base(remote))
	start := time.Now()
	var res proto.FileResult
	if local == "-" {
		res, err = c.PullTo(ctx, remote, t.out, opts)
	} else {
		res, err = c.Pull(ctx, remote, to, opts)
	}
	bar.done(err == nil)
	if err != nil && local == "-" {
		return t.failed(ctx, err, "what arrived went to stdout")
	}
	if err != nil {
		return t.failed(ctx, err, "the bytes received are kept: run the same pull again to resume")
	}
	if local == "-" {
		t.out = t.stderr // stdout holds the file: the summary goes to stderr
	}
	t.finished(res, time.Since(start), false)
	return nil
}

// pushViaServer pushes sources to remote on board through the lab
// service, under the lease of $BOARDLINK_LEASE if set: into the
// directory remote for several sources, or when it is one on the board.
func (g *globals) pushViaServer(ctx context.Context, t *transfer, stdin io.Reader, board string, sources []string, remote string, parents, recursive bool) error {
	c, err := g.serviceClient()
	if err != nil {
		return err
	}
	several := len(sources) > 1
	if several && !strings.HasSuffix(remote, "/") {
		remote += "/"
	}
	for _, src := range sources {
		if st, err := os.Stat(src); recursive && err == nil && st.IsDir() {
			if err := pushTreeViaServer(ctx, c, t, board, src, remote); err != nil {
				return err
			}
			continue
		}
		local, name := src, filepath.Base(src)
		if src == "-" {
			if local, err = spoolStdin(ctx, stdin); err != nil {
				return err
			}
			defer os.Remove(local)
			name = ""
		}
		start := time.Now()
		opts, bar := t.options(filepath.Base(src))
		res, err := c.WithUploadProgress(opts.Progress).Push(ctx, board, os.Getenv("BOARDLINK_LEASE"), local,
			service.PushRequest{Path: remote, Name: name, Parents: parents})
		bar.done(err == nil)
		if err != nil {
			return t.viaServerFailed(ctx, err, "run the same push again: the board keeps what it received")
		}
		t.finished(res, time.Since(start), false)
	}
	return t.end(several || recursive)
}

// pushTreeViaServer pushes the local directory dir to remote (into it as
// dir's name when it is a directory on the board) through the service.
func pushTreeViaServer(ctx context.Context, c *service.Client, t *transfer, board, dir, remote string) error {
	t.mu.Lock()
	t.current = dir
	t.mu.Unlock()
	start := time.Now()
	res, err := c.PushTree(ctx, board, os.Getenv("BOARDLINK_LEASE"), dir, service.TreePushRequest{Path: remote, Name: filepath.Base(dir)},
		func(p, why string) { fmt.Fprintf(t.stderr, "boardlink: %s: skipped: %s\n", p, why) })
	if err != nil {
		return t.viaServerFailed(ctx, err, "run the same push again: files the board holds already are not sent to it again")
	}
	for _, f := range res.Files {
		t.finished(f.Result, time.Since(start), f.Same)
	}
	return nil
}

// pullViaServer pulls sources from board to local through the lab
// service, under the lease of $BOARDLINK_LEASE if set. Each file appears
// under its name only complete and checked, with the board's mode and
// mtime.
func (g *globals) pullViaServer(ctx context.Context, t *transfer, board string, sources []string, local string, intoDir, recursive bool) error {
	c, err := g.serviceClient()
	if err != nil {
		return err
	}
	for _, src := range sources {
		to := local
		if intoDir {
			to = filepath.Join(local, path.Base(src))
		}
		start := time.Now()
		t.mu.Lock()
		t.current = src
		t.mu.Unlock()
		if recursive {
			err := c.PullTree(ctx, board, os.Getenv("BOARDLINK_LEASE"), src, to, func(f service.TreeFile) {
				t.finished(f.Result, time.Since(start), false)
			})
			if !notADirectory(err) {
				if err != nil {
					return t.viaServerFailed(ctx, err, "pull again: the files already in place are fetched anew")
				}
				continue
			}
			// A file: pulled as one.
		}
		var res proto.FileResult
		if local == "-" {
			res, err = c.Pull(ctx, board, os.Getenv("BOARDLINK_LEASE"), src, func(proto.FileInfo) (io.Writer, error) { return t.out, nil })
			t.out = t.stderr // stdout holds the file: the summary goes to stderr
		} else {
			res, err = pullFileViaServer(ctx, c, board, src, to)
		}
		if err != nil {
			return t.viaServerFailed(ctx, err, "nothing of it is kept: pull again")
		}
		t.finished(res, time.Since(start), false)
	}
	return t.end(len(sources) > 1 || recursive)
}

// notADirectory reports whether the service refused a pull -r because the
// path on the board is not a directory.
func notADirectory(err error) bool {
	var ae *service.APIError
	return errors.As(err, &ae) && ae.Status == http.StatusBadRequest && len(ae.Fields) == 1 && ae.Fields[0].Rule == "dir"
}

// pullFileViaServer pulls remote into a hidden file beside local, and
// renames it into place once it is complete and checked.
func pullFileViaServer(ctx context.Context, c *service.Client, board, remote, local string) (proto.FileResult, error) {
	f, err := os.CreateTemp(filepath.Dir(local), "."+filepath.Base(local)+".boardlink-")
	if err != nil {
		return proto.FileResult{}, err
	}
	defer os.Remove(f.Name()) // a no-op once renamed
	defer f.Close()
	var info proto.FileInfo
	res, err := c.Pull(ctx, board, os.Getenv("BOARDLINK_LEASE"), remote, func(fi proto.FileInfo) (io.Writer, error) {
		info = fi
		return f, nil
	})
	if mode := os.FileMode(info.Mode).Perm(); err == nil && mode != 0 {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Close()
	}
	if err == nil && !info.ModTime.IsZero() {
		err = os.Chtimes(f.Name(), time.Time{}, info.ModTime)
	}
	if err == nil {
		err = os.Rename(f.Name(), local)
	}
	return res, err
}

// viaServerFailed maps an error of a transfer through the lab service:
// after Ctrl-C, where it stopped; a missing file, a bad checksum or a
// board's refusal is 1; else serviceFailure's status.
func (t *transfer) viaServerFailed(ctx context.Context, err error, resume string) error {
	var ae *service.APIError
	switch {
	case ctx.Err() != nil:
		t.mu.Lock()
		defer t.mu.Unlock()
		return interrupted(ctx, "%s of %s stopped; %s", t.verb, t.current, resume)
	case errors.Is(err, dispatcher.ErrChecksum), errors.Is(err, os.ErrNotExist), errors.Is(err, os.ErrPermission):
		return &exitError{code: 1, err: err}
	case errors.As(err, &ae) && ae.Status == http.StatusBadGateway:
		return fileFailure(proto.Errorf(proto.Reason(ae.Reason), "%s", ae.Message))
	}
	return serviceFailure(err)
}

// sha256Hex is compiled on first use, not at every start of the CLI.
var sha256Hex = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{64}$`) })

func newDownloadCmd(g *globals) *cobra.Command {
	var (
		req           dispatcher.DownloadRequest
		mode          string
		size, maxSize units.Size
		asJSON        bool
	)
	cmd := &cobra.Command{
		Use:   "download BOARD URL REMOTE --sha256 HEX [--extract] [--size SIZE] [--max-size SIZE] [--timeout D] [--json]",
		Short: "Have a board fetch a URL itself, verified by sha256",
		Long: `download makes the agent fetch URL (http or https) itself and put it at
REMOTE, or with --extract unpack the tarball (tar, tar.gz or tar.bz2) into
the directory REMOTE. Nothing crosses the host's link but the request.

--sha256 is required: nothing reaches REMOTE unless the fetched bytes hash
to it. When REMOTE, or the agent's content-addressed package cache, already
holds that content, nothing is downloaded and the result says "skipped".
Transient failures (connection refused or reset, timeouts, HTTP 408, 429
and 5xx) are retried with backoff; a dropped connection resumes with an
HTTP Range request where the server allows it. --extract refuses a tarball
with any entry that would land outside REMOTE ("..", absolute paths, links
pointing out), and leaves REMOTE untouched then.

The board bounds every download by its own limits (boardlinkd
--max-download, --download-deadline, --max-unpack, --max-unpack-entries);
--size, --max-size and --timeout add bounds of your own, and the smaller
applies. --size is the content's size as you know it: the board refuses a
body of another size at once, and checks its free space before the first
request. A body beyond --max-size (or the board's limit) is stopped as soon
as the server announces it or sends one byte too many, and nothing of it is
kept. --timeout covers the whole download, retries included.

Exit status: 0 done or skipped; 1 a checksum mismatch, a missing URL, an
unreachable server, no space left on the board, or --timeout (or the
board's deadline) ran out; 2 a refused path or argument, or content beyond
--size, --max-size or the board's limits; 255 the link failed.`,
		Example: `  boardlink download board1 http://10.77.0.1:8000/suite.tar.gz /opt/suite --extract \
      --sha256 3b1f...e9
  boardlink download board1 http://mirror/pkg.deb /tmp/pkg.deb --sha256 $(sha256sum pkg.deb | cut -c1-64)
  boardlink download board1 http://mirror/rootfs.tar.gz /data/rootfs -x --sha256 9f2c...41 \
      --max-size 2GiB --timeout 10m`,
		Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.URL, req.Path = args[1], args[2]
			req.SHA256 = strings.ToLower(req.SHA256)
			if !sha256Hex().MatchString(req.SHA256) {
				return &usageError{fmt.Errorf("--sha256 must be 64 hex digits, got %q", req.SHA256)}
			}
			if mode != "" {
				m, err := strconv.ParseUint(mode, 8, 32)
				if err != nil || m > 0o7777 {
					return &usageError{fmt.Errorf("--mode %q: want octal permission bits such as 0755", mode)}
				}
				req.Mode = os.FileMode(m)
			}
			req.Size, req.MaxSize = int64(size), int64(maxSize)
			if req.Timeout < 0 {
				return &usageError{fmt.Errorf("--timeout %v: want a positive duration (or 0: the board's deadline)", req.Timeout)}
			}
			c, err := g.dial(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			bar := newProgressBar(cmd.ErrOrStderr(), "download "+path.Base(req.Path), 0)
			req.Progress = func(p proto.Progress) {
				if p.Phase == "download" {
					bar.setPhase("")
				} else {
					bar.setPhase(p.Phase) // retry, verify, extract: no bytes move
				}
				bar.set(p.Bytes, p.Total)
			}
			start := time.Now()
			res, err := c.Download(cmd.Context(), req)
			bar.done(err == nil)
			if proto.IsReason(err, proto.ReasonTimeout) {
				return &exitError{code: 1, err: err} // the download failed, not the link
			}
			if err != nil {
				return fileFailure(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			out := cmd.OutOrStdout()
			switch {
			case res.Skipped:
				fmt.Fprintf(out, "skipped %s: already held (%s), sha256 %s\n", res.Path, res.Source, res.SHA256)
			default:
				fmt.Fprintf(out, "downloaded %s: %s in %s, %d attempt(s), %d resume(s), sha256 %s\n",
					res.Path, humanBytes(res.Size), time.Since(start).Round(time.Millisecond), res.Attempts, res.Resumes, res.SHA256)
			}
			if res.Extracted > 0 {
				fmt.Fprintf(out, "extracted %d entries into %s\n", res.Extracted, res.Path)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.SHA256, "sha256", "", "sha256 of the content, 64 hex digits (required)")
	f.BoolVarP(&req.Extract, "extract", "x", false, "unpack the tarball into the directory REMOTE")
	f.BoolVarP(&req.Parents, "parents", "p", false, "create missing parent directories on the board")
	f.StringVar(&mode, "mode", "", "permission bits of the file, octal (default 0644)")
	f.Var(&size, "size", "the content's size (e.g. 73400320, 70MiB): refuse another, check free space first")
	f.Var(&maxSize, "max-size", "refuse content larger than this (e.g. 2GiB; the board's own limit applies too)")
	f.DurationVar(&req.Timeout, "timeout", 0, "give up after this long, retries included (0: the board's deadline)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
