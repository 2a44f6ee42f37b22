package main

// The first update of a board whose running slot was flashed outside
// boardlink (in the factory, or by hand): the agent has no record of the
// slot's chunks, so it reads and hashes the slot on the board against the
// new manifest and copies what matches (agent/ota/hash.go). -factory
// measures, for each of -runs rounds, on a fresh sim board whose slot A is
// a file of -size random bytes written before the agent starts (and
// dropped from the page cache, so the agent reads it from the disk):
//
//   - the first ota.plan of an image whose payload is slot A with 40 bytes
//     changed in its middle chunk: the board hashes the whole slot; the
//     time of the call over the bytes it read is the hashing throughput;
//   - a second ota.plan of the same image, answered from the kept hashes;
//   - the update to that image: the link bytes with the adaptive source
//     (one chunk sent, the rest copied from slot A);
//   - then a full update, into slot A, of an image of a fresh random
//     payload of the same size: every chunk crosses the link, which is
//     what the first update cost before the agent hashed slots it did not
//     write (have=0 copy=0 need=all).

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boardlink/boardlink/bench/internal/benchkit"
	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/image"
)

// factoryDiff is how many bytes the image differs from the factory slot.
const factoryDiff = 40

// factoryRun is one round of -factory.
type factoryRun struct {
	hashed     int64         // bytes the first plan read
	hashTook   time.Duration // the first ota.plan call
	cachedTook time.Duration // the second, from the kept hashes
	with       otaRun        // the update 40 bytes off the factory slot
	without    otaRun        // a full update of a same-sized image
}

func runFactory(ctx context.Context, size, chunk int64, runs int) error {
	bn, bin, trust, err := newBench(ctx, size, chunk)
	if err != nil {
		return err
	}
	defer os.RemoveAll(bn.dir)
	var rs []factoryRun
	for r := range runs {
		fr, err := bn.factoryRound(ctx, bin, trust, filepath.Join(bn.dir, fmt.Sprintf("round%d", r+1)))
		if err != nil {
			return fmt.Errorf("round %d: %w", r+1, err)
		}
		fmt.Printf("round %d: first plan hashed %s in %s (%.0f MB/s), second plan %s; %s on the link with the adaptive source, %s without\n",
			r+1, benchkit.MiB(fr.hashed), benchkit.Seconds(fr.hashTook), mbps(fr.hashed, fr.hashTook), benchkit.Seconds(fr.cachedTook),
			benchkit.MiB(fr.with.bytes), benchkit.MiB(fr.without.bytes))
		rs = append(rs, fr)
	}
	with := median(rs, func(f factoryRun) float64 { return float64(f.with.bytes) })
	without := median(rs, func(f factoryRun) float64 { return float64(f.without.bytes) })
	hashTook := median(rs, func(f factoryRun) float64 { return f.hashTook.Seconds() })
	fmt.Println()
	fmt.Printf("first update of a factory-flashed slot: payload %s in %d chunks of %s, the image %d bytes off slot A in chunk %d; rounds: %d (median); CPUs: %d\n",
		benchkit.Human(size), bn.chunks, benchkit.Human(chunk), factoryDiff, bn.chunks/2, runs, runtime.NumCPU())
	fmt.Printf("  link bytes with the adaptive source:    %s (%d chunk sent, %d copied), update %.3fs\n",
		benchkit.MiB(int64(with)), rs[0].with.sent, rs[0].with.copied, median(rs, func(f factoryRun) float64 { return f.with.took.Seconds() }))
	fmt.Printf("  link bytes without (every chunk sent):  %s (%d chunks sent), update %.3fs\n",
		benchkit.MiB(int64(without)), rs[0].without.sent, median(rs, func(f factoryRun) float64 { return f.without.took.Seconds() }))
	fmt.Printf("  ratio without/with: %.1f\n", without/with)
	fmt.Printf("  hashing slot A on the board (first ota.plan, read from the disk): %s in %.3fs = %.0f MB/s\n",
		benchkit.MiB(rs[0].hashed), hashTook, mbps(rs[0].hashed, time.Duration(hashTook*float64(time.Second))))
	fmt.Printf("  second ota.plan (the kept hashes, nothing read): %.3fs\n", median(rs, func(f factoryRun) float64 { return f.cachedTook.Seconds() }))
	fmt.Println("link bytes: the stream payload the connection carried for the chunks sent (each with its 4-byte index); JSON-RPC and")
	fmt.Println("  WebSocket/TCP framing are not counted. \"Without\" is a full update of an image of the same size into the other slot:")
	fmt.Println("  what the first update of a slot the agent did not write cost before it hashed such slots.")
	return nil
}

