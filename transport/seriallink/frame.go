package seriallink

import (
	"encoding/binary"
	"hash/crc32"
)

// Line bytes with a fixed meaning; see doc.go for the wire format.
const (
	delim     = 0x00 // ends a frame; also sent before each frame to end a torn one
	startByte = 0xFE // starts a frame; never valid in UTF-8 console text
)

// Frame types.
const (
	typeData   = 1
	typeAck    = 2
	typeSyn    = 3
	typeSynAck = 4
	typeRst    = 5
	typeBeacon = 6
)

// Frame flags.
const (
	flagMore   = 0x01 // DATA: the message continues in the next frame
	flagBinary = 0x02 // DATA: the message is binary, not text
	flagAbort  = 0x04 // DATA: drop the partial message (the writer gave up)
	flagAckReq = 0x08 // ACK: probe, answer at once with an ACK carrying flagEcho
	flagEcho   = 0x10 // ACK: answers the probe whose id is in seq
)

// RST reasons, the one payload byte of an RST frame.
const (
	rstClosed    = 0 // the peer closed the session
	rstUnknown   = 1 // the agent has no such session (it restarted, or a newer SYN replaced it)
	rstVersion   = 2 // the SYN asked for a protocol version the agent does not speak
	protoVersion = 1
	// maxFraming is the newest framing: 2 adds forward error correction to
	// session frames. The hello's version byte stays 1 (older agents refuse
	// anything else); a fifth hello byte offers the framing.
	maxFraming = 2
)

const (
	headerLen = 9
	crcLen    = 4
	// MaxPayloadLimit is the largest frame payload the protocol allows.
	MaxPayloadLimit = 4096
	minPayload      = 16
	// maxEncoded bounds E, the COBS length of a body; it keeps the first
	// length byte in 0x80..0xA0, so it is never 0x00 or 0xFE.
	maxEncoded = headerLen + MaxPayloadLimit + crcLen + (headerLen+MaxPayloadLimit+crcLen)/254 + 1
	// maxWire is the longest frame on the line, of either framing.
	maxWire = 2 + 2 + max(maxEncoded, maxFECEncoded) + 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// header is the fixed start of every frame body.
type header struct {
	typ   byte
	flags byte
	tag   uint16 // session tag, 0 for BEACON
	seq   uint16 // DATA: sequence number; ACK: probe id
	ack   uint16 // next DATA seq the sender of this frame expects
	wnd   byte   // further frames it can buffer beyond ack

	// Framing 2 only, not part of BODY: the frame came with FEC, and the
	// error rate its sender reported.
	fec  bool
	rate byte
}

// frameBuf encodes frames; it keeps its scratch buffers between calls.
type frameBuf struct{ body, cw []byte }

// appendFrame appends the wire form of one frame to dst:
// 0x00 0xFE L1 L2 COBS(header|payload|crc32c) 0x00.
func (fb *frameBuf) appendFrame(dst []byte, h header, payload []byte) []byte {
	b := appendBody(fb.body[:0], 0, h, payload)
	fb.body = b

	dst = append(dst, delim, startByte, 0, 0)
	lenAt := len(dst) - 2
	dst = cobsEncode(dst, b)
	e := len(dst) - lenAt - 2
	dst[lenAt], dst[lenAt+1] = 0x80|byte(e>>7), 0x80|byte(e&0x7F)
	return append(dst, delim)
}

// frameLen returns the length a candidate must have (length bytes plus E)
// given its two length bytes, or 0 if they are not a valid length.
func frameLen(l1, l2 byte) int {
	if l1&0x80 == 0 || l2&0x80 == 0 {
		return 0
	}
	e := int(l1&0x7F)<<7 | int(l2&0x7F)
	if e < headerLen+crcLen+1 || e > maxEncoded {
		return 0
	}
	return 2 + e
}

// decodeFrame checks one candidate (the bytes between 0xFE and the closing
// 0x00) and decodes it into scratch. The payload aliases scratch.
func decodeFrame(scratch, c []byte) (h header, payload, body []byte, ok bool) {
	if len(c) < 2 || frameLen(c[0], c[1]) != len(c) {
		return h, nil, scratch, false
	}
	body, err := cobsDecode(scratch[:0], c[2:])
	if err != nil {
		return h, nil, body, false
	}
	h, payload, ok = parseBody(body, 0)
	return h, payload, body, ok
}

// parseBody checks the CRC at the end of b and splits the BODY that starts
// at b[at]; the payload aliases b.
func parseBody(b []byte, at int) (h header, payload []byte, ok bool) {
	if len(b) < at+headerLen+crcLen {
		return h, nil, false
	}
	n := len(b) - crcLen
	if crc32.Checksum(b[:n], castagnoli) != binary.BigEndian.Uint32(b[n:]) {
		return h, nil, false
	}
	body := b[at:]
	h = header{
		typ:   body[0],
		flags: body[1],
		tag:   binary.BigEndian.Uint16(body[2:]),
		seq:   binary.BigEndian.Uint16(body[4:]),
		ack:   binary.BigEndian.Uint16(body[6:]),
		wnd:   body[8],
	}
	return h, body[headerLen : n-at], true
}
