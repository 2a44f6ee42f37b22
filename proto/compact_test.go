package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// sameJSON reports whether two JSON texts hold the same value, numbers
// compared by value (1.50 and 1.5 are equal).
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	return reflect.DeepEqual(normJSON(t, a), normJSON(t, b))
}

func normJSON(t *testing.T, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("not JSON: %v: %s", err, b)
	}
	var norm func(any) any
	norm = func(v any) any {
		switch v := v.(type) {
		case json.Number:
			r, ok := new(big.Rat).SetString(string(v))
			if !ok {
				t.Fatalf("number %s", v)
			}
			return r.RatString()
		case []any:
			for i := range v {
				v[i] = norm(v[i])
			}
		case map[string]any:
			for k := range v {
				v[k] = norm(v[k])
			}
		}
		return v
	}
	return norm(v)
}

var compactSamples = []string{
	`{"jsonrpc":"2.0","id":7,"method":"exec.run","params":{"argv":["true"],"started":"r7"}}`,
	`{"jsonrpc":"2.0","id":7,"result":{"id":"c6-f27a","exit_code":0,"started_ms":1764636000123,"duration_ms":3.123}}`,
	`{"jsonrpc":"2.0","id":"x","error":{"code":-32602,"message":"invalid params: argv","data":{"reason":"invalid_params","fields":[{"field":"argv","rule":"required"}]}}}`,
	`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"message too large: discarded","data":{"reason":"too_large"}}}`,
	`{"jsonrpc":"2.0","method":"exec.started","params":{"token":"r9","id":"c1-0001","pid":4242}}`,
	`{"jsonrpc":"2.0","id":2,"method":"session.hello","params":{"protocol":5,"client":"t/1","nonce":"q6qpqK+urayjoqGgp6alpLu6ubi/vr28s7KxsLe2tbQ="}}`,
	`{"jsonrpc":"2.0","id":3,"result":{"stdout":"aGkK","stderr":"not base64!","n":-9223372036854775808,"u":18446744073709551615,"f":1e-7,"g":-2.5E+3,"h":0.000,"big":12345678901234567800000,"z":[],"o":{},"t":true,"x":false,"nil":null,"uni":"é\u0000\"\\"}}`,
}

func TestCompactRoundTrip(t *testing.T) {
	for _, s := range compactSamples {
		c, err := Compact([]byte(s))
		if err != nil {
			t.Fatalf("Compact(%s): %v", s, err)
		}
		if !IsCompact(c) {
			t.Fatalf("compact form of %s starts with %#x", s, c[0])
		}
		back, err := FromCompact(c, MaxMessage)
		if err != nil {
			t.Fatalf("FromCompact(%x): %v", c, err)
		}
		if !sameJSON(t, []byte(s), back) {
			t.Errorf("round trip changed the message:\n in  %s\n out %s", s, back)
		}
		if _, err := Decode(back); err != nil {
			t.Errorf("the JSON form does not decode: %v: %s", err, back)
		}
		t.Logf("%3d bytes JSON, %3d compact: %s", len(s), len(c), s[:min(len(s), 60)])
	}
}

// The hot messages of a serial exec are a fraction of their JSON size.
func TestCompactExecRunSizes(t *testing.T) {
	for _, tc := range []struct {
		msg string
		max int
	}{
		{compactSamples[0], 20},
		{compactSamples[1], 40},
	} {
		c, err := Compact([]byte(tc.msg))
		if err != nil {
			t.Fatal(err)
		}
		if len(c) > tc.max {
			t.Errorf("%s: %d bytes compact, want at most %d", tc.msg, len(c), tc.max)
		}
	}
}

func TestCompactRefuses(t *testing.T) {
	for _, s := range []string{
		`[1]`, `{"id":1}`, `{"jsonrpc":"1.0","id":1}`, `{"jsonrpc":"2.0"} {}`, `{"jsonrpc":"2.0"} x`, `{"jsonrpc":"2.0","x":1.23456789012345678901}`, `{"jsonrpc":"2.0","x":1e99999999999}`, `not json`,
	} {
		if c, err := Compact([]byte(s)); !errors.Is(err, ErrNoCompactForm) {
			t.Errorf("Compact(%s) = %x, %v; want ErrNoCompactForm", s, c, err)
		}
	}
}

