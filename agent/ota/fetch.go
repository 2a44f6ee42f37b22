package ota

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"time"

	"github.com/boardlink/boardlink/image"
	"github.com/boardlink/boardlink/proto"
)

// fetchAttempts bounds the tries of one chunk; the update stays in prepare
// when they run out, and ota.start resumes it.
const fetchAttempts = 5

// httpClient fetches chunks: bounded waits, so a dead server ends a try.
var httpClient = &http.Client{Timeout: 2 * time.Minute}

// fetchChunks fetches every chunk still missing from the image file at
// url with Range requests, checking each against the manifest.
func (u *Updater) fetchChunks(ctx context.Context, id string, target *os.File, url string, payloadOff int64) {
	u.mu.Lock()
	man := u.man
	var missing []int
	for i := range man.Chunks {
		if u.upd != nil && u.upd.ID == id && !u.upd.has(i) {
			missing = append(missing, i)
		}
	}
	u.mu.Unlock()
	for _, i := range missing {
		data, err := fetchChunk(ctx, url, payloadOff, man, i)
		if err != nil {
			u.log.Error("ota: fetching a chunk", "chunk", i, "url", url, "err", err)
			return
		}
		off, _ := man.ChunkRange(i)
		if _, err := target.WriteAt(data, off); err != nil {
			u.log.Error("ota: writing the slot", "err", err)
			return
		}
		if err := u.markDoneFrom(id, i, 0, int64(len(data)), false); err != nil {
			return
		}
	}
}

func fetchChunk(ctx context.Context, url string, payloadOff int64, man image.Manifest, i int) ([]byte, error) {
	off, n := man.ChunkRange(i)
	var last error
	for attempt := range fetchAttempts {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(100<<attempt)*time.Millisecond + rand.N(100*time.Millisecond)):
			}
		}
		data, err := getRange(ctx, url, payloadOff+off, n)
		if err == nil {
			if err = image.VerifyChunk(man, i, data); err == nil {
				return data, nil
			}
		}
		last = err
		if proto.ReasonOf(err) == proto.ReasonNotFound || ctx.Err() != nil {
			break
		}
	}
	return nil, last
}

func getRange(ctx context.Context, url string, off, n int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusNotFound, http.StatusGone:
		return nil, proto.Errorf(proto.ReasonNotFound, "%s: %s", url, resp.Status)
	default:
		return nil, fmt.Errorf("%s: %s (want 206 for a Range request)", url, resp.Status)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(resp.Body, data); err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	return data, nil
}
