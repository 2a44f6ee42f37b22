package bootstrap

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// maxAttempts is how often a chunk is sent before the upload gives up: a
// chunk that arrives wrong (a byte lost on the line) is sent again.
const maxAttempts = 3

// printfLine is how many bytes one printf command carries: 4 characters
// each, under busybox's 1024-character line editor limit.
const printfLine = 200

// send puts bin on the board at Dir/boardlinkd: compressed when the board
// can decompress, in chunks each checked by sha256 on the board, kept in
// a directory named by the upload's hash so that a later run sends only
// the chunks missing.
func (b *run) send(ctx context.Context, bin []byte) error {
	o := b.opts
	b.res.Remote = o.Dir + "/boardlinkd"
	want := sum(bin)
	sh := b.tools.sha256
	out, err := b.sh.check(ctx, o.CommandTimeout, "mkdir -p "+shQuote(o.Dir)+" && { "+sh+" "+shQuote(b.res.Remote)+" 2>/dev/null; true; }")
	if err != nil {
		return err
	}
	if hashOf(out, b.res.Remote) == want {
		b.res.Present = true
		return nil
	}

	payload := bin
	if b.tools.gunzip != "" && !o.NoCompress {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		_, _ = zw.Write(bin)
		if err := zw.Close(); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
		payload, b.res.Compressed = buf.Bytes(), true
	}
	sz, szErr := exec.LookPath("sz")
	b.res.Encoding = o.Encoding
	if b.res.Encoding == "" {
		switch {
		case b.tools.rz && szErr == nil:
			b.res.Encoding = "zmodem"
		case b.tools.base64 != "":
			b.res.Encoding = "base64"
		default:
			b.res.Encoding = "printf"
		}
	}
	switch {
	case b.res.Encoding == "base64" && b.tools.base64 == "":
		return fmt.Errorf("%w: the board has no base64 (nor busybox with one)", ErrCommand)
	case b.res.Encoding == "zmodem" && !b.tools.rz:
		return fmt.Errorf("%w: the board has no rz (ZMODEM)", ErrCommand)
	case b.res.Encoding == "zmodem" && szErr != nil:
		return fmt.Errorf("bootstrap: ZMODEM needs sz on this host (Debian package lrzsz): %w", szErr)
	}
	b.sz = sz
	parts := fmt.Sprintf("%s/parts-%s", o.Dir, sum(payload)[:16])
	if err := b.upload(ctx, payload, parts); err != nil {
		return err
	}

	// Join the chunks, decompress, check the whole and put it in place.
	join := fmt.Sprintf(`{ i=0; while [ $i -lt %d ]; do cat %s/c.$i || exit 1; i=$((i+1)); done; }`, b.res.Chunks, shQuote(parts))
	if b.res.Compressed {
		join += " | " + b.tools.gunzip
	}
	tmp := b.res.Remote + ".new"
	out, err = b.sh.check(ctx, o.CommandTimeout, join+" > "+shQuote(tmp)+" && "+sh+" "+shQuote(tmp))
	if err != nil {
		return err
	}
	if got := hashOf(out, tmp); got != want {
		// The chunks were each right: what is wrong is the join or the
		// decompression. Start over next time.
		_, _ = b.sh.check(ctx, o.CommandTimeout, "rm -rf "+shQuote(parts)+" "+shQuote(tmp))
		return fmt.Errorf("%w: the agent joined on the board has sha256 %q, want %s", ErrCommand, got, want)
	}
	_, err = b.sh.check(ctx, o.CommandTimeout, "chmod 755 "+shQuote(tmp)+" && mv -f "+shQuote(tmp)+" "+shQuote(b.res.Remote)+" && rm -rf "+shQuote(parts))
	return err
}