func TestFromCompactRefuses(t *testing.T) {
	for name, c := range map[string][]byte{
		"empty":          {},
		"not a map":      {0x81, 0x01},
		"truncated":      {0xA1, 0x00},
		"trailing":       {0xA0, 0x00},
		"indefinite":     {0xBF, 0xFF},
		"unknown key":    {0xA1, 0x18, 0xFF, 0x01},
		"key not scalar": {0xA1, 0x80, 0x01},
		"bad utf-8":      {0xA1, 0x00, 0x61, 0xFF},
		"huge count":     {0xBB, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF},
		"unknown tag":    {0xA1, 0x00, 0xC2, 0x41, 0x01},
		"NaN":            {0xA1, 0x00, 0xFB, 0x7F, 0xF8, 0, 0, 0, 0, 0, 0},
		"simple 23":      {0xA1, 0x00, 0xF7},
		"simple 255":     {0xA1, 0x00, 0xF8, 0xFF},
		"deep":           append(append([]byte{0xA1, 0x00}, bytes.Repeat([]byte{0x81}, 40)...), 0x01),
	} {
		if j, err := FromCompact(c, MaxMessage); !errors.Is(err, ErrBadCompact) {
			t.Errorf("%s: FromCompact(%x) = %s, %v; want ErrBadCompact", name, c, j, err)
		}
	}
}

// A small compact message cannot expand past the limit given.
func TestFromCompactBoundsItsOutput(t *testing.T) {
	// 200 two-byte dictionary values of 13 characters each in JSON.
	c := []byte{0xA1, 0x00, 0x98, 200}
	for range 200 {
		c = append(c, 0xF8, 37) // "session.hello"
	}
	if _, err := FromCompact(c, 1024); !errors.Is(err, ErrBadCompact) {
		t.Fatalf("FromCompact to 1024 bytes: %v", err)
	}
	j, err := FromCompact(c, MaxMessage)
	if err != nil {
		t.Fatal(err)
	}
	if len(j) < 3000 {
		t.Fatalf("%d bytes", len(j))
	}
}

// Every decoded message is JSON whose compact form decodes to it again.
func FuzzFromCompact(f *testing.F) {
	for _, s := range compactSamples {
		c, err := Compact([]byte(s))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(c)
	}
	f.Add([]byte{0xA1, 0x02, 0xC4, 0x82, 0x3B, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})
	f.Fuzz(func(t *testing.T, c []byte) {
		const limit = 64 << 10
		j, err := FromCompact(c, limit)
		if err != nil {
			if !errors.Is(err, ErrBadCompact) {
				t.Fatalf("error not ErrBadCompact: %v", err)
			}
			return
		}
		if len(j) > limit {
			t.Fatalf("%d bytes past the limit", len(j))
		}
		if !json.Valid(j) {
			t.Fatalf("not JSON: %s", j)
		}
		c2, err := Compact(j)
		if err != nil {
			if errors.Is(err, ErrNoCompactForm) {
				return // a number past what a decimal fraction holds
			}
			t.Fatal(err)
		}
		j2, err := FromCompact(c2, 2*limit)
		if err != nil {
			t.Fatalf("re-encoded form does not decode: %v", err)
		}
		if !sameJSON(t, j, j2) {
			t.Fatalf("second round trip changed it:\n%s\n%s", j, j2)
		}
	})
}

// Every JSON-RPC message survives the compact form.
func FuzzCompact(f *testing.F) {
	for _, s := range compactSamples {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, js []byte) {
		c, err := Compact(js)
		if err != nil {
			if !errors.Is(err, ErrNoCompactForm) {
				t.Fatalf("error not ErrNoCompactForm: %v", err)
			}
			return
		}
		j, err := FromCompact(c, 4*len(js)+64)
		if err != nil {
			t.Fatalf("FromCompact(Compact(%q)): %v", js, err)
		}
		if !sameJSON(t, js, j) {
			t.Fatalf("round trip changed it:\n%s\n%s", js, j)
		}
	})
}

// docs/protocol.md 9.6 lists the dictionary's one-byte entries and shows
// exec.run's request in the compact form: both as the code has them.
func TestCompactDocumented(t *testing.T) {
	doc, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatal(err)
	}
	_, sec, _ := strings.Cut(string(doc), "### 9.6 The compact encoding")
	for i, name := range compactDict[:24] {
		if !regexp.MustCompile(`(?m)(^|\s)` + strconv.Itoa(i) + ` ` + regexp.QuoteMeta(name) + `(\s|$)`).MatchString(sec) {
			t.Errorf("section 9.6 does not list %d %s", i, name)
		}
	}
	for _, s := range compactSamples[:2] {
		c, err := Compact([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(sec, s) || !strings.Contains(sec, fmt.Sprintf("% x", c)) {
			t.Errorf("section 9.6 does not show %s as % x", s, c)
		}
	}
}
