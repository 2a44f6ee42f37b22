package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Message is one JSON-RPC 2.0 object as it travels in a text frame: a
// request (method and id), a notification (method, no id) or a response
// (id and exactly one of result and error).
type Message struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method,omitempty"`
	Params  json.RawMessage `json:"params,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *Error          `json:"error,omitempty"`
}

// Kind tells the three message shapes apart.
type Kind int

// Message kinds.
const (
	KindRequest Kind = iota + 1
	KindNotification
	KindResponse
)

// Kind returns the message's shape. It is meaningful only for a message
// that Decode accepted.
func (m *Message) Kind() Kind {
	switch {
	case m.Method != "" && len(m.ID) > 0:
		return KindRequest
	case m.Method != "":
		return KindNotification
	default:
		return KindResponse
	}
}

// NullID is the id of a response to a message whose id could not be read.
var NullID = json.RawMessage("null")

// DecodeError is returned by Decode. Err is the error object to send back;
// ID is the request's id when it could be read (else NullID), so the error
// can be answered as a response.
type DecodeError struct {
	ID  json.RawMessage
	Err *Error
}

func (e *DecodeError) Error() string { return e.Err.Error() }
func (e *DecodeError) Unwrap() error { return e.Err }

// Decode parses one text frame. It never panics; a frame that is not valid
// JSON yields parse_error (-32700), and valid JSON that is not a well-formed
// JSON-RPC 2.0 object yields invalid_request (-32600).
func Decode(data []byte) (*Message, error) {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if !json.Valid(data) {
		return nil, &DecodeError{ID: NullID, Err: Errorf(ReasonParseError, "parse error: not valid JSON")}
	}
	if len(trimmed) == 0 || trimmed[0] != '{' {
		msg := "invalid request: a message must be a JSON object"
		if len(trimmed) > 0 && trimmed[0] == '[' {
			msg = "invalid request: batches are not supported"
		}
		return nil, &DecodeError{ID: NullID, Err: Errorf(ReasonInvalidRequest, "%s", msg)}
	}
	// Read the id on its own first so a malformed message is answered to
	// the right id when that much is readable.
	var head struct {
		ID json.RawMessage `json:"id"`
	}
	_ = json.Unmarshal(data, &head)
	id := NullID
	if validID(head.ID) {
		id = head.ID
	}
	var m Message
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, &DecodeError{ID: id, Err: invalidRequest(fieldOf(err))}
	}
	if err := m.check(); err != nil {
		return nil, &DecodeError{ID: id, Err: err}
	}
	return &m, nil
}

func (m *Message) check() *Error {
	if m.JSONRPC != "2.0" {
		return invalidRequest(`jsonrpc must be "2.0"`)
	}
	null := bytes.Equal(m.ID, NullID)
	if len(m.ID) > 0 && !validID(m.ID) && !(null && m.Method == "") {
		return invalidRequest("id must be a string or a number")
	}
	if m.Method != "" {
		if m.Result != nil || m.Error != nil {
			return invalidRequest("a request carries neither result nor error")
		}
		if len(m.Params) > 0 {
			if c := firstByte(m.Params); c != '{' && c != 'n' {
				return invalidRequest("params must be an object")
			}
		}
		return nil
	}
	if len(m.ID) == 0 {
		return invalidRequest("method is required")
	}
	if (m.Result == nil) == (m.Error == nil) {
		return invalidRequest("a response carries exactly one of result and error")
	}
	return nil
}

func invalidRequest(why string) *Error {
	return Errorf(ReasonInvalidRequest, "invalid request: %s", why)
}

func fieldOf(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Sprintf("%s has the wrong type (%s)", te.Field, te.Value)
	}
	return err.Error()
}

func firstByte(b []byte) byte {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

func validID(id json.RawMessage) bool {
	c := firstByte(id)
	return c == '"' || c == '-' || (c >= '0' && c <= '9')
}

// NewRequest builds a request; params may be nil.
func NewRequest(id uint64, method string, params any) (*Message, error) {
	m := &Message{JSONRPC: "2.0", ID: json.RawMessage(fmt.Sprint(id)), Method: method}
	return m, m.setParams(params)
}

// NewNotification builds a notification; params may be nil.
func NewNotification(method string, params any) (*Message, error) {
	m := &Message{JSONRPC: "2.0", Method: method}
	return m, m.setParams(params)
}

func (m *Message) setParams(params any) error {
	if params == nil {
		return nil
	}
	b, err := json.Marshal(params)
	if err != nil {
		return fmt.Errorf("encode params of %s: %w", m.Method, err)
	}
	m.Params = b
	return nil
}

// NewResponse builds a success response; a nil result is sent as {}.
func NewResponse(id json.RawMessage, result any) (*Message, error) {
	b := []byte("{}")
	if result != nil {
		var err error
		if b, err = json.Marshal(result); err != nil {
			return nil, fmt.Errorf("encode result: %w", err)
		}
	}
	return &Message{JSONRPC: "2.0", ID: id, Result: b}, nil
}

// NewErrorResponse builds an error response; a nil id becomes null.
func NewErrorResponse(id json.RawMessage, e *Error) *Message {
	if len(id) == 0 {
		id = NullID
	}
	return &Message{JSONRPC: "2.0", ID: id, Error: e}
}
