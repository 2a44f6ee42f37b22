package benchkit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SSHTools are the absolute paths of OpenSSH's programs.
type SSHTools struct {
	SSHD, SSH, SCP, Keygen string
}

// SSHInstall says how to get what FindSSH found missing.
const SSHInstall = "apt-get install openssh-server openssh-client"

// FindSSH locates sshd (as an absolute path: sshd refuses to start
// otherwise), ssh, scp and ssh-keygen, or names what is missing.
func FindSSH() (tools SSHTools, missing string) {
	var miss []string
	look := func(name string, extra ...string) string {
		if p, err := exec.LookPath(name); err == nil {
			if abs, err := filepath.Abs(p); err == nil {
				return abs
			}
		}
		for _, p := range extra {
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				return p
			}
		}
		miss = append(miss, name)
		return ""
	}
	tools = SSHTools{
		SSHD:   look("sshd", "/usr/sbin/sshd", "/usr/local/sbin/sshd"),
		SSH:    look("ssh"),
		SCP:    look("scp"),
		Keygen: look("ssh-keygen"),
	}
	return tools, strings.Join(miss, ", ")
}

// SSHD is a private sshd on 127.0.0.1, run as the current user.
type SSHD struct {
	Port int
	Key  string // the client's private key

	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
	rmDir   string // the privilege separation directory, if we made it
}

// StartSSHD starts sshd as the current user on a free loopback port with
// its own host key, a client key, authorized_keys and sshd_config, all
// generated in dir, and waits until it answers. Stop ends it.
func StartSSHD(ctx context.Context, tools SSHTools, dir string) (*SSHD, error) {
	hostKey, clientKey := filepath.Join(dir, "host_ed25519"), filepath.Join(dir, "client_ed25519")
	for _, k := range []string{hostKey, clientKey} {
		if out, err := exec.CommandContext(ctx, tools.Keygen, "-q", "-t", "ed25519", "-N", "", "-C", "boardlink-bench", "-f", k).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ssh-keygen: %w: %s", err, out)
		}
	}
	pub, err := os.ReadFile(clientKey + ".pub")
	if err != nil {
		return nil, err
	}
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, pub, 0o600); err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	config := filepath.Join(dir, "sshd_config")
	conf := strings.Join([]string{
		"ListenAddress 127.0.0.1",
		"Port " + strconv.Itoa(port),
		"HostKey " + hostKey,
		"PidFile " + filepath.Join(dir, "sshd.pid"),
		"AuthorizedKeysFile " + authorized,
		"StrictModes no",
		"UsePAM no",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PubkeyAuthentication yes",
		"PermitRootLogin prohibit-password",
		"Subsystem sftp internal-sftp",
		"PrintMotd no",
		"UseDNS no",
		"AcceptEnv SHLVL",
		"LogLevel ERROR",
		"",
	}, "\n")
	if err := os.WriteFile(config, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	s := &SSHD{done: make(chan struct{}), Port: port, Key: clientKey, logPath: filepath.Join(dir, "sshd.log")}
	// Run as root, sshd wants its privilege separation directory.
	const privsep = "/run/sshd"
	if os.Geteuid() == 0 {
		if _, err := os.Stat(privsep); errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(privsep, 0o755); err != nil {
				return nil, err
			}
			s.rmDir = privsep
		}
	}
	logf, err := os.Create(s.logPath)
	if err != nil {
		s.Stop()
		return nil, err
	}
	defer logf.Close()
	s.cmd = exec.Command(tools.SSHD, "-D", "-e", "-f", config)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C reaches only us, and we stop sshd. If
	// we die without stopping it, the kernel does (Pdeathsig).
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := s.cmd.Start(); err != nil {
		s.Stop()
		return nil, err
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	if err := s.waitReady(ctx); err != nil {
		s.Stop()
		return nil, fmt.Errorf("%w\n%s", err, s.Log())
	}
	return s, nil
}

// PID is sshd's process id.
func (s *SSHD) PID() int { return s.cmd.Process.Pid }

// ClientOptions are the options every ssh or scp to s needs besides the
// port (-p for ssh, -P for scp): its key, no user config, no known-hosts
// file and no prompt. They also send SHLVL=1, which the server accepts:
// bash, the user's login shell that runs every command, then counts as a
// nested shell and skips ~/.bashrc, which it sources for sshd otherwise.
// A slow .bashrc (one running `pyenv init` takes seconds) would be
// measured instead of ssh.
func (s *SSHD) ClientOptions() []string {
	return []string{"-i", s.Key, "-F", "/dev/null",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
		"-o", "IdentitiesOnly=yes", "-o", "SetEnv=SHLVL=1"}
}

// waitReady waits until sshd sends its banner on the port.
func (s *SSHD) waitReady(ctx context.Context) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-s.done:
			return fmt.Errorf("sshd exited: %v", s.cmd.ProcessState)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			line, rerr := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if rerr == nil && strings.HasPrefix(line, "SSH-") {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sshd did not answer on %s within 10s (last error: %v)", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop ends sshd and removes what StartSSHD made outside its directory.
func (s *SSHD) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
	}
	if s.rmDir != "" {
		os.Remove(s.rmDir) // only if still empty
	}
}

// Log is what sshd wrote, for an error message.
func (s *SSHD) Log() string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) == 0 {
		return "(sshd wrote nothing)"
	}
	return "sshd log:\n" + string(b)
}
