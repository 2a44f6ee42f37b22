package testenv

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// privateEnv marks a test process re-run inside its own network namespace.
const privateEnv = "BOARDLINK_TEST_PRIVATE_NETNS"

// InPrivateLoopback makes the rest of the test run where mDNS may be pinned
// to lo: a network namespace of its own whose lo is up and can multicast
// (the host's lo usually cannot, and is not ours to change). It returns
// true in the process that should go on with the test; false in the
// parent, after the test ran (and passed or failed) in the namespace.
func InPrivateLoopback(t *testing.T) bool {
	t.Helper()
	if os.Getenv(privateEnv) == "1" {
		lo, err := net.InterfaceByName("lo")
		if err != nil || lo.Flags&net.FlagMulticast == 0 || lo.Flags&net.FlagUp == 0 {
			t.Fatalf("lo in the private namespace cannot multicast: %v %v", lo, err)
		}
		return true
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		SkipOrFail(t, "no unshare (util-linux) to make a private network namespace")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	flag := "-rn" // a user namespace too, so no root is needed
	if os.Geteuid() == 0 {
		flag = "-n"
	}
	cmd := exec.Command("unshare", flag, "sh", "-c",
		`ip link set lo up && ip link set lo multicast on && exec "$0" -test.run="^$1\$" -test.v -test.count=1 -test.timeout=5m`,
		exe, strings.Split(t.Name(), "/")[0])
	cmd.Env = append(os.Environ(), privateEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("in a private network namespace:\n%s", out)
	if err != nil {
		if strings.Contains(string(out), "--- FAIL") {
			t.Fatalf("failed in its namespace: %v", err)
		}
		SkipOrFail(t, "cannot make a private network namespace with a multicast lo: %v", err)
	}
	return false
}
