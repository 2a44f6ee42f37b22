package fetch

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// partSuffix names a partial download in the cache: HASH.part.
const partSuffix = ".part"

// stalePartial is how long a partial download nobody resumed is kept.
const stalePartial = 7 * 24 * time.Hour

// evict removes the least recently used blobs (by mtime) until the cache
// holds at most CacheMax bytes of them, and partial downloads untouched for
// stalePartial. A hash some Fetch is working on is left alone.
func (f *Fetcher) evict() {
	f.evictMu.Lock()
	defer f.evictMu.Unlock()
	ents, err := os.ReadDir(f.opts.CacheDir)
	if err != nil {
		f.log.Warn("cache eviction", "err", err)
		return
	}
	type blob struct {
		name string
		size int64
		used time.Time
	}
	var blobs []blob
	var total int64
	for _, e := range ents {
		hash, isPart := strings.CutSuffix(e.Name(), partSuffix)
		if !isHash(hash) || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if isPart {
			if time.Since(info.ModTime()) > stalePartial && f.removeIfFree(hash, e.Name()) {
				f.log.Info("cache: removed a stale partial download", "sha256", hash, "bytes", info.Size())
			}
			continue
		}
		blobs = append(blobs, blob{hash, info.Size(), info.ModTime()})
		total += info.Size()
	}
	slices.SortFunc(blobs, func(a, b blob) int { return a.used.Compare(b.used) })
	for _, b := range blobs {
		if total <= f.opts.CacheMax {
			break
		}
		if f.removeIfFree(b.name, b.name) {
			total -= b.size
			f.log.Info("cache: evicted", "sha256", b.name, "bytes", b.size)
		}
	}
}

// removeIfFree removes the cache entry name unless a Fetch holds hash.
func (f *Fetcher) removeIfFree(hash, name string) bool {
	unlock, ok := f.locks.tryLock("sha256:" + hash)
	if !ok {
		return false
	}
	defer unlock()
	err := os.Remove(filepath.Join(f.opts.CacheDir, name))
	return err == nil || errors.Is(err, fs.ErrNotExist)
}
