package dispatcher

import (
	"bytes"
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

// TestChunkCacheEvictsUnexpectedFirst: over its bound, the cache drops a
// chunk no board expects any more before one a board still will ask for,
// even a more recently used one.
func TestChunkCacheEvictsUnexpectedFirst(t *testing.T) {
	const chunk = 4096
	im := testImage(t, 3*chunk, chunk)
	c := NewChunkCache(im, 2*chunk)
	c.Expect([]int{0, 0, 1, 2}) // chunk 0 twice: two boards will ask for it
	for _, i := range []int{0, 1, 2} {
		_, release, err := c.Chunk(i)
		if err != nil {
			t.Fatal(err)
		}
		release()
		release() // twice is once
	}
	read := c.BytesRead()
	if _, release, err := c.Chunk(0); err != nil || c.BytesRead() != read || c.Hits() != 1 {
		t.Fatalf("chunk 0, still expected, was not kept: %v, read %d more", err, c.BytesRead()-read)
	} else {
		release()
	}
	if _, release, err := c.Chunk(1); err != nil || c.BytesRead() != read+chunk {
		t.Fatalf("chunk 1, expected by nobody, was kept: %v", err)
	} else {
		release()
	}
}

// TestChunkCacheBadChunk: a chunk that does not match the signed
// manifest is an error for every caller, and is read again by the next
// one rather than served from the cache.
func TestChunkCacheBadChunk(t *testing.T) {
	const chunk = 4096
	_, key, _ := ed25519.GenerateKey(nil)
	payload := make([]byte, 2*chunk)
	rand.Read(payload)
	var buf bytes.Buffer
	if _, err := image.Build(&buf, bytes.NewReader(payload), int64(len(payload)), image.BuildOptions{Key: key,
		Models: []string{"sim"}, Version: "1.0.0", ChunkSize: chunk}); err != nil {
		t.Fatal(err)
	}
	good, err := image.Open(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	raw := bytes.Clone(buf.Bytes())
	raw[good.PayloadOffset()+chunk+7] ^= 0xff // a byte of chunk 1
	im, err := image.Open(bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	c := NewChunkCache(im, 0)
	for range 2 {
		if _, _, err := c.Chunk(1); err == nil {
			t.Fatal("a corrupt chunk was served")
		}
	}
	if c.BytesRead() != 2*chunk || c.Hits() != 0 {
		t.Fatalf("read %d bytes, %d hits: the bad chunk was not read again", c.BytesRead(), c.Hits())
	}
	if data, release, err := c.Chunk(0); err != nil || !bytes.Equal(data, payload[:chunk]) {
		t.Fatalf("chunk 0: %v", err)
	} else {
		release()
	}
}
