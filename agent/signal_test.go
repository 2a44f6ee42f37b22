package agent

import (
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/boardlink/boardlink/proto"
)

// TestSignalNames: every signal a request may name is known to the agent
// under that name, and the names the agent reports are the protocol's
// (TERM, not SIGTERM; SIGN for a real-time signal).
func TestSignalNames(t *testing.T) {
	accepted := map[string]bool{}
	for _, f := range []reflect.StructField{
		field(t, proto.ExecStartParams{}, "KillSignal"), field(t, proto.ExecCancelParams{}, "Signal"),
	} {
		_, list, ok := strings.Cut(f.Tag.Get("validate"), "oneof=")
		if !ok {
			t.Fatalf("%s: no oneof in its validation", f.Name)
		}
		for _, name := range strings.Fields(list) {
			accepted[name] = true
		}
	}
	for name := range accepted {
		s, ok := signalByName(name)
		if !ok || signalName(s) != name {
			t.Errorf("%s: signalByName = %d, %v; back to %q", name, s, ok, signalName(s))
		}
	}
	for s, want := range map[syscall.Signal]string{
		syscall.SIGTERM: "TERM", syscall.SIGKILL: "KILL", syscall.SIGSEGV: "SEGV", syscall.SIGSTKFLT: "STKFLT",
		syscall.SIGSYS: "SYS", 34: "SIG34", 64: "SIG64",
	} {
		if got := signalName(s); got != want {
			t.Errorf("signalName(%d) = %q, want %q", s, got, want)
		}
	}
	for _, name := range []string{"SIGTERM", "SIG34", "", "term", "BOOM"} {
		if s, ok := signalByName(name); ok {
			t.Errorf("signalByName(%q) = %d: the protocol has no such name", name, s)
		}
	}
}

func field(t *testing.T, v any, name string) reflect.StructField {
	t.Helper()
	f, ok := reflect.TypeOf(v).FieldByName(name)
	if !ok {
		t.Fatalf("%T has no field %s", v, name)
	}
	return f
}
