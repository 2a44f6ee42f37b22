package proto

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		in     string
		kind   Kind
		reason Reason
		id     string
	}{
		{`{"jsonrpc":"2.0","id":1,"method":"board.info"}`, KindRequest, "", "1"},
		{`{"jsonrpc":"2.0","id":"a","method":"x","params":{}}`, KindRequest, "", `"a"`},
		{`{"jsonrpc":"2.0","method":"ev","params":null}`, KindNotification, "", ""},
		{`{"jsonrpc":"2.0","id":1,"result":{}}`, KindResponse, "", "1"},
		{`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}`, KindResponse, "", "null"},
		{`{"jsonrpc":"2.0","id":1,"result":null}`, KindResponse, "", "1"},
		{`{`, 0, ReasonParseError, "null"},
		{``, 0, ReasonParseError, "null"},
		{`"str"`, 0, ReasonInvalidRequest, "null"},
		{`[]`, 0, ReasonInvalidRequest, "null"},
		{`{"jsonrpc":"2.0","id":7,"method":3}`, 0, ReasonInvalidRequest, "7"},
		{`{"jsonrpc":"2.0","id":{},"method":"x"}`, 0, ReasonInvalidRequest, "null"},
		{`{"jsonrpc":"2.0","id":null,"method":"x"}`, 0, ReasonInvalidRequest, "null"},
		{`{"id":1,"method":"x"}`, 0, ReasonInvalidRequest, "1"},
		{`{"jsonrpc":"2.0","id":2,"method":"x","params":"s"}`, 0, ReasonInvalidRequest, "2"},
		{`{"jsonrpc":"2.0","id":2}`, 0, ReasonInvalidRequest, "2"},
		{`{"jsonrpc":"2.0","id":2,"result":1,"error":{"code":1,"message":""}}`, 0, ReasonInvalidRequest, "2"},
		{`{"jsonrpc":"2.0"}`, 0, ReasonInvalidRequest, "null"},
	}
	for _, tc := range tests {
		m, err := Decode([]byte(tc.in))
		if tc.reason == "" {
			if err != nil || m.Kind() != tc.kind || string(m.ID) != tc.id && tc.id != "" {
				t.Errorf("%s: got %+v, %v", tc.in, m, err)
			}
			continue
		}
		var de *DecodeError
		if !errors.As(err, &de) || de.Err.Reason() != tc.reason || string(de.ID) != tc.id {
			t.Errorf("%s: got %v (id %s), want %s (id %s)", tc.in, err, idOf(de), tc.reason, tc.id)
		}
	}
}

func idOf(de *DecodeError) string {
	if de == nil {
		return ""
	}
	return string(de.ID)
}

func TestExecStartValidation(t *testing.T) {
	tests := []struct {
		params string
		fields []string
	}{
		{`{"argv":["ls","-l"],"env":{"A":"b"},"timeout_ms":5,"stdout":1,"stderr":3}`, nil},
		{`{"argv":[]}`, []string{"argv"}},
		{`{}`, []string{"argv"}},
		{`{"argv":[""]}`, []string{"argv"}},
		{`{"argv":["ls"],"timeout_ms":-1}`, []string{"timeout_ms"}},
		{`{"argv":"ls"}`, []string{"argv"}},
		{`{"argv":["ls"],"timeout_ms":"soon"}`, []string{"timeout_ms"}},
		{`{"argv":["ls"],"env":{"A=B":"c"}}`, []string{"env[A=B]"}},
		{`{"argv":["ls"],"kill_signal":"BOOM"}`, []string{"kill_signal"}},
		{`{"argv":["ls"],"stdout":3,"stderr":3}`, []string{"stderr"}},
		{`{"argv":["ls"],"color":true}`, []string{"color"}},
		{`{"argv":[], "timeout_ms":-5}`, []string{"argv", "timeout_ms"}},
	}
	for _, tc := range tests {
		var p ExecStartParams
		err := DecodeParams(json.RawMessage(tc.params), &p)
		if tc.fields == nil {
			if err != nil {
				t.Errorf("%s: unexpected %v", tc.params, err)
			}
			continue
		}
		if err == nil || err.Code != CodeInvalidParams || err.Reason() != ReasonInvalidParams {
			t.Errorf("%s: got %v, want invalid params", tc.params, err)
			continue
		}
		var got []string
		for _, f := range err.Data.Fields {
			got = append(got, f.Field)
		}
		if strings.Join(got, ",") != strings.Join(tc.fields, ",") {
			t.Errorf("%s: fields %v, want %v", tc.params, got, tc.fields)
		}
	}
}

func TestErrorRoundTrip(t *testing.T) {
	e := Errorf(ReasonChecksumMismatch, "chunk %d", 3)
	b, _ := json.Marshal(NewErrorResponse(json.RawMessage("9"), e))
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !IsReason(m.Error, ReasonChecksumMismatch) || m.Error.Code != -32004 || ReasonChecksumMismatch.Retryable() {
		t.Fatalf("round trip lost the reason: %+v", m.Error)
	}
	if (&Error{Code: -32002, Message: "x"}).Reason() != ReasonBusy {
		t.Fatal("reason not derived from code")
	}
}

func TestStreamFrames(t *testing.T) {
	f, err := DecodeStreamFrame(CreditFrame(7, 1000))
	if err != nil || f.Kind != FrameCredit || f.Stream != 7 || f.Credit() != 1000 {
		t.Fatalf("%+v %v", f, err)
	}
	for _, bad := range []string{"", "\x00\x00\x00\x00", "\x09\x00\x00\x00\x01", "\x01\x00\x00\x00\x01ab",
		"\x02\x00\x00\x00\x01x", "\x00\x00\x00\x00\x00data"} {
		if _, err := DecodeStreamFrame([]byte(bad)); !errors.Is(err, ErrBadFrame) {
			t.Errorf("%q: got %v", bad, err)
		}
	}
}

func TestHistoryMatchesVersion(t *testing.T) {
	last := History[len(History)-1]
	if last.Version != Version || MinVersion > Version {
		t.Fatalf("history ends at %d, Version is %d", last.Version, Version)
	}
}
