package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Binary frames carry stream data. Layout (big-endian):
//
//	byte 0     frame kind (FrameData, FrameCredit, FrameFin, FrameReset)
//	bytes 1-4  stream id
//	bytes 5-   payload: data bytes (DATA); a uint32 byte increment (CREDIT);
//	           nothing (FIN); a reason string such as "not_found" (RST)
//
// Each direction of a stream starts with StreamWindow bytes of credit. A
// sender never has more unacknowledged bytes in flight than the credit the
// receiver granted; the receiver grants more as its reader consumes data.
// Stream ids are chosen by the side that opens the stream: odd by the
// client (the side that dialed), even by the agent. A stream named in a
// request may be written by the requester only after the response arrives.
const (
	FrameData   byte = 0
	FrameCredit byte = 1
	FrameFin    byte = 2
	FrameReset  byte = 3

	StreamHeaderLen = 5
	StreamWindow    = 256 << 10
)

// MaxMessage is the largest message either end must accept, on every
// link; a larger one is discarded and answered with reason too_large.
const MaxMessage = 1 << 20

// StreamFrame is one decoded binary frame.
type StreamFrame struct {
	Kind    byte
	Stream  uint32
	Payload []byte // aliases the decoded buffer
}

// ErrBadFrame is wrapped by every binary-frame decoding error.
var ErrBadFrame = errors.New("bad stream frame")

// DecodeStreamFrame parses a binary frame. It never panics.
func DecodeStreamFrame(b []byte) (StreamFrame, error) {
	if len(b) < StreamHeaderLen {
		return StreamFrame{}, fmt.Errorf("%w: %d bytes, need %d", ErrBadFrame, len(b), StreamHeaderLen)
	}
	f := StreamFrame{Kind: b[0], Stream: binary.BigEndian.Uint32(b[1:5]), Payload: b[5:]}
	switch f.Kind {
	case FrameData, FrameReset:
	case FrameCredit:
		if len(f.Payload) != 4 {
			return StreamFrame{}, fmt.Errorf("%w: credit payload of %d bytes", ErrBadFrame, len(f.Payload))
		}
	case FrameFin:
		if len(f.Payload) != 0 {
			return StreamFrame{}, fmt.Errorf("%w: FIN with payload", ErrBadFrame)
		}
	default:
		return StreamFrame{}, fmt.Errorf("%w: unknown kind %d", ErrBadFrame, f.Kind)
	}
	if f.Stream == 0 {
		return StreamFrame{}, fmt.Errorf("%w: stream id 0", ErrBadFrame)
	}
	return f, nil
}

// Credit returns the increment of a CREDIT frame.
func (f StreamFrame) Credit() uint32 { return binary.BigEndian.Uint32(f.Payload) }

// AppendStreamFrame appends the encoding of a frame to dst.
func AppendStreamFrame(dst []byte, kind byte, stream uint32, payload []byte) []byte {
	dst = append(dst, kind)
	dst = binary.BigEndian.AppendUint32(dst, stream)
	return append(dst, payload...)
}

// CreditFrame encodes a CREDIT frame granting n more bytes.
func CreditFrame(stream uint32, n uint32) []byte {
	return AppendStreamFrame(make([]byte, 0, 9), FrameCredit, stream, binary.BigEndian.AppendUint32(nil, n))
}
