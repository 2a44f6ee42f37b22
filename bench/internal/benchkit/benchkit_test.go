package benchkit

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestSizeSet(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64  // for Size
		err  string // for Size, "" when it parses
		// intWant and intErr are IntSize's answers.
		intWant int64
		intErr  string
	}{
		{in: "0", want: 0, intWant: 0},
		{in: "1000", want: 1000, intWant: 1000},
		{in: "4KiB", want: 4 << 10, intWant: 4 << 10},
		{in: "8MiB", want: 8 << 20, intWant: 8 << 20},
		{in: "2GiB", want: 2 << 30, intWant: 2 << 30},
		{in: "3KB", want: 3000, intWant: 3000},
		{in: "5MB", want: 5e6, intWant: 5e6},
		{in: "1GB", want: 1e9, intWant: 1e9},
		{in: "64K", want: 64 << 10, intWant: 64 << 10},
		{in: "16M", want: 16 << 20, intWant: 16 << 20},
		{in: "1G", want: 1 << 30, intWant: 1 << 30},
		{in: "512B", want: 512, intWant: 512},
		{in: " 7 MiB", want: 7 << 20, intWant: 7 << 20},
		{in: "1.5MiB", want: 3 << 19, intErr: `not a size: "1.5"`},
		{in: "0.5KB", want: 500, intErr: `not a size: "0.5"`},
		{in: "1.5B", err: `not a size: "1.5"`, intErr: `not a size: "1.5"`},
		{in: "-1MiB", err: `not a size: "-1"`, intErr: `not a size: "-1"`},
		{in: "", err: `not a size: ""`, intErr: `not a size: ""`},
		{in: "MiB", err: `not a size: ""`, intErr: `not a size: ""`},
		{in: "12XiB", err: `not a size: "12Xi"`, intErr: `not a size: "12Xi"`},
		{in: "1TiB", err: `not a size: "1Ti"`, intErr: `not a size: "1Ti"`},
		{in: "4294967296GiB", want: 1 << 62, intWant: 1 << 62}, // the largest
		{in: "4294967297GiB", err: `not a size: "4294967297"`, intErr: `not a size: "4294967297"`},
	} {
		var s Size
		err := s.Set(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("Size.Set(%q) = %v, want error %q", tc.in, err, tc.err)
			}
		} else if err != nil || int64(s) != tc.want {
			t.Errorf("Size.Set(%q) = %d, %v; want %d", tc.in, s, err, tc.want)
		}

		var is IntSize
		err = is.Set(tc.in)
		if tc.intErr == "" && tc.err != "" {
			tc.intErr = tc.err
		}
		if tc.intErr != "" {
			if err == nil || err.Error() != tc.intErr {
				t.Errorf("IntSize.Set(%q) = %v, want error %q", tc.in, err, tc.intErr)
			}
		} else if err != nil || int64(is) != tc.intWant {
			t.Errorf("IntSize.Set(%q) = %d, %v; want %d", tc.in, is, err, tc.intWant)
		}
	}
}

// The flag package prints a size's default in bytes, and reports a bad
// value with the flag's name.
func TestSizeFlag(t *testing.T) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	size, chunk := Size(64<<20), IntSize(1<<20)
	fs.Var(&size, "size", "")
	fs.Var(&chunk, "chunk", "")
	if got := fs.Lookup("size").DefValue; got != "67108864" {
		t.Errorf("default of -size printed as %q, want 67108864", got)
	}
	if err := fs.Parse([]string{"-size", "8MiB", "-chunk", "256KiB"}); err != nil {
		t.Fatal(err)
	}
	if size != 8<<20 || chunk != 256<<10 {
		t.Errorf("-size 8MiB -chunk 256KiB gave %d and %d", size, chunk)
	}
	err := fs.Parse([]string{"-chunk", "0.5MiB"})
	if want := `invalid value "0.5MiB" for flag -chunk: not a size: "0.5"`; err == nil || err.Error() != want {
		t.Errorf("-chunk 0.5MiB: %v, want %q", err, want)
	}
}

func TestHuman(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 bytes"},
		{1, "1 bytes"},
		{1000, "1000 bytes"},
		{1 << 10, "1 KiB"},
		{1536, "1536 bytes"},
		{3 << 19, "1536 KiB"},
		{8 << 20, "8 MiB"},
		{(1 << 20) + 1, "1048577 bytes"},
		{256 << 20, "256 MiB"},
		{1 << 30, "1 GiB"},
		{3 << 30, "3 GiB"},
		{5 << 40, "5120 GiB"},
		{1e9, "1000000000 bytes"},
		{-1 << 20, "-1048576 bytes"},
	} {
		if got := Human(tc.n); got != tc.want {
			t.Errorf("Human(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []float64
		want float64
	}{
		{"none", nil, 0},
		{"one", []float64{3}, 3},
		{"odd, unsorted", []float64{5, 1, 3}, 3},
		{"even: the mean of the middle two", []float64{4, 1, 3, 2}, 2.5},
		{"repeats", []float64{2, 2, 9, 2}, 2},
	} {
		in := append([]float64(nil), tc.in...)
		if got := Median(in); got != tc.want {
			t.Errorf("%s: Median(%v) = %v, want %v", tc.name, tc.in, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.in[i] {
				t.Errorf("%s: Median reordered its argument: %v", tc.name, in)
				break
			}
		}
	}
	// Durations: integer halves round toward zero, as time.Duration division does.
	for _, tc := range []struct {
		in   []time.Duration
		want time.Duration
	}{
		{[]time.Duration{3 * time.Second}, 3 * time.Second},
		{[]time.Duration{3, 1, 2}, 2},
		{[]time.Duration{1, 2}, 1},
		{[]time.Duration{time.Second, 2 * time.Second}, 1500 * time.Millisecond},
	} {
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.bin")
	sum, err := WriteRandomSum(src, 3<<20+5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteRandomSum(src, 1); err == nil {
		t.Error("WriteRandomSum over an existing file: no error")
	}
	cp := filepath.Join(dir, "a*b.bin") // a name with a glob character
	if err := CopyFile(src, cp); err != nil {
		t.Fatal(err)
	}
	if err := Fsync(cp); err != nil {
		t.Fatal(err)
	}
	if got, err := HashFile(cp); err != nil || got != sum {
		t.Fatalf("the copy hashes %s, %v; want %s", got, err, sum)
	}
	// WriteRandom replaces what is there.
	if err := WriteRandom(cp, 10); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(cp); err != nil || st.Size() != 10 {
		t.Fatalf("after WriteRandom of 10 bytes: %v, %v", st, err)
	}

	partial := filepath.Join(dir, ".a*b.bin.1234.boardlink-partial")
	other := filepath.Join(dir, ".axb.bin.1234.boardlink-partial")
	for _, p := range []string{partial, other} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := RemoveWithPartials(cp); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{cp: false, partial: false, other: true, src: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s: exists %v after RemoveWithPartials, want %v", filepath.Base(p), err == nil, want)
		}
	}
	if err := RemoveWithPartials(cp); err != nil {
		t.Errorf("RemoveWithPartials of nothing: %v", err)
	}
}
