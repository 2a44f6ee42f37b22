package dispatcher

import (
	"crypto/ed25519"
	"crypto/rand"
	"sync"
	"testing"

	"github.com/boardlink/boardlink/image"
)

func testImage(t *testing.T, size int, chunk int64) *image.Image {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(nil)
	payload := make([]byte, size)
	rand.Read(payload)
	im, err := image.BuildBytes(payload, image.BuildOptions{Key: key, Models: []string{"sim"}, Version: "1.0.0", ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// TestChunkCache: 16 boards asking for every chunk, each at its own pace,
// read each chunk from the file once when the image fits the bound; with
// a smaller bound the cache stays within it plus one chunk per reader.
func TestChunkCache(t *testing.T) {
	const chunk = 4096
	im := testImage(t, 64*chunk, chunk)
	for _, tc := range []struct {
		name    string
		bound   int64
		oneRead bool
	}{{"fits", 64 * chunk, true}, {"bounded", 8 * chunk, false}} {
		t.Run(tc.name, func(t *testing.T) { checkChunkCache(t, im, tc.bound, tc.oneRead) })
	}
}

func checkChunkCache(t *testing.T, im *image.Image, bound int64, oneRead bool) {
	chunk := im.Manifest.ChunkSize
	c := NewChunkCache(im, bound)
	all := make([]int, len(im.Manifest.Chunks))
	for i := range all {
		all[i] = i
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := int64(0)
	for range 16 {
		wg.Go(func() {
			c.Expect(all)
			for i := range im.Manifest.Chunks {
				data, release, err := c.Chunk(i)
				if err != nil {
					t.Error(err)
					return
				}
				if image.VerifyChunk(im.Manifest, i, data) != nil {
					t.Errorf("chunk %d served wrong", i)
				}
				c.mu.Lock()
				mu.Lock()
				peak = max(peak, c.bytes)
				mu.Unlock()
				c.mu.Unlock()
				release()
			}
		})
	}
	wg.Wait()
	if got := c.BytesRead(); oneRead && got != im.Manifest.PayloadSize {
		t.Fatalf("read %d bytes for a %d-byte payload and 16 readers", got, im.Manifest.PayloadSize)
	}
	if peak > bound+16*chunk {
		t.Fatalf("the cache held %d bytes, bound %d plus one chunk per reader", peak, bound)
	}
	t.Logf("16 readers of %d chunks: %d bytes read from the file (payload %d), %d hits, peak %d bytes cached",
		len(im.Manifest.Chunks), c.BytesRead(), im.Manifest.PayloadSize, c.Hits(), peak)
}
