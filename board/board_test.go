package board

import (
	"strings"
	"testing"
)

func TestIdentityValidate(t *testing.T) {
	long := strings.Repeat("x", 64)
	tests := []struct {
		name string
		id   Identity
		want string // substring of the error; "" means valid
	}{
		{name: "minimal", id: Identity{ID: "b", Model: "sim"}},
		{name: "full", id: Identity{ID: "rpi4-lab_3.a", Model: "Raspberry Pi 4", Labels: map[string]string{"rack": "A 3", "x": ""}}},
		{name: "63-byte id", id: Identity{ID: long[:63], Model: "m"}},
		{name: "empty id", id: Identity{Model: "m"}, want: "1 to 63 bytes"},
		{name: "64-byte id", id: Identity{ID: long, Model: "m"}, want: "1 to 63 bytes"},
		{name: "id with slash", id: Identity{ID: "ws://b", Model: "m"}, want: "only letters"},
		{name: "id with space", id: Identity{ID: "a b", Model: "m"}, want: "only letters"},
		{name: "non-ASCII id", id: Identity{ID: "bä", Model: "m"}, want: "only letters"},
		{name: "empty model", id: Identity{ID: "b"}, want: "board model"},
		{name: "model with newline", id: Identity{ID: "b", Model: "a\nb"}, want: "board model"},
		{name: "empty label key", id: Identity{ID: "b", Model: "m", Labels: map[string]string{"": "v"}}, want: "label key"},
		{name: "label key with =", id: Identity{ID: "b", Model: "m", Labels: map[string]string{"a=b": "v"}}, want: "label key"},
		{name: "label value with NUL", id: Identity{ID: "b", Model: "m", Labels: map[string]string{"k": "v\x00"}}, want: "not printable"},
		{name: "label too long", id: Identity{ID: "b", Model: "m", Labels: map[string]string{"k": strings.Repeat("v", 252)}}, want: "exceed"},
		{name: "label at the limit", id: Identity{ID: "b", Model: "m", Labels: map[string]string{"k": strings.Repeat("v", 251)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.id.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate() = %v, want an error saying %q", err, tt.want)
			}
		})
	}
}

func TestIdentityClone(t *testing.T) {
	a := Identity{ID: "b", Model: "m", Labels: map[string]string{"k": "v"}}
	b := a.Clone()
	b.Labels["k"] = "changed"
	if a.Labels["k"] != "v" {
		t.Fatal("Clone shares its labels with the original")
	}
}
