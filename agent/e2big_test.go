package agent_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/boardlink/boardlink/dispatcher"
	"github.com/boardlink/boardlink/proto"
)

// TestExecArgumentListTooLong: an argv the kernel refuses (E2BIG) is the
// caller's fault, not internal.
func TestExecArgumentListTooLong(t *testing.T) {
	h := newHarness(t, "")
	c := dialWS(t, h)
	_, err := c.Exec(ctxTimeout(t, time.Minute), dispatcher.ExecRequest{Argv: []string{"/bin/true", strings.Repeat("x", 200<<10)}})
	var pe *proto.Error
	if !proto.IsReason(err, proto.ReasonInvalidParams) || !errors.As(err, &pe) || pe.Data.Fields[0].Field != "argv" || pe.Data.Fields[0].Rule != "too_long" {
		t.Fatalf("exec with a 200 KiB argument: %v, want invalid_params on argv (too_long)", err)
	}
}
