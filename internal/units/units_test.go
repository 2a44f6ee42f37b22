package units

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"4096": 4096, "64KiB": 64 << 10, "64kib": 64 << 10, "64K": 64 << 10, "1MiB": 1 << 20, "1M": 1 << 20,
		"1m": 1 << 20, "2GiB": 2 << 30, "1 TiB": 1 << 40, "1MB": 1e6, "10B": 10, " 8 KiB ": 8 << 10, "0": 0,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "KiB", "-1", "1.5MiB", "ten", "99999999999GiB", "0x10"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
	for n, want := range map[int64]string{4096: "4 KiB", 1 << 20: "1 MiB", 64 << 20: "64 MiB", 1 << 30: "1 GiB", 1500: "1500 bytes"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestSizeFlagAndYAML(t *testing.T) {
	var s Size
	if err := s.Set("4GiB"); err != nil || s != 4<<30 || s.String() != "4GiB" {
		t.Fatalf("Set: %d %q %v", s, s.String(), err)
	}
	if err := s.UnmarshalText([]byte("1500")); err != nil || s != 1500 || s.String() != "1500" {
		t.Fatalf("UnmarshalText: %d %q %v", s, s.String(), err)
	}
	if err := s.Set("lots"); err == nil {
		t.Fatal("a bad size was taken")
	}
}
