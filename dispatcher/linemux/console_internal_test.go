package linemux

import "testing"

// TestHubResumes: a client that connects again gets the kept text after
// the offset where its last connection's text ended, no more, no less;
// one that asks for nothing from before gets nothing of it.
func TestHubResumes(t *testing.T) {
	h := newHub(16, nil)
	h.Write([]byte("0123456789")) // offsets 0..9
	got := func(ring, resume bool, since int64) (string, int64) {
		s := newSink(nil)
		at := h.add(s, ring, resume, since)
		h.remove(s)
		return string(s.buf), at
	}
	for _, tc := range []struct {
		ring, resume bool
		since        int64
		want         string
		at           int64
	}{
		{false, false, 0, "", 10},
		{true, false, 0, "0123456789", 0},
		{false, true, 4, "456789", 4},
		{false, true, 10, "", 10},
	} {
		if text, at := got(tc.ring, tc.resume, tc.since); text != tc.want || at != tc.at {
			t.Errorf("ring %v resume %v since %d: %q from %d, want %q from %d", tc.ring, tc.resume, tc.since, text, at, tc.want, tc.at)
		}
	}
	h.Write([]byte("abcdefghij")) // offsets 10..19; the ring keeps 4..19
	if text, at := got(false, true, 2); text != "456789abcdefghij" || at != 4 {
		t.Errorf("resume from before the ring: %q from %d, want all it keeps, from 4", text, at)
	}
}
