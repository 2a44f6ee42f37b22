package proto

import (
	"encoding/json"
	"testing"
)

func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"jsonrpc":"2.0","id":1,"method":"exec.start","params":{"argv":["ls"]}}`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"x","data":{"reason":"busy"}}}`,
		`[1]`, `{`, `null`, `{"jsonrpc":"2.0","method":"n"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if err == nil {
			if m.Kind() == 0 {
				t.Fatal("accepted message without a kind")
			}
			// Whatever decodes must survive params decoding of every method type.
			var p ExecStartParams
			_ = DecodeParams(m.Params, &p)
			var h HelloParams
			_ = DecodeParams(m.Params, &h)
			if _, err := json.Marshal(m); err != nil {
				t.Fatalf("re-encode: %v", err)
			}
		}
	})
}

func FuzzStreamFrame(f *testing.F) {
	f.Add(CreditFrame(3, 9))
	f.Add(AppendStreamFrame(nil, FrameData, 1, []byte("x")))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := DecodeStreamFrame(data)
		if err == nil && string(AppendStreamFrame(nil, fr.Kind, fr.Stream, fr.Payload)) != string(data) {
			t.Fatal("frame does not re-encode to the same bytes")
		}
	})
}
