package proto

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// CompactVersion is the newest compact encoding this build speaks: a
// text message as CBOR (RFC 8949) instead of JSON, for links where each
// byte counts (the serial-framed link negotiates it, section 9.6 of
// docs/protocol.md). Version 1 is the table compactDict.
const CompactVersion = 1

// The compact form of a JSON-RPC message is one CBOR map, the message's
// object with "jsonrpc":"2.0" implied:
//
//   - a key of compactDict is its index (an unsigned integer), any other
//     key a text string;
//   - a string value of compactDict is the simple value of its index
//     (indices 0-19 are simple values 0-19, one byte; 20 on are 32 on,
//     two bytes); under a key of compactBytes, a string that is canonical
//     base64 is the byte string it encodes; any other string is text;
//   - an integer within 64 bits is a CBOR integer, another number a
//     decimal fraction (tag 4: [exponent, mantissa]; a message with a
//     number of more than 18 digits has no compact form); true, false and
//     null are themselves.
//
// Maps and arrays have definite lengths, so the first byte of a compact
// message is 0xA0-0xBF, which never starts JSON text: a receiver tells the
// two apart by it, and a message that has no compact form goes as JSON.
//
// compactDict is append-only: a new entry needs a new CompactVersion
// (both ends must read it the same). At most 244 entries (simple values
// up to 255).
var compactDict = [...]string{
	// 0-19: one byte as a key and as a value. The hot path first: the
	// envelope, exec.run and its record.
	"id", "method", "params", "result", "error", "code", "message", "data", "reason", "argv",
	"started", "exit_code", "started_ms", "duration_ms", MethodExecRun, "stdout", "stderr", "stdin", NoteExecStarted, "pid",
	// 20-23: one byte as a key, two as a value.
	"token", "signal", "stdout_bytes", "stderr_bytes",
	// Methods.
	MethodHello, MethodAuth, MethodPairBegin, MethodPairExchange, MethodPairConfirm, MethodBoardInfo,
	MethodExecStart, MethodExecWait, MethodExecCancel, MethodExecLog, MethodExecResize,
	MethodFileStat, MethodFilePush, MethodFilePull, MethodFileWait, MethodFileDownload, MethodSystemReboot,
	MethodOTAStatus, MethodOTAPlan, MethodOTAStart, MethodOTAWrite, MethodOTAActivate, MethodOTAWait,
	MethodOTAAbort, MethodOTACommit, MethodOTARollback,
	MethodTCPDial, MethodTCPListen, MethodTCPAccept, MethodTCPUnlisten, NoteProgress,
	// Reasons.
	string(ReasonParseError), string(ReasonInvalidRequest), string(ReasonMethodNotFound), string(ReasonInvalidParams),
	string(ReasonTooLarge), string(ReasonUnauthorized), string(ReasonBusy), string(ReasonNotFound),
	string(ReasonChecksumMismatch), string(ReasonSignatureInvalid), string(ReasonIncompatible), string(ReasonTimeout),
	string(ReasonCanceled), string(ReasonUnavailable), string(ReasonNoSpace), string(ReasonInternal),
	// Keys of params and results.
	"timed_out", "signal_num", "truncated", "max_output", "stdin_stream", "shell", "env", "clear_env",
	"cwd", "timeout_ms", "kill_signal", "detach", "tty", "term", "rows", "cols", "ended", "limit", "entries",
	"protocol", "nonce", "client", "agent", "board_id", "capabilities", "auth", "authenticated", "key", "proof",
	"methods", "token_proof", "host", "name", "expires_ms", "attempts", "shown", "confirm",
	"path", "size", "mode", "mtime", "sha256", "offset", "stream", "exists", "dir", "url", "extract",
	"bytes", "total", "version", "model", "slot", "slots", "uptime_ms", "boot_id", "labels", "hostname", "arch",
	"phase", "fields", "field", "rule", "port", "address", "listener", "remote", "local",
}

