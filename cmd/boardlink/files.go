package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/dispatcher"
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
	s := fmt.Sprintf("%s %s: %d bytes in %s (%.1f MB/s), sha256 %s", verb, res.Path, res.Size,
		took.Round(time.Millisecond), float64(res.Bytes)/1e6/max(took.Seconds(), 1e-6), res.SHA256)
	if res.Offset > 0 {
		s += fmt.Sprintf("; resumed at byte %d, %d bytes moved", res.Offset, res.Bytes)
	}
	return s
}

func newPushCmd(g *globals) *cobra.Command {
	var (
		asJSON  bool
		parents bool
	)
	cmd := &cobra.Command{
		Use:   "push BOARD LOCAL REMOTE [--parents] [--json]",
		Short: "Copy a file to a board",
		Long: `push copies the local file LOCAL to REMOTE on the board, an absolute
path inside one of the agent's file roots. REMOTE ending in "/" names a
directory: the file keeps its name there.

The bytes are streamed with flow control over WebSocket or the serial link
and checked end to end with sha256. The board writes them into a hidden
partial file beside REMOTE, fsyncs it and renames it into place only when
every byte is there and hashes right: a cut link never leaves a half file
under REMOTE. Mode and mtime are kept. Pushing the same file again after a
cut resumes from what the board already holds (checked by hash) instead of
starting over.

A progress bar is drawn on stderr when it is a terminal.

Exit status: 0 done; 1 a missing file or a checksum mismatch; 2 a path the
agent refuses (outside its roots, or leaving them through a symlink or
".."); 255 the link failed (push again to resume).`,
		Example: `  boardlink push board1 ./rootfs.ext4 /data/images/
  boardlink push ws://10.77.0.2:7207 build/test-suite.tar.gz /tmp/suite.tar.gz --json`,
		Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			local, remote := args[1], args[2]
			if strings.HasSuffix(remote, "/") {
				remote = path.Join(remote, filepath.Base(local))
			}
			st, err := os.Stat(local)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			c, err := g.dial(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			bar := newProgressBar(cmd.ErrOrStderr(), "push "+filepath.Base(local), st.Size())
			start := time.Now()
			res, err := c.Push(cmd.Context(), local, remote, dispatcher.TransferOptions{Parents: parents, Progress: bar.set})
			bar.done(err == nil)
			if err != nil {
				return fileFailure(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintln(cmd.OutOrStdout(), summary("pushed", res, time.Since(start)))
			return nil
		},
	}
	cmd.Flags().BoolVarP(&parents, "parents", "p", false, "create missing parent directories on the board")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func newPullCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "pull BOARD REMOTE LOCAL [--json]",
		Short: "Copy a file from a board",
		Long: `pull copies REMOTE, a file on the board inside one of the agent's file
roots, to LOCAL (an existing directory keeps the file's name). The bytes go
into a hidden partial file beside LOCAL, which is fsynced and renamed into
place only when complete and its sha256 matches the board's. Mode and mtime
are kept. After a cut link, pulling again resumes from the bytes already
received, if the board's file still begins with them.

A progress bar is drawn on stderr when it is a terminal.

Exit status: 0 done; 1 no such file or a checksum mismatch; 2 a path the
agent refuses; 255 the link failed (pull again to resume).`,
		Example: `  boardlink pull board1 /var/log/test-results.xml .
  boardlink pull serial:///dev/ttyACM0 /data/core.1234 ./core.1234`,
		Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			remote, local := args[1], args[2]
			if st, err := os.Stat(local); err == nil && st.IsDir() {
				local = filepath.Join(local, path.Base(remote))
			}
			c, err := g.dial(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			bar := newProgressBar(cmd.ErrOrStderr(), "pull "+path.Base(remote), 0)
			start := time.Now()
			res, err := c.Pull(cmd.Context(), remote, local, dispatcher.TransferOptions{Progress: bar.set})
			bar.done(err == nil)
			if err != nil {
				return fileFailure(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintln(cmd.OutOrStdout(), summary("pulled", res, time.Since(start)))
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

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
			if !sha256Hex.MatchString(req.SHA256) {
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
			req.Progress = func(p proto.Progress) { bar.set(p.Bytes, p.Total) }
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
				fmt.Fprintf(out, "downloaded %s: %d bytes in %s, %d attempt(s), %d resume(s), sha256 %s\n",
					res.Path, res.Size, time.Since(start).Round(time.Millisecond), res.Attempts, res.Resumes, res.SHA256)
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
