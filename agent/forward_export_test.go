package agent

import (
	"testing"
	"time"
)

// SetTCPAcceptWait shortens how long a listener holds a connection no
// tcp.accept took, for t.
func SetTCPAcceptWait(t *testing.T, d time.Duration) {
	old := tcpAcceptWait.Swap(int64(d))
	t.Cleanup(func() { tcpAcceptWait.Store(old) })
}
