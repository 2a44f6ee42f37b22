package transport

import (
	"context"
	"errors"
)

// MessageType tells text (JSON-RPC) from binary (stream frame) messages.
type MessageType int

// Message types; the values match WebSocket's opcodes.
const (
	Text   MessageType = 1
	Binary MessageType = 2
)

// Link moves whole messages in order between two ends.
//
// ReadMessage is called from one goroutine only. WriteMessage is safe for
// concurrent use; it returns once the message is handed to the line (or
// queued in the link's bounded send window), or with ctx's error. Close
// unblocks both and is idempotent.
type Link interface {
	ReadMessage() (MessageType, []byte, error)
	WriteMessage(ctx context.Context, t MessageType, p []byte) error
	Close() error
}

// ChunkSizer is implemented by links that want stream data in pieces no
// larger than MaxChunk bytes, so that a bulk transfer never holds the line
// long enough to delay a control message (the serial link).
type ChunkSizer interface {
	MaxChunk() int
}

// ErrTooLarge is returned by ReadMessage for a message that exceeded the
// link's message limit and was discarded. It is not fatal: the next
// ReadMessage continues with the following message.
var ErrTooLarge = errors.New("message too large")

// ErrClosed is returned for operations on a closed link or connection.
var ErrClosed = errors.New("connection closed")