// compactBytes are the keys whose string values are base64 bytes in
// JSON: the compact form carries the bytes.
var compactBytes = map[string]bool{
	"nonce": true, "key": true, "proof": true, "token_proof": true, "message": true, "confirm": true,
	"stdin": true, "stdout": true, "stderr": true, "manifest": true, "signature": true,
}

var compactIndex = func() map[string]int {
	m := make(map[string]int, len(compactDict))
	for i, s := range compactDict {
		if _, dup := m[s]; dup {
			panic("proto: compactDict repeats " + s)
		}
		m[s] = i
	}
	if len(compactDict) > 244 {
		panic("proto: compactDict longer than the simple values")
	}
	return m
}()

// ErrNoCompactForm: the message has no compact form (it is not a
// JSON-RPC 2.0 object, or holds a number CBOR cannot carry); send it as
// JSON.
var ErrNoCompactForm = errors.New("proto: no compact form")

// ErrBadCompact: a compact message that is not valid, or whose JSON form
// would exceed the limit.
var ErrBadCompact = errors.New("proto: bad compact message")

// ErrCompactTooLong: a compact message whose JSON form is longer than the
// limit given to FromCompact.
var ErrCompactTooLong = fmt.Errorf("%w: too long as JSON", ErrBadCompact)

// IsCompact reports whether a text message is in the compact encoding.
func IsCompact(b []byte) bool { return len(b) > 0 && b[0]>>5 == majorMap }

// CBOR major types.
const (
	majorUint = iota
	majorNeg
	majorBytes
	majorText
	majorArray
	majorMap
	majorTag
	majorSimple
)

// tagDecimal is CBOR's decimal fraction: [exponent, mantissa].
const tagDecimal = 4

// maxDecimalExp bounds a decimal fraction's exponent, beyond what a
// float64 holds.
const maxDecimalExp = 400

// maxCompactDepth bounds nesting, in both directions.
const maxCompactDepth = 32

// Compact returns the compact form of the JSON text message js, or an
// error wrapping ErrNoCompactForm.
func Compact(js []byte) ([]byte, error) {
	d := json.NewDecoder(bytes.NewReader(js))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoCompactForm, err)
	}
	if len(bytes.TrimLeft(js[d.InputOffset():], " \t\r\n")) > 0 {
		return nil, fmt.Errorf("%w: data after the object", ErrNoCompactForm)
	}
	obj, ok := v.(map[string]any)
	if !ok || obj["jsonrpc"] != "2.0" {
		return nil, fmt.Errorf("%w: not a JSON-RPC 2.0 object", ErrNoCompactForm)
	}
	delete(obj, "jsonrpc")
	return appendCompact(make([]byte, 0, len(js)/2), obj, false, 0)
}

func appendCompact(b []byte, v any, isBytes bool, depth int) ([]byte, error) {
	if depth > maxCompactDepth {
		return nil, fmt.Errorf("%w: nested deeper than %d", ErrNoCompactForm, maxCompactDepth)
	}
	var err error
	switch v := v.(type) {
	case nil:
		return append(b, majorSimple<<5|22), nil
	case bool:
		if v {
			return append(b, majorSimple<<5|21), nil
		}
		return append(b, majorSimple<<5|20), nil
	case string:
		if i, ok := compactIndex[v]; ok {
			return appendSimple(b, i), nil
		}
		if isBytes {
			if raw, err := base64.StdEncoding.DecodeString(v); err == nil && base64.StdEncoding.EncodeToString(raw) == v {
				return append(appendHead(b, majorBytes, uint64(len(raw))), raw...), nil
			}
		}
		return append(appendHead(b, majorText, uint64(len(v))), v...), nil
	case json.Number:
		return appendNumber(b, string(v))
	case []any:
		b = appendHead(b, majorArray, uint64(len(v)))
		for _, e := range v {
			if b, err = appendCompact(b, e, false, depth+1); err != nil {
				return nil, err
			}
		}
		return b, nil
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		// Deterministic: dictionary keys by index, then the others.
		slices.SortFunc(keys, func(x, y string) int {
			i, xok := compactIndex[x]
			j, yok := compactIndex[y]
			switch {
			case xok && yok:
				return i - j
			case xok:
				return -1
			case yok:
				return 1
			}
			return strings.Compare(x, y)
		})
		b = appendHead(b, majorMap, uint64(len(v)))
		for _, k := range keys {
			if i, ok := compactIndex[k]; ok {
				b = appendHead(b, majorUint, uint64(i))
			} else {
				b = append(appendHead(b, majorText, uint64(len(k))), k...)
			}
			if b, err = appendCompact(b, v[k], compactBytes[k], depth+1); err != nil {
				return nil, err
			}
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w: a %T", ErrNoCompactForm, v)
}

func appendHead(b []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(b, m|byte(n))
	case n <= math.MaxUint8:
		return append(b, m|24, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, m|25), uint16(n))
	case n <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, m|26), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(b, m|27), n)
}

