package proto

import (
	"errors"
	"fmt"
	"strings"
)

// Standard JSON-RPC 2.0 error codes.
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternal       = -32603
)

// Reason is the stable, machine-readable cause carried in error.data.reason.
// Clients branch on it; messages are for people and may change.
type Reason string

// Reasons. The first group mirrors the standard codes; the rest are
// application errors in the -32000..-32099 range reserved by JSON-RPC.
const (
	ReasonParseError       Reason = "parse_error"
	ReasonInvalidRequest   Reason = "invalid_request"
	ReasonMethodNotFound   Reason = "method_not_found"
	ReasonInvalidParams    Reason = "invalid_params"
	ReasonTooLarge         Reason = "too_large"
	ReasonUnauthorized     Reason = "unauthorized"
	ReasonBusy             Reason = "busy"
	ReasonNotFound         Reason = "not_found"
	ReasonChecksumMismatch Reason = "checksum_mismatch"
	ReasonSignatureInvalid Reason = "signature_invalid"
	ReasonIncompatible     Reason = "incompatible"
	ReasonTimeout          Reason = "timeout"
	ReasonCanceled         Reason = "canceled"
	// ReasonUnavailable: a resource the agent reaches for (a URL) did not
	// answer, even after retries.
	ReasonUnavailable Reason = "unavailable"
	// ReasonNoSpace: the board lacks the disk space a file.push or
	// file.download needs (the free-space check before it, or the disk
	// filled while it ran). Not the caller's fault, yet not worth
	// retrying unchanged before space is freed.
	ReasonNoSpace  Reason = "no_space"
	ReasonInternal Reason = "internal"
)

// reasonCodes maps each reason to its JSON-RPC code.
var reasonCodes = map[Reason]int{
	ReasonParseError:       CodeParseError,
	ReasonInvalidRequest:   CodeInvalidRequest,
	ReasonTooLarge:         CodeInvalidRequest,
	ReasonMethodNotFound:   CodeMethodNotFound,
	ReasonInvalidParams:    CodeInvalidParams,
	ReasonInternal:         CodeInternal,
	ReasonUnauthorized:     -32001,
	ReasonBusy:             -32002,
	ReasonNotFound:         -32003,
	ReasonChecksumMismatch: -32004,
	ReasonSignatureInvalid: -32005,
	ReasonIncompatible:     -32006,
	ReasonTimeout:          -32007,
	ReasonCanceled:         -32008,
	ReasonUnavailable:      -32009,
	ReasonNoSpace:          -32010,
}

// Code returns the JSON-RPC error code used for r.
func (r Reason) Code() int {
	if c, ok := reasonCodes[r]; ok {
		return c
	}
	return CodeInternal
}

// Retryable reports whether a request that failed for r may succeed when
// sent again unchanged (after a backoff).
func (r Reason) Retryable() bool {
	switch r {
	case ReasonBusy, ReasonTimeout, ReasonInternal, ReasonUnavailable:
		return true
	}
	return false
}

// FieldError names one request field that failed validation, by its JSON
// path (e.g. "argv" or "env.PATH").
type FieldError struct {
	Field   string `json:"field"`
	Rule    string `json:"rule"`
	Param   string `json:"param,omitempty"`
	Message string `json:"message"`
}

// ErrorData is the structured part of an error response.
type ErrorData struct {
	Reason Reason       `json:"reason"`
	Fields []FieldError `json:"fields,omitempty"`
}

// Error is a JSON-RPC error object. It implements error, so handlers return
// it and callers receive it unchanged across the link.
type Error struct {
	Code    int        `json:"code"`
	Message string     `json:"message"`
	Data    *ErrorData `json:"data,omitempty"`
}

// Errorf builds an error with reason r.
func Errorf(r Reason, format string, args ...any) *Error {
	return &Error{Code: r.Code(), Message: fmt.Sprintf(format, args...), Data: &ErrorData{Reason: r}}
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Message)
	if r := e.Reason(); r != "" {
		fmt.Fprintf(&b, " (%s)", r)
	}
	for _, f := range e.fields() {
		fmt.Fprintf(&b, "; %s: %s", f.Field, f.Message)
	}
	return b.String()
}

func (e *Error) fields() []FieldError {
	if e.Data == nil {
		return nil
	}
	return e.Data.Fields
}

// Reason returns data.reason, or a reason derived from the code when the
// peer sent none.
func (e *Error) Reason() Reason {
	if e.Data != nil && e.Data.Reason != "" {
		return e.Data.Reason
	}
	for r, c := range reasonCodes {
		if c == e.Code && c != CodeInvalidRequest {
			return r
		}
	}
	if e.Code == CodeInvalidRequest {
		return ReasonInvalidRequest
	}
	return ""
}

// causeError is a protocol error that also wraps its cause: the peer sees
// the protocol error, and errors.Is still finds the cause
// (context.Canceled, fs.ErrNotExist).
type causeError struct {
	perr  *Error
	cause error
}

func (e *causeError) Error() string   { return e.perr.Error() }
func (e *causeError) Unwrap() []error { return []error{e.perr, e.cause} }

// WithCause returns perr wrapping cause (perr itself if cause is nil).
func WithCause(perr *Error, cause error) error {
	if cause == nil {
		return perr
	}
	return &causeError{perr: perr, cause: cause}
}

// ReasonOf returns the reason of the first *Error in err's chain, or "".
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason()
	}
	return ""
}

// IsReason reports whether err carries reason r.
func IsReason(err error, r Reason) bool { return err != nil && ReasonOf(err) == r }
