package dispatcher

import (
	"container/list"
	"errors"
	"io"
	"sync"
	"sync/atomic"

	"github.com/boardlink/boardlink/image"
)

// ChunkCache serves one image's chunks to many boards at once, reading and
// hashing each chunk from the file once while it stays cached (like
// otaclient's ota_proxy). Memory is bounded: beyond maxBytes, chunks no
// board is sending are evicted, those no board still expects (Expect)
// first, then the least recently used; chunks in use are never evicted,
// so the bound can be passed by at most one chunk per board sending at
// that moment. An image that fits in the bound is read exactly once; a
// larger one is read again for boards that fall out of step.
type ChunkCache struct {
	im       *image.Image
	maxBytes int64

	mu    sync.Mutex
	ents  map[int]*cacheEntry
	lru   *list.List  // unused entries, least recently used first
	bytes int64       // held by ents
	want  map[int]int // chunk -> boards that will still ask for it

	read atomic.Int64 // bytes read from the image file
	hits atomic.Int64
}

type cacheEntry struct {
	i     int
	data  []byte
	err   error
	ready chan struct{} // closed once data or err is set
	refs  int
	elem  *list.Element // in lru while refs == 0
}

// NewChunkCache returns a cache over im holding up to maxBytes of chunks
// no board is using (default 256 MiB: most images are read once).
func NewChunkCache(im *image.Image, maxBytes int64) *ChunkCache {
	if maxBytes <= 0 {
		maxBytes = 256 << 20
	}
	return &ChunkCache{im: im, maxBytes: maxBytes, ents: map[int]*cacheEntry{}, lru: list.New(), want: map[int]int{}}
}

// Expect says a board will ask for these chunks: they are kept in
// preference to chunks nobody expects any more.
func (c *ChunkCache) Expect(chunks []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, i := range chunks {
		c.want[i]++
	}
}

// Chunk returns chunk i, verified against the manifest. Concurrent callers
// of the same chunk share one read.
func (c *ChunkCache) Chunk(i int) ([]byte, func(), error) {
	c.mu.Lock()
	if c.want[i] > 0 {
		c.want[i]--
	}
	e := c.ents[i]
	if e == nil {
		e = &cacheEntry{i: i, ready: make(chan struct{})}
		c.ents[i] = e
		e.refs++
		c.mu.Unlock()
		e.data, e.err = c.load(i)
		c.mu.Lock()
		c.bytes += int64(len(e.data))
		close(e.ready)
		if e.err != nil {
			delete(c.ents, i) // the next caller tries again
		}
	} else {
		c.hits.Add(1)
		if e.refs == 0 && e.elem != nil {
			c.lru.Remove(e.elem)
			e.elem = nil
		}
		e.refs++
	}
	c.mu.Unlock()
	<-e.ready
	if e.err != nil {
		c.release(e)
		return nil, nil, e.err
	}
	var once sync.Once
	return e.data, func() { once.Do(func() { c.release(e) }) }, nil
}

func (c *ChunkCache) load(i int) ([]byte, error) {
	_, n := c.im.Manifest.ChunkRange(i)
	data := make([]byte, n)
	if _, err := c.im.Chunk(i).ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	c.read.Add(n)
	if err := image.VerifyChunk(c.im.Manifest, i, data); err != nil {
		return nil, err
	}
	return data, nil
}

func (c *ChunkCache) release(e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refs--
	if e.refs > 0 || c.ents[e.i] != e {
		return
	}
	e.elem = c.lru.PushBack(e)
	for c.bytes > c.maxBytes && c.lru.Len() > 0 {
		victim := c.lru.Front()
		for el := victim; el != nil; el = el.Next() {
			if c.want[el.Value.(*cacheEntry).i] == 0 {
				victim = el // nobody expects it any more
				break
			}
		}
		old := c.lru.Remove(victim).(*cacheEntry)
		old.elem = nil
		delete(c.ents, old.i)
		c.bytes -= int64(len(old.data))
	}
}

// BytesRead counts the bytes read from the image file so far.
func (c *ChunkCache) BytesRead() int64 { return c.read.Load() }

// Hits counts the chunks served without a read.
func (c *ChunkCache) Hits() int64 { return c.hits.Load() }
