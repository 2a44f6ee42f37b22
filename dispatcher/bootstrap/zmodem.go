package bootstrap

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"time"
)

// zmodemCancel is what ends a ZMODEM receiver: eight CANs, then eight
// backspaces to erase them from a shell's line should it be gone already.
var zmodemCancel = append(bytes.Repeat([]byte{0x18}, 8), bytes.Repeat([]byte{8}, 8)...)

// zmodem sends the chunks not ok with one run of sz on this host to rz
// in dir on the board; the caller checks their hashes afterwards.
func (b *run) zmodem(ctx context.Context, dir string, chunks [][]byte, ok []bool) error {
	tmp, err := os.MkdirTemp("", "boardlink-zmodem-")
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	defer os.RemoveAll(tmp)
	var files []string
	for i, c := range chunks {
		if ok[i] {
			continue
		}
		f := filepath.Join(tmp, fmt.Sprintf("c.%d", i))
		if err := os.WriteFile(f, c, 0o600); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
		files = append(files, f)
	}

	tb, te, begin, end := b.sh.marks()
	b.sh.drop()
	// -y: a partial chunk of an interrupted run is overwritten.
	if err := b.sh.typeLine(ctx, "echo "+tb+"; cd "+shQuote(dir)+" && rz -b -y -q; echo "+te+":$?; cd /"); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, b.opts.CommandTimeout)
	_, err = b.sh.wait(wctx, func(h []byte) (int, bool) {
		i := bytes.Index(h, []byte(begin))
		return i + len(begin), i >= 0
	})
	cancel()
	if err != nil {
		return err
	}

	// The line's bytes go to sz until rz's end marker shows; sz's go to
	// the line.
	// A pipe of the system's: exec waits for no copier into sz's stdin,
	// and the pump's writes fail once sz is gone.
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	defer pw.Close()
	pump, stopPump := context.WithCancel(ctx)
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		for {
			got, err := b.sh.wait(pump, func(h []byte) (int, bool) {
				return len(h), len(h) > 0 && !bytes.Contains(h, []byte(end))
			})
			if err != nil {
				return
			}
			if _, err := pw.Write(got); err != nil {
				return
			}
		}
	}()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, b.sz, append([]string{"-b", "-q"}, files...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pr, &rawWriter{l: b.sh.line}, &stderr
	b.sh.tracef("ZMODEM: sz %d chunks", len(files))
	szErr := cmd.Start()
	pr.Close()
	if szErr == nil {
		szErr = cmd.Wait()
	}
	stopPump()
	<-pumped

	// rz ends after sz; the shell then prints the end marker.
	endRe := regexp.MustCompile(regexp.QuoteMeta(end) + `:(\d+)[\r\n]`)
	wctx, cancel = context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = b.sh.wait(wctx, func(h []byte) (int, bool) {
		m := endRe.FindIndex(h)
		return len(h), m != nil
	})
	if err != nil {
		// rz still waits: end it.
		cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
		_ = b.sh.write(cctx, zmodemCancel, "ZMODEM cancel")
		ccancel()
	}
	if szErr != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return fmt.Errorf("bootstrap: sz: %w: %s", szErr, bytes.TrimSpace(stderr.Bytes()))
	}
	return err
}

// rawWriter writes to the line untraced (ZMODEM's binary frames).
type rawWriter struct{ l *line }

func (w *rawWriter) Write(p []byte) (int, error) { return w.l.rw.Write(p) }
