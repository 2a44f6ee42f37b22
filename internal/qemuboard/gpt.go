package qemuboard

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"unicode/utf16"
)

// GPT partition type GUIDs, as written in text.
const (
	TypeESP   = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	TypeLinux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
)

const (
	sector      = 512
	gptEntries  = 128 // entries in the table
	gptEntrySz  = 128 // bytes per entry
	gptTableLBA = gptEntries * gptEntrySz / sector
	alignLBA    = 2048 // partitions start on 1 MiB boundaries
)

// Partition is one partition of a disk that WriteGPT lays out.
type Partition struct {
	Name string // the GPT partition name (PARTLABEL)
	Type string // a type GUID: TypeESP, TypeLinux
	Size int64  // bytes, rounded up to whole MiB
	// Image, if set, is a file copied to the start of the partition (at
	// most Size bytes); the rest reads as zeros.
	Image string
}

// WriteGPT writes a disk image at path: a protective MBR, a GPT with
// parts in order, each starting on a MiB boundary, their images, and the
// backup GPT at the end. It needs no privileges and no partitioning tool.
// Partitions are numbered from 1 in order, as GRUB (gptN) and Linux (pN)
// number them.
func WriteGPT(path string, parts []Partition) error {
	var entries [gptEntries * gptEntrySz]byte
	lba := int64(alignLBA)
	starts := make([]int64, len(parts))
	for i, p := range parts {
		if i >= gptEntries {
			return fmt.Errorf("gpt: %d partitions, at most %d", len(parts), gptEntries)
		}
		typ, err := parseGUID(p.Type)
		if err != nil {
			return fmt.Errorf("gpt: partition %s: %w", p.Name, err)
		}
		size := (p.Size + 1<<20 - 1) &^ (1<<20 - 1) / sector
		if size == 0 {
			return fmt.Errorf("gpt: partition %s has no size", p.Name)
		}
		e := entries[i*gptEntrySz : (i+1)*gptEntrySz]
		copy(e[0:16], typ[:])
		uniq, err := randomGUID()
		if err != nil {
			return err
		}
		copy(e[16:32], uniq[:])
		binary.LittleEndian.PutUint64(e[32:], uint64(lba))
		binary.LittleEndian.PutUint64(e[40:], uint64(lba+size-1))
		for j, r := range utf16.Encode([]rune(p.Name)) {
			if j == 36 {
				return fmt.Errorf("gpt: partition name %q is longer than 36 characters", p.Name)
			}
			binary.LittleEndian.PutUint16(e[56+2*j:], r)
		}
		starts[i] = lba
		lba += size
	}
	lastUsable := lba + alignLBA - 1 // room at the end, then the backup table
	last := lastUsable + gptTableLBA + 1
	diskGUID, err := randomGUID()
	if err != nil {
		return err
	}

	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("gpt: %w", err)
	}
	defer f.Close()
	if err := f.Truncate((last + 1) * sector); err != nil {
		return fmt.Errorf("gpt: %w", err)
	}

	// The protective MBR: one partition of type 0xEE covering the disk.
	var mbr [sector]byte
	pe := mbr[446:]
	pe[1], pe[2], pe[3] = 0, 2, 0 // CHS of LBA 1
	pe[4] = 0xEE
	pe[5], pe[6], pe[7] = 0xFF, 0xFF, 0xFF
	binary.LittleEndian.PutUint32(pe[8:], 1)
	binary.LittleEndian.PutUint32(pe[12:], uint32(min(last, 0xFFFFFFFF)))
	mbr[510], mbr[511] = 0x55, 0xAA

	entriesCRC := crc32.ChecksumIEEE(entries[:])
	header := func(self, other, table int64) []byte {
		h := make([]byte, sector)
		copy(h, "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], uint64(self))
		binary.LittleEndian.PutUint64(h[32:], uint64(other))
		binary.LittleEndian.PutUint64(h[40:], 2+gptTableLBA)
		binary.LittleEndian.PutUint64(h[48:], uint64(lastUsable))
		copy(h[56:72], diskGUID[:])
		binary.LittleEndian.PutUint64(h[72:], uint64(table))
		binary.LittleEndian.PutUint32(h[80:], gptEntries)
		binary.LittleEndian.PutUint32(h[84:], gptEntrySz)
		binary.LittleEndian.PutUint32(h[88:], entriesCRC)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
		return h
	}
	writes := []struct {
		off  int64
		data []byte
	}{
		{0, mbr[:]},
		{1 * sector, header(1, last, 2)},
		{2 * sector, entries[:]},
		{(last - gptTableLBA) * sector, entries[:]},
		{last * sector, header(last, 1, last-gptTableLBA)},
	}
	for _, w := range writes {
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			return fmt.Errorf("gpt: %w", err)
		}
	}
	for i, p := range parts {
		if p.Image == "" {
			continue
		}
		if err := copyInto(f, starts[i]*sector, p.Image, p.Size); err != nil {
			return fmt.Errorf("gpt: partition %s: %w", p.Name, err)
		}
	}
	return f.Close()
}

// copyInto copies the file src to dst at off, refusing one longer than max.
func copyInto(dst *os.File, off int64, src string, max int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	n, err := io.Copy(io.NewOffsetWriter(dst, off), io.LimitReader(in, max+1))
	if err != nil {
		return err
	}
	if n > max {
		return fmt.Errorf("%s is larger than the partition (%d bytes)", src, max)
	}
	return nil
}

// parseGUID encodes a GUID in text as GPT stores it: the first three
// fields little-endian, the rest as written.
func parseGUID(s string) ([16]byte, error) {
	var g [16]byte
	var a uint32
	var b, c uint16
	var d [8]byte
	if _, err := fmt.Sscanf(s, "%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x", &a, &b, &c,
		&d[0], &d[1], &d[2], &d[3], &d[4], &d[5], &d[6], &d[7]); err != nil {
		return g, fmt.Errorf("bad GUID %q: %w", s, err)
	}
	binary.LittleEndian.PutUint32(g[0:], a)
	binary.LittleEndian.PutUint16(g[4:], b)
	binary.LittleEndian.PutUint16(g[6:], c)
	copy(g[8:], d[:])
	return g, nil
}

// randomGUID is a version 4 GUID in GPT's byte order.
func randomGUID() ([16]byte, error) {
	var g [16]byte
	if _, err := rand.Read(g[:]); err != nil {
		return g, err
	}
	g[7] = g[7]&0x0F | 0x40 // version 4, in the little-endian third field
	g[8] = g[8]&0x3F | 0x80 // RFC 4122 variant
	return g, nil
}