// upload sends payload's chunks to dir/c.N, skipping those the board
// has with the right hash. An interrupted upload returns an
// *InterruptedError saying how much is on the board.
func (b *run) upload(ctx context.Context, payload []byte, dir string) error {
	o := b.opts
	var chunks [][]byte
	for off := 0; off < len(payload); off += o.ChunkSize {
		chunks = append(chunks, payload[off:min(off+o.ChunkSize, len(payload))])
	}
	b.res.Total, b.res.Chunks = int64(len(payload)), len(chunks)

	// What an earlier run left: this upload's chunks, and nothing of
	// another upload (another agent's parts are removed).
	if _, err := b.sh.check(ctx, o.CommandTimeout, "mkdir -p "+shQuote(dir)+" && cd "+shQuote(o.Dir)+
		` && for d in parts-*; do [ "$d" = `+shQuote(dir[len(o.Dir)+1:])+` ] || rm -rf "$d"; done; cd /`); err != nil {
		return err
	}
	have, err := b.hashes(ctx, dir)
	if err != nil {
		return err
	}
	ok := make([]bool, len(chunks))
	var onBoard int64
	done := 0
	mark := func(i int, sent bool) {
		ok[i], onBoard, done = true, onBoard+int64(len(chunks[i])), done+1
		if sent {
			b.res.Sent++
			if o.Progress != nil {
				o.Progress(Progress{Chunk: i, Chunks: len(chunks), Sent: b.res.Sent, OnBoard: onBoard, Total: b.res.Total})
			}
		}
	}
	stopped := func(err error) error {
		if ctx.Err() != nil {
			return &InterruptedError{OnBoard: onBoard, Total: b.res.Total, Chunks: done, Of: len(chunks), Err: err}
		}
		return err
	}
	for i, c := range chunks {
		if have[i] == sum(c) {
			mark(i, false)
		}
	}
	if b.res.Encoding == "zmodem" && done < len(chunks) {
		// One sz run sends every missing chunk; one that did not arrive
		// intact goes by base64 or printf below.
		if err := b.zmodem(ctx, dir, chunks, ok); err != nil {
			if ctx.Err() != nil {
				return stopped(err)
			}
			b.sh.tracef("ZMODEM failed, typing what is missing: %v", err)
		}
		if have, err = b.hashes(ctx, dir); err != nil {
			return stopped(err)
		}
		for i, c := range chunks {
			if !ok[i] && have[i] == sum(c) {
				mark(i, true)
			}
		}
	}
	for i, c := range chunks {
		if ok[i] {
			continue
		}
		if err := b.chunk(ctx, dir, i, c); err != nil {
			return stopped(err)
		}
		mark(i, true)
	}
	return nil
}

// hashes are the sha256 of the chunk files in dir on the board, by number.
func (b *run) hashes(ctx context.Context, dir string) (map[int]string, error) {
	out, err := b.sh.check(ctx, b.opts.CommandTimeout, "cd "+shQuote(dir)+
		` && for f in c.*; do [ -f "$f" ] && `+b.tools.sha256+` "$f"; done; cd /`)
	if err != nil {
		return nil, err
	}
	have := map[int]string{}
	for _, m := range regexp.MustCompile(`(?m)^([0-9a-f]{64})\s+\*?c\.(\d+)\r?$`).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[2])
		have[n] = m[1]
	}
	return have, nil
}

// chunk sends chunk i to dir/c.i until the board's sha256 of it is right.
func (b *run) chunk(ctx context.Context, dir string, i int, c []byte) error {
	name := fmt.Sprintf("c.%d", i)
	path := shQuote(dir + "/" + name)
	want := sum(c)
	var got string
	for range maxAttempts {
		var out string
		var err error
		enc := b.res.Encoding
		if enc == "zmodem" {
			enc = "printf"
			if b.tools.base64 != "" {
				enc = "base64"
			}
		}
		switch enc {
		case "base64":
			// A here-document: the shell reads the lines itself, so no
			// tool on the board has to stop at the chunk's end.
			end := "BL_END_" + b.sh.token
			body := base64Lines(c)
			body = append(body, end+"\n"...)
			out, err = b.sh.check(ctx, b.opts.CommandTimeout, b.tools.base64+" > "+path+" <<'"+end+"' && "+b.tools.sha256+" "+path,
				withBody(body, fmt.Sprintf("%d lines of base64 (chunk %d, %d bytes)", bytes.Count(body, []byte("\n")), i, len(c))))
		default:
			if err = b.sh.typeLine(ctx, ": > "+path); err != nil {
				return err
			}
			var lines []byte
			for off := 0; off < len(c); off += printfLine {
				lines = append(lines, "printf '"...)
				for _, x := range c[off:min(off+printfLine, len(c))] {
					lines = append(lines, fmt.Sprintf(`\%03o`, x)...)
				}
				lines = append(lines, "' >> "+path+"\n"...)
			}
			if err = b.sh.write(ctx, lines, fmt.Sprintf("%d printf commands (chunk %d, %d bytes)", bytes.Count(lines, []byte("\n")), i, len(c))); err != nil {
				return err
			}
			out, err = b.sh.check(ctx, b.opts.CommandTimeout, b.tools.sha256+" "+path)
		}
		if err != nil && ctx.Err() != nil {
			return err
		}
		if got = hashOf(out, dir+"/"+name); err == nil && got == want {
			return nil
		}
		b.sh.tracef("chunk %d arrived with sha256 %q, want %s (%v): sending it again", i, got, want, err)
	}
	return fmt.Errorf("%w: chunk %d did not arrive intact in %d attempts (sha256 %q, want %s)", ErrCommand, i, maxAttempts, got, want)
}

// base64Lines encodes b in lines of 76 characters, as base64 writes.
func base64Lines(b []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(b)
	var out strings.Builder
	for len(enc) > 76 {
		out.WriteString(enc[:76] + "\n")
		enc = enc[76:]
	}
	out.WriteString(enc + "\n")
	return []byte(out.String())
}
