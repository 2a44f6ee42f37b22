package proto

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// HelloHeader carries session.hello on the WebSocket upgrade (protocol.md
// 2.7): the client's HelloParams on the request, the agent's HelloResult on
// its 101 answer, each the unpadded base64url of its JSON. An agent that
// does not know it answers without it, and the client says hello in-band.
const HelloHeader = "Boardlink-Hello"

// MaxHelloHeader bounds the header's value either way.
const MaxHelloHeader = 4096

// EncodeHelloHeader is v (HelloParams or HelloResult) as HelloHeader's value.
func EncodeHelloHeader(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("encode %s: %w", HelloHeader, err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// HelloHeaderJSON is the JSON a HelloHeader value carries.
func HelloHeaderJSON(value string) ([]byte, error) {
	if len(value) > MaxHelloHeader {
		return nil, fmt.Errorf("%s: %d bytes, at most %d", HelloHeader, len(value), MaxHelloHeader)
	}
	b, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", HelloHeader, err)
	}
	return b, nil
}