// factoryRound runs one round on a fresh board in dir (see runFactory).
func (bn *bench) factoryRound(ctx context.Context, bin, trust, dir string) (factoryRun, error) {
	var fr factoryRun
	slots := filepath.Join(dir, "state", "slots")
	if err := os.MkdirAll(slots, 0o755); err != nil {
		return fr, err
	}
	defer os.RemoveAll(dir)
	factory := filepath.Join(slots, "A.img")
	if err := benchkit.WriteRandom(factory, bn.size); err != nil {
		return fr, err
	}
	payload := filepath.Join(dir, "payload")
	if err := benchkit.CopyFile(factory, payload); err != nil {
		return fr, err
	}
	if err := flipBytes(payload, int64(bn.chunks/2)*bn.chunk+100, factoryDiff); err != nil {
		return fr, err
	}
	delta, err := bn.build(payload)
	if err != nil {
		return fr, err
	}
	if err := benchkit.WriteRandom(payload, bn.size); err != nil {
		return fr, err
	}
	full, err := bn.build(payload)
	if err != nil {
		return fr, err
	}
	if err := dropCache(factory); err != nil {
		return fr, err
	}

	b, err := startBoard(ctx, bin, dir, trust)
	if err != nil {
		return fr, err
	}
	defer b.stop()
	c, err := dispatcher.Dial(ctx, b.ws, b.opts)
	if err != nil {
		return fr, err
	}
	defer c.Close()
	bn.b, bn.c = b, c

	im, err := image.OpenFile(delta)
	if err != nil {
		return fr, err
	}
	defer im.Close()
	for i, want := range []int64{bn.size, 0} {
		start := time.Now()
		plan, err := c.OTAPlan(ctx, im, false)
		took := time.Since(start)
		if err != nil {
			return fr, err
		}
		if plan.Hashed != want || len(plan.Need) != 1 || plan.Copy != bn.chunks-1 {
			return fr, fmt.Errorf("plan %d: hashed %d bytes, %d to send, %d to copy; want %d hashed, 1 to send, %d to copy",
				i+1, plan.Hashed, len(plan.Need), plan.Copy, want, bn.chunks-1)
		}
		if i == 0 {
			fr.hashed, fr.hashTook = plan.Hashed, took
		} else {
			fr.cachedTook = took
		}
	}
	if fr.with, err = bn.update(ctx, delta, 1); err != nil {
		return fr, fmt.Errorf("the update from the factory slot: %w", err)
	}
	if fr.without, err = bn.update(ctx, full, -1); err != nil {
		return fr, fmt.Errorf("the full update: %w", err)
	}
	return fr, nil
}

// flipBytes inverts n bytes of the file at path from off.
func flipBytes(path string, off int64, n int) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		return err
	}
	for i := range buf {
		buf[i] ^= 0xff
	}
	if _, err := f.WriteAt(buf, off); err != nil {
		return err
	}
	return f.Close()
}

// dropCache writes the file at path to the disk and drops it from the
// page cache, so that the next read of it reads the disk.
func dropCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("fadvise %s: %w", path, err)
	}
	return nil
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / max(d.Seconds(), 1e-9) }
