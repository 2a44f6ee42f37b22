package agent

import (
	"context"
	"encoding/json"
	"io/fs"
	"time"

	"github.com/boardlink/boardlink/agent/fetch"
	"github.com/boardlink/boardlink/internal/rootpath"
	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

// fileDownload has the agent fetch a URL into a file root. The download
// belongs to the connection: if it drops, the download stops and its
// partial data stays in the cache for the next request to resume. The
// caller's bounds (size, max_size, timeout_ms) apply beside the agent's
// Limits, the smaller of each.
func (s *session) fileDownload(ctx context.Context, c *transport.Conn, params json.RawMessage) (any, error) {
	var p proto.FileDownloadParams
	if err := proto.DecodeParams(params, &p); err != nil {
		return nil, err
	}
	root, rel, err := s.a.openRoot(p.Path)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	if rel == "." {
		return nil, proto.InvalidField("path", "file", "%s is a file root: download into a path inside it", p.Path)
	}
	var progress func(fetch.Progress)
	if p.Progress != "" {
		progress = func(pr fetch.Progress) {
			// Best effort: a lost notification only makes a bar jump.
			_ = c.Notify(ctx, proto.NoteProgress, proto.Progress{Token: p.Progress, Phase: pr.Phase, Bytes: pr.Bytes, Total: pr.Total})
		}
	}
	start := time.Now()
	l := s.a.cfg.Limits
	res, err := s.a.fetcher.Fetch(ctx, fetch.Request{URL: p.URL, SHA256: p.SHA256, Root: root, Dest: rel,
		Extract: p.Extract, Mode: fs.FileMode(p.Mode), Parents: p.Parents,
		Size: p.Size, MaxSize: p.MaxSize, Timeout: millis(p.TimeoutMs),
		Limits: fetch.Limits{MaxSize: l.MaxDownload, MaxUnpack: l.MaxUnpack, MaxUnpackEntries: l.MaxUnpackEntries,
			Deadline: l.DownloadDeadline}}, progress)
	attrs := []any{"url", p.URL, "path", p.Path, "peer", s.peer.Addr, "link", s.peer.Link,
		"duration", time.Since(start).Round(time.Millisecond)}
	if err != nil {
		s.a.log.Info("download failed", append(attrs, "err", err)...)
		return nil, rootpath.Error(p.Path, err)
	}
	s.a.log.Info("download", append(attrs, "source", res.Source, "bytes", res.Bytes, "size", res.Size,
		"attempts", res.Attempts, "resumes", res.Resumes)...)
	out := proto.DownloadResult{
		FileResult: proto.FileResult{Path: p.Path, Size: res.Size, SHA256: res.SHA256, Bytes: res.Bytes,
			DurationMs: msSince(start)},
		Skipped: res.Skipped, Source: res.Source, Attempts: res.Attempts, Resumes: res.Resumes, Extracted: res.Extracted,
	}
	if st, err := root.Stat(rel); err == nil {
		out.Mode, out.ModTime = uint32(st.Mode().Perm()), st.ModTime().UTC()
	}
	return out, nil
}