func appendSimple(b []byte, i int) []byte {
	if i < 20 {
		return append(b, majorSimple<<5|byte(i))
	}
	return append(b, majorSimple<<5|24, byte(i+12))
}

func appendInt(b []byte, n int64) []byte {
	if n < 0 {
		return appendHead(b, majorNeg, uint64(-1-n))
	}
	return appendHead(b, majorUint, uint64(n))
}

// appendNumber encodes a JSON number literal exactly: an integer as one,
// a fraction as mantissa × 10^exponent.
func appendNumber(b []byte, s string) ([]byte, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return appendInt(b, n), nil
	}
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		return appendHead(b, majorUint, n), nil
	}
	mant, exp, ok := splitDecimal(s)
	if !ok {
		return nil, fmt.Errorf("%w: number %.40q", ErrNoCompactForm, s)
	}
	b = append(b, majorTag<<5|tagDecimal, majorArray<<5|2)
	return appendInt(appendInt(b, exp), mant), nil
}

// splitDecimal writes a JSON number as mant × 10^exp, trailing zeros of
// the mantissa moved into the exponent; ok is false past 18 digits or an
// exponent beyond maxDecimalExp.
func splitDecimal(s string) (mant, exp int64, ok bool) {
	num, e, hasExp := strings.Cut(strings.ToLower(s), "e")
	if hasExp {
		var err error
		if exp, err = strconv.ParseInt(e, 10, 32); err != nil {
			return 0, 0, false
		}
	}
	neg := strings.HasPrefix(num, "-")
	num = strings.TrimPrefix(num, "-")
	whole, frac, _ := strings.Cut(num, ".")
	digits := strings.TrimLeft(whole+frac, "0")
	exp -= int64(len(frac))
	for strings.HasSuffix(digits, "0") {
		digits = digits[:len(digits)-1]
		exp++
	}
	if digits == "" {
		return 0, 0, true
	}
	if len(digits) > 18 || exp < -maxDecimalExp || exp > maxDecimalExp {
		return 0, 0, false
	}
	m, err := strconv.ParseInt(digits, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	if neg {
		m = -m
	}
	return m, exp, true
}

// FromCompact returns the JSON form of the compact message c, at most max
// bytes long. It never panics; what is not a valid compact message is an
// error wrapping ErrBadCompact, one longer than max ErrCompactTooLong.
func FromCompact(c []byte, max int) ([]byte, error) {
	if !IsCompact(c) {
		return nil, fmt.Errorf("%w: not a map", ErrBadCompact)
	}
	d := compactDecoder{in: c, max: max, out: make([]byte, 0, min(max, 2*len(c)+16))}
	d.out = append(d.out, `{"jsonrpc":"2.0"`...)
	n, err := d.head(majorMap)
	if err != nil {
		return nil, err
	}
	if err := d.pairs(n, true, 1); err != nil {
		return nil, err
	}
	if d.at != len(d.in) {
		return nil, fmt.Errorf("%w: %d bytes after the message", ErrBadCompact, len(d.in)-d.at)
	}
	d.out = append(d.out, '}')
	if err := d.room(); err != nil {
		return nil, err
	}
	return d.out, nil
}

type compactDecoder struct {
	in  []byte
	at  int
	out []byte
	max int
}

func (d *compactDecoder) fail(format string, args ...any) error {
	return fmt.Errorf("%w: at byte %d: %s", ErrBadCompact, d.at, fmt.Sprintf(format, args...))
}

// read reads an item's head: its major type, additional info and argument.
func (d *compactDecoder) read() (major, info byte, arg uint64, err error) {
	if d.at >= len(d.in) {
		return 0, 0, 0, d.fail("truncated")
	}
	c := d.in[d.at]
	d.at++
	major, info = c>>5, c&31
	var n int
	switch {
	case info < 24:
		return major, info, uint64(info), nil
	case info == 24:
		n = 1
	case info == 25:
		n = 2
	case info == 26:
		n = 4
	case info == 27:
		n = 8
	default:
		return 0, 0, 0, d.fail("additional info %d (indefinite lengths are not used)", info)
	}
	if len(d.in)-d.at < n {
		return 0, 0, 0, d.fail("truncated")
	}
	for _, x := range d.in[d.at : d.at+n] {
		arg = arg<<8 | uint64(x)
	}
	d.at += n
	return major, info, arg, nil
}

// head reads the head of an item of major type want.
func (d *compactDecoder) head(want byte) (uint64, error) {
	major, _, arg, err := d.read()
	if err != nil {
		return 0, err
	}
	if major != want {
		return 0, d.fail("major type %d where %d was expected", major, want)
	}
	return arg, nil
}

// count checks a container's length against the bytes left (each item
// takes at least one), so a huge count cannot make the decoder loop.
func (d *compactDecoder) count(n uint64, per int) error {
	if n > uint64(len(d.in)-d.at)/uint64(per) {
		return d.fail("%d items in %d bytes", n, len(d.in)-d.at)
	}
	return nil
}

func (d *compactDecoder) room() error {
	if len(d.out) > d.max {
		return fmt.Errorf("%w: over %d bytes", ErrCompactTooLong, d.max)
	}
	return nil
}

// pairs decodes n key/value pairs; after is true when a pair was already
// written before them (the implied jsonrpc).
func (d *compactDecoder) pairs(n uint64, after bool, depth int) error {
	if err := d.count(n, 2); err != nil {
		return err
	}
	for i := range n {
		if after || i > 0 {
			d.out = append(d.out, ',')
		}
		major, _, arg, err := d.read()
		if err != nil {
			return err
		}
		var key string
		switch major {
		case majorUint:
			if arg >= uint64(len(compactDict)) {
				return d.fail("key %d not in the dictionary", arg)
			}
			key = compactDict[arg]
		case majorText:
			if key, err = d.text(arg); err != nil {
				return err
			}
		default:
			return d.fail("a key of major type %d", major)
		}
		d.out = appendJSONString(d.out, key)
		d.out = append(d.out, ':')
		if err := d.value(depth); err != nil {
			return err
		}
	}
	return d.room()
}

func (d *compactDecoder) text(n uint64) (string, error) {
	if n > uint64(len(d.in)-d.at) {
		return "", d.fail("truncated")
	}
	s := d.in[d.at : d.at+int(n)]
	if !utf8.Valid(s) {
		return "", d.fail("text is not UTF-8")
	}
	d.at += int(n)
	return string(s), nil
}

func (d *compactDecoder) value(depth int) error {
	if depth > maxCompactDepth {
		return d.fail("nested deeper than %d", maxCompactDepth)
	}
	major, info, arg, err := d.read()
	if err != nil {
		return err
	}
	switch major {
	case majorUint:
		d.out = strconv.AppendUint(d.out, arg, 10)
	case majorNeg:
		if arg > math.MaxInt64 {
			return d.fail("integer below -2^63")
		}
		d.out = strconv.AppendInt(d.out, -1-int64(arg), 10)
	case majorBytes:
		if arg > uint64(len(d.in)-d.at) {
			return d.fail("truncated")
		}
		raw := d.in[d.at : d.at+int(arg)]
		d.at += int(arg)
		d.out = append(d.out, '"')
		d.out = base64.StdEncoding.AppendEncode(d.out, raw)
		d.out = append(d.out, '"')
	case majorText:
		s, err := d.text(arg)
		if err != nil {
			return err
		}
		d.out = appendJSONString(d.out, s)
	case majorArray:
		if err := d.count(arg, 1); err != nil {
			return err
		}
		d.out = append(d.out, '[')
		for i := range arg {
			if i > 0 {
				d.out = append(d.out, ',')
			}
			if err := d.value(depth + 1); err != nil {
				return err
			}
			if err := d.room(); err != nil {
				return err
			}
		}
		d.out = append(d.out, ']')
	case majorMap:
		d.out = append(d.out, '{')
		if err := d.pairs(arg, false, depth+1); err != nil {
			return err
		}
		d.out = append(d.out, '}')
	case majorTag:
		if arg != tagDecimal {
			return d.fail("tag %d", arg)
		}
		return d.decimal()
	case majorSimple:
		return d.simple(info, arg)
	}
	return d.room()
}

func (d *compactDecoder) simple(info byte, arg uint64) error {
	switch {
	case info < 20:
		d.out = appendJSONString(d.out, compactDict[info])
	case info == 20:
		d.out = append(d.out, "false"...)
	case info == 21:
		d.out = append(d.out, "true"...)
	case info == 22:
		d.out = append(d.out, "null"...)
	case info == 24 && arg >= 32 && arg-12 < uint64(len(compactDict)):
		d.out = appendJSONString(d.out, compactDict[arg-12])
	default:
		return d.fail("simple value %d/%d", info, arg)
	}
	return d.room()
}

// decimal writes a decimal fraction [exponent, mantissa] as a JSON number.
func (d *compactDecoder) decimal() error {
	if n, err := d.head(majorArray); err != nil || n != 2 {
		if err == nil {
			err = d.fail("a decimal fraction of %d items", n)
		}
		return err
	}
	var v [2]int64
	for i := range v {
		major, _, arg, err := d.read()
		if err != nil {
			return err
		}
		switch {
		case major == majorUint && arg <= math.MaxInt64:
			v[i] = int64(arg)
		case major == majorNeg && arg < math.MaxInt64:
			v[i] = -1 - int64(arg)
		default:
			return d.fail("a decimal fraction with a non-integer or too large part")
		}
	}
	exp, mant := v[0], v[1]
	if exp < -maxDecimalExp || exp > maxDecimalExp {
		return d.fail("exponent %d", exp)
	}
	d.out = appendDecimal(d.out, mant, exp)
	return d.room()
}

// appendDecimal writes mant × 10^exp: with a decimal point when that is
// short, else with an exponent.
func appendDecimal(b []byte, mant, exp int64) []byte {
	if mant < 0 {
		b = append(b, '-')
	}
	digits := strconv.FormatUint(absInt(mant), 10)
	switch {
	case exp == 0:
		return append(b, digits...)
	case exp < 0 && -exp < int64(len(digits)):
		p := len(digits) + int(exp)
		return append(append(append(b, digits[:p]...), '.'), digits[p:]...)
	case exp < 0 && -exp <= 20:
		b = append(b, "0."...)
		b = append(b, strings.Repeat("0", int(-exp)-len(digits))...)
		return append(b, digits...)
	}
	b = append(append(b, digits...), 'e')
	return strconv.AppendInt(b, exp, 10)
}

func absInt(n int64) uint64 {
	if n < 0 {
		return uint64(-(n + 1)) + 1
	}
	return uint64(n)
}

// appendJSONString writes s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a valid UTF-8 string always marshals
	return append(b, q...)
}
