package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/spf13/cobra"

	"github.com/boardlink/boardlink/agent"
	"github.com/boardlink/boardlink/agent/ota"
	"github.com/boardlink/boardlink/auth"
	"github.com/boardlink/boardlink/board/linux"
	"github.com/boardlink/boardlink/board/sim"
	"github.com/boardlink/boardlink/internal/version"
)

// stopTimeout bounds a clean shutdown: commands get their grace period,
// connections their close handshake.
const stopTimeout = 15 * time.Second

// newCommand returns boardlinkd's command for args; the sim board's
// supervisor runs each boot with the same args.
func newCommand(args []string, stdout, stderr io.Writer) *cobra.Command {
	var opts options
	cmd := &cobra.Command{
		Use:   "boardlinkd --board linux|sim --state-dir DIR [--listen ADDR] [--serial DEV[:BAUD]|unix:PATH] [flags]",
		Short: "The boardlink agent: a structured device API for the board it runs on",
		Long: `boardlinkd runs on a board and serves the boardlink protocol: board.info,
exec with real exit codes, separate stdout and stderr, timeouts and
cancellation, files both ways, downloads, system.reboot and signed A/B
updates, so a host never has to parse a serial shell.

It listens for WebSocket connections over TLS on --listen (wss://, path
/v1/ws, default port 7207; loopback only unless told otherwise: a lab board
listens on :7207) and, with --serial, speaks the framed serial protocol on
a serial line, announcing itself there with a periodic beacon while idle.
Bytes outside frames on that line (the kernel console) do not disturb it.
Plain ws:// is served only when asked for, on --insecure-listen.

ACCESS

The board's identity is an ed25519 key, made at the first start in
STATE_DIR/auth/key.pem: its certificate serves wss://, it signs every
session (on every link, the serial one too), and its fingerprint is in the
mDNS record and the beacon (boardlinkd fingerprint prints it). Hosts pin it
on first use, as ssh does host keys.

A session is served only once the host proved its right to the board, and
until then gets nothing but session.hello, session.auth and pairing:

  pairing   boardlink pair BOARD on the host: the agent shows a one-time
            code on its console and log (or boardlinkd pair prints one on
            the board), the host types it, and both sides store the other's
            key in STATE_DIR/auth/paired.json (boardlinkd pair --list,
            --remove). --pairing=false turns it off.
  tokens    --token-file FILE (repeatable): one token per line, blank lines
            and # comments ignored, at least 16 characters, the file mode
            0600. A host proves a token with a MAC over the session, never
            by sending it; third-party clients may send it as
            "Authorization: Bearer TOKEN" on the upgrade.
  --no-auth every session is served: for a bench nobody else can reach. A
            warning is logged at every start.

Without a token, a pairing or --no-auth, every session is refused, on
loopback too. Failed proofs are paced per source address (a lockout that
doubles with each failure in a row, up to 30s) and logged; a connection
that fails three is closed. Requests from web pages (an Origin header) are
refused, and on a loopback listener so is a Host that names another server.
docs/security.md has the threat model.

LIMITS

Every size and count a peer controls is bounded, with these defaults:
--max-conns 64 connections at once (more are closed at accept);
--handshake-timeout 10s for TLS, the upgrade and authentication;
--idle-timeout 15m for an authenticated connection with nothing under way;
--keepalive-timeout 30s for a WebSocket peer that answers no ping;
--max-inflight 64 requests at once per connection (more are answered
busy); --max-streams 256 per connection; --max-commands 1024 commands
running or holding a result not collected yet; a connection's results are
kept until it collects them, and --result-grace 5m after it ends, for a
client that reconnects;
--max-download 4GiB and --download-deadline 1h per download;
--max-unpack 16GiB and --max-unpack-entries 100000 per archive.

BOARDS

--board says what the agent runs on:

  linux  the Linux system boardlinkd runs on: a lab board, or a VM. With
         --boot and --slot its A/B slots are block devices booted by U-Boot
         or GRUB; without them it serves exec, files, downloads and reboot,
         and no updates (no ota capability). A reboot reboots it.
         boardlinkd is the agent itself, started by the init system; under
         a Type=notify unit it says READY=1 once it serves.
  sim    a simulated board in a directory, for a host, a test or CI:
         boardlinkd is the board's boot loader, a supervisor that runs the
         agent as its child, one boot after another.

There is no default: a real board never falls back to the simulator.

Both keep their identity (id, model, labels) in STATE_DIR/identity.json and
serve the same methods; what differs is where the boot id, the slots and
the reboot come from.

A LINUX BOARD

Identity: the first start names the board "linux-" and the first 12 hex
digits of /etc/machine-id (its host name up to the first dot on a system
without one) unless --id names it, and calls it what the device tree
(/proc/device-tree/model) or DMI (/sys/class/dmi/id/product_name) does
unless --model names it; with neither, --model is required (the model
selects the images the board accepts). Later starts keep what is stored, so an update that brings another
host name leaves the id alone; --id, --model and --label change it. Boards
flashed from one image that keeps its host name need --id. The boot id is
the kernel's (/proc/sys/kernel/random/boot_id), the boot time its btime
(/proc/stat).

Slots (for updates; a board without slots gives neither --boot nor --slot,
and --boot-env, --cmdline, --trust-key and --health-check are refused
there): --boot names the boot loader, uboot or grub; --slot
A=DEV and --slot B=DEV the block devices of the two slots (both required;
a --slot replaces every slot of the config file); --boot-env the boot
loader's environment: for U-Boot the fw_env.config that locates it
(default /etc/fw_env.config), for GRUB the grubenv file (default
/boot/grub/grubenv; make it once with "grub-editenv FILE create"). The
slot that runs is read from the kernel command line (--cmdline, default
/proc/cmdline), where the boot script puts boardlink.slot=A (or RAUC's
rauc.slot=A). U-Boot needs fw_printenv and fw_setenv (Debian package
libubootenv-tool), GRUB needs grub-editenv (grub-common). The boot scripts
that boot a trial slot once and fall back by themselves, and the variables
boardlinkd sets, are in docs/boot.md. Every setting is checked at start,
and the tools looked for; what the environment and the command line say
is read when it is needed, so a board whose boot script is wrong still
serves exec, and says what is wrong in its log and in its OTA status.

Reboot: on system.reboot, and to boot an update's trial or to go back
after a failed one, the agent answers, stops cleanly (connections closed,
every running command's process group ended), then runs --reboot-command
with /bin/sh -c (default: "systemctl reboot" where systemd is the init
system, "reboot" elsewhere) and exits with status 0 once the command has
returned: the init system takes the board down. If the command fails,
boardlinkd says so and exits with status 1, and the board runs on without
its agent until the service manager starts it again: run it under a
systemd unit with Restart=on-failure (not Restart=always, which could
start it again while the system goes down).

--serial on a linux board opens the device itself, DEV[:BAUD], and opens
it again after a pause when it fails (a USB gadget port while the cable is
out); unix:PATH listens on a unix socket and serves each connection as the
line.

A U-Boot board's /etc/boardlink/boardlinkd.yaml, its slots on eMMC partitions
2 and 3:

    board: linux
    state_dir: /var/lib/boardlink
    listen: ":7207"
    token_file: [/etc/boardlink/tokens]
    model: imx8mp-evk
    labels: {lab: berlin, rack: "3"}
    boot: uboot
    slots:
      A: /dev/mmcblk2p2
      B: /dev/mmcblk2p3
    boot_env: /etc/fw_env.config
    serial: /dev/ttyGS0:115200
    roots: [/srv/tests]
    trust_keys: [/etc/boardlink/release.pub]
    health_checks:
      - systemctl is-system-running --wait
    health_timeout: 2m

A SIM BOARD

The sim board keeps its identity (its default id a generated sim-XXXXXX,
its default model sim) and boot history under --state-dir, and simulates
the board's bootloader. boardlinkd starts as a supervisor (the bootloader)
that runs the agent as its child process, one boot after another; every
boot has a fresh boot id. On system.reboot the agent answers, stops
cleanly (connections closed, every running command's process group ended)
and exits with status 75; the supervisor then prints the reboot on the
console, waits --sim-boot-delay and boots again. An agent killed with
SIGKILL is a power cut (or a watchdog) and is followed by a new boot too.
Killing the supervisor with SIGKILL cuts the power: the agent dies with
it, and so does every command's leader process (unlike on hardware, what a
command left running in the background may survive). If the agent exits in
any other way, the supervisor exits with its status; and after 3 boots in
a row that end before the agent was up it gives up with status 2, rather
than loop. A --listen port of 0 is chosen once, when the supervisor starts,
and kept across boots, as a board keeps its address.

--serial gives the sim board a UART that, like a real one, survives its
reboots: the supervisor holds the line and hands each boot its own end of
it. DEV[:BAUD] opens a serial device (default 115200 baud); unix:PATH
listens on a unix socket and takes each connection as the line, as QEMU's
chardev server does (one at a time: a new connection replaces the old;
a socket left behind by a killed supervisor is replaced). Between the
agent's frames the line carries console text: the bootloader's banner at
every boot ("sim-boot: boot N, booting boardlinkd" and a kernel-style
line), "reboot: Restarting system" when a boot reboots, "reboot: Power
down" when the supervisor stops, and the agent's log. What the host sends
while no agent runs is lost.

The sim board has two slots, A and B, as files under STATE_DIR/slots, and
a boot environment, STATE_DIR/bootenv.json, and the supervisor is its A/B
boot loader (--boot sim, the default there): at every boot it reads the
environment and boots the active slot, or a trial slot once. A trial boot
that ends without a commit (a reboot, a crash, a power cut) is followed by
a boot of the active slot, the trial cleared; the console says so
("sim-boot: trial of slot B was not committed: falling back to A") and
names the slot of every boot ("sim-boot: booting slot A"). --slot,
--boot-env, --cmdline and --reboot-command are for a linux board only.

The supervisor marks each boot with the environment variables
BOARDLINKD_SIM_BOOT (the boot number), BOARDLINKD_SIM_SLOT (the slot it
booted, A or B), BOARDLINKD_SIM_UP_FD (a descriptor the agent writes to
once it is up) and, with --serial, BOARDLINKD_UART_FD (the agent's end of
the line); a process that finds BOARDLINKD_SIM_BOOT set runs as the agent,
never as a supervisor. The agent removes them from its environment, so the
commands it runs do not see them.

UPDATES

An OTA image is installed only if it is signed by a key given with
--trust-key (an ed25519 public key file; repeatable; each must be
readable), and only if it names the board's model. The board writes the
slot that does not run, sets a trial boot of it and reboots. After the
trial boot, the commands given with --health-check run in order, each as
"/bin/sh -c CMD" with BOARDLINK_SLOT and BOARDLINK_VERSION in its
environment; the update is committed only if all of them exit 0 within
--health-timeout (default 60s), and rolled back otherwise (the board then
reboots into the active slot). The update's state is kept in
STATE_DIR/ota.

FILES

The file methods may touch the directories given with --root (repeatable;
each must exist), and nothing else: never the state directory, which holds
the board's key and its boot and update state. Without --root the file
methods are off. file.download keeps its package cache in STATE_DIR/cache.

DISCOVERY

The board advertises itself over mDNS (_boardlink._tcp, instance name = the
board id, TXT: id, model, proto, caps, ver, boot, slot, fp (its key's
fingerprint), tls=1 (the port serves wss://) and l.KEY; never a secret,
but labels are broadcast to the whole link)
on --iface interfaces, or every up multicast-capable one; a server
listening on loopback only is advertised only where --iface says. It says
goodbye when it stops, and at every reboot. --no-mdns turns this off.

CONFIG FILE

A YAML file given with --config may hold the same settings, under the
keys board, state_dir, listen, insecure_listen, serial, token_file,
pairing, no_auth, id, model, labels, ifaces, no_mdns,
exec_log_size, verbose, log_format, roots, sim_boot_delay, boot, slots, boot_env,
cmdline, reboot_command, trust_keys, health_checks, health_timeout,
max_conns, handshake_timeout, idle_timeout, keepalive_timeout,
max_inflight, max_streams, max_commands,
result_grace, max_download, max_unpack, max_unpack_entries and
download_deadline; an unknown key is an error (token_file takes one file
or a list of them). Flags given on the command
line win: --root, --iface, --trust-key, --health-check, --token-file and
--slot replace the file's lists, --label its labels.

SIGNALS AND EXIT STATUS

SIGINT or SIGTERM stops the board cleanly: the agent closes its
connections and ends every running command's process group (TERM, then
KILL after its grace). On the sim board the supervisor passes SIGTERM on
to the agent, and kills it if it has not stopped within 20s.

Exit status: 0 after a clean stop, and on a linux board after the reboot
command started a reboot; 1 when that command failed; 2 for a bad setting
or a failure to start; on the sim board, the agent's own status when it
exited other than by a reboot or a power cut (128+N when killed by signal
N).`,
		Example: `  boardlinkd --board linux --state-dir /var/lib/boardlink --listen :7207 --token-file /etc/boardlink/tokens \
      --model rpi4 --boot uboot --slot A=/dev/mmcblk0p2 --slot B=/dev/mmcblk0p3 \
      --trust-key /etc/boardlink/release.pub
  boardlinkd --board linux --state-dir /var/lib/boardlink --model pc-x86 --boot grub --boot-env /boot/efi/grubenv \
      --slot A=/dev/disk/by-partlabel/rootfs_a --slot B=/dev/disk/by-partlabel/rootfs_b \
      --reboot-command 'systemctl reboot --no-wall'
  boardlinkd --board sim --state-dir /tmp/board1 --listen 127.0.0.1:7207
  boardlinkd --board sim --state-dir /var/lib/boardlink --serial /dev/ttyGS0:115200 --token-file /etc/boardlink/tokens
  boardlinkd pair --state-dir /var/lib/boardlink
  boardlinkd --board sim --state-dir /tmp/board2 --no-mdns --serial unix:/tmp/board2.sock --root /tmp/board2-files
  boardlinkd --board sim --state-dir /tmp/board3 --trust-key /etc/boardlink/release.pub --health-check 'systemctl is-system-running --wait'
  boardlinkd --config /etc/boardlink/boardlinkd.yaml`,
		Version:       version.Version,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := opts.config(cmd)
			if err != nil {
				return err
			}
			var parts boardParts
			if cfg.Board == boardLinux {
				if parts, err = newLinuxBoard(cfg); err != nil {
					return err
				}
				return serve(cmd.Context(), cfg, parts, stderr)
			}
			h, err := sim.TakeHandoff()
			if err != nil {
				return err
			}
			if h == nil {
				return supervise(cmd.Context(), cfg, args, stdout, stderr)
			}
			if parts, err = newSimBoard(cfg, h); err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, parts, stderr)
		},
	}
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	opts.bind(cmd)
	cmd.AddCommand(newPairCmd(stdout, stderr), newFingerprintCmd(stdout))
	cmd.SetHelpFunc(func(c *cobra.Command, args []string) {
		fmt.Fprintf(c.OutOrStdout(), "%s\n\n%s", c.Long, c.UsageString())
	})
	return cmd
}

// options are boardlinkd's flags, before a config file is merged in.
type options struct {
	cfg        Config
	configFile string
	labels     []string
	slots      []string
	pairing    bool
}

// bind defines the flags of cmd.
func (o *options) bind(cmd *cobra.Command) {
	f := cmd.Flags()
	cfg := &o.cfg
	f.StringVar(&cfg.Board, "board", "", "what the agent runs on: linux (this system) or sim (a simulated board in --state-dir); required")
	f.StringVar(&cfg.StateDir, "state-dir", "", "directory for the board's persistent state (required)")
	f.StringVar(&cfg.Listen, "listen", fmt.Sprintf("127.0.0.1:%d", DefaultPort), `wss:// listen address, TLS with the board's key ("" to disable)`)
	f.StringVar(&cfg.InsecureListen, "insecure-listen", "", "plain ws:// listen address, unencrypted (sessions still authenticate); only when asked for")
	f.StringVar(&cfg.Serial, "serial", "", "serial line to serve the framed protocol on: a device as DEV[:BAUD] (default baud 115200), or unix:PATH to listen on a unix socket")
	f.StringArrayVar((*[]string)(&cfg.TokenFiles), "token-file", nil, "file of tokens a host may prove, one per line, mode 0600 (repeatable: one per lab host)")
	f.BoolVar(&o.pairing, "pairing", true, "let hosts pair with a one-time code (boardlink pair)")
	f.BoolVar(&cfg.NoAuth, "no-auth", false, "serve every session without a token or pairing (a warning at every start)")
	f.StringVar(&cfg.ID, "id", "", "board id (default: the stored one; else on a linux board linux- and 12 hex digits of /etc/machine-id, on a sim board a generated sim-XXXXXX)")
	f.StringVar(&cfg.Model, "model", "", "board model, which images must name (default: the stored one; else sim on a sim board; on a linux board the device tree's or DMI's, and without either its first start needs it)")
	f.StringArrayVar(&o.labels, "label", nil, "label as KEY=VALUE (repeatable; replaces the stored labels)")
	f.IntVar(&cfg.ExecLogSize, "exec-log-size", 100, "number of commands kept in the command log")
	f.BoolVarP(&cfg.Verbose, "verbose", "v", false, "log to stderr at debug level")
	f.StringVar(&cfg.LogFormat, "log-format", logText, "log lines as text (key=value) or json (one object a line, for log collectors)")
	f.StringVar(&o.configFile, "config", "", "YAML config file with the same keys")
	f.StringArrayVar(&cfg.Ifaces, "iface", nil, "interface to advertise on over mDNS (repeatable; default: every up, multicast-capable one)")
	f.BoolVar(&cfg.NoMDNS, "no-mdns", false, "do not advertise over mDNS")
	f.StringArrayVar(&cfg.Roots, "root", nil, "directory the file methods may touch, besides the state dir (repeatable)")
	f.DurationVar(&cfg.SimBootDelay, "sim-boot-delay", sim.DefaultBootDelay, "sim board: pause between the end of a boot and the next")
	f.StringVar(&cfg.Boot, "boot", "", "boot loader of the A/B slots: uboot or grub on a linux board (none: no updates); sim, the supervisor, on a sim board (the default there)")
	f.StringArrayVar(&o.slots, "slot", nil, "linux board: a slot's block device as SLOT=DEVICE, e.g. A=/dev/mmcblk0p2 (give A and B)")
	f.StringVar(&cfg.BootEnv, "boot-env", "", "linux board: the boot loader's environment: uboot, its fw_env.config (default "+linux.DefaultUBootEnv+"); grub, the grubenv file (default "+linux.DefaultGRUBEnv+")")
	f.StringVar(&cfg.Cmdline, "cmdline", "", "linux board: the kernel command line naming the booted slot with boardlink.slot= (default "+linux.DefaultCmdline+")")
	f.StringVar(&cfg.RebootCommand, "reboot-command", "", "linux board: shell command that reboots, run once the agent stopped (default: systemctl reboot, or reboot without systemd)")
	f.StringArrayVar(&cfg.TrustKeys, "trust-key", nil, "ed25519 public key file (PATH.pub) trusted to sign OTA images (repeatable; none: every image is refused)")
	f.StringArrayVar(&cfg.HealthChecks, "health-check", nil, "shell command that must exit 0 after a trial boot for the update to commit (repeatable; run in order)")
	f.DurationVar(&cfg.HealthTimeout, "health-timeout", ota.DefaultHealthTimeout, "time allowed for all the health checks of a trial boot")
	l := &cfg.Limits
	f.IntVar(&l.MaxConns, "max-conns", agent.DefaultMaxConns, "limit: concurrent WebSocket connections (more are closed at once)")
	f.DurationVar(&l.HandshakeTimeout, "handshake-timeout", agent.DefaultHandshakeTimeout, "limit: time for TLS, the upgrade and authentication")
	f.DurationVar(&l.IdleTimeout, "idle-timeout", agent.DefaultIdleTimeout, "limit: an authenticated connection with nothing under way is closed after this")
	f.DurationVar(&l.KeepaliveTimeout, "keepalive-timeout", agent.DefaultKeepaliveTimeout, "limit: a WebSocket peer silent this long (pings unanswered) is closed")
	f.IntVar(&l.MaxInflight, "max-inflight", agent.DefaultMaxInflight, "limit: requests served at once per connection (more are answered busy)")
	f.IntVar(&l.MaxStreams, "max-streams", agent.DefaultMaxStreams, "limit: streams open at once per connection")
	f.IntVar(&l.MaxCommands, "max-commands", agent.DefaultMaxCommands, "limit: commands running or holding a result not collected yet (more are answered busy)")
	f.DurationVar(&l.ResultGrace, "result-grace", agent.DefaultResultGrace, "limit: how long a connection's unwaited command results are kept after it ends")
	l.MaxDownload, l.MaxUnpack = agent.DefaultMaxDownload, agent.DefaultMaxUnpack
	f.Var(&l.MaxDownload, "max-download", "limit: bytes of one download (file.download, ota --url)")
	f.Var(&l.MaxUnpack, "max-unpack", "limit: bytes one archive may unpack to")
	f.IntVar(&l.MaxUnpackEntries, "max-unpack-entries", agent.DefaultMaxUnpackEntries, "limit: entries one archive may unpack")
	f.DurationVar(&l.DownloadDeadline, "download-deadline", agent.DefaultDownloadDeadline, "limit: time for one download, retries included")
}

// config is what to run with: the config file, if any, with the flags the
// user set over it, validated.
func (o *options) config(cmd *cobra.Command) (Config, error) {
	cfg := o.cfg
	if o.configFile != "" {
		file, err := loadConfigFile(o.configFile)
		if err != nil {
			return Config{}, unknownKeys(err)
		}
		cfg = mergeConfig(file, cfg, cmd)
	}
	if cmd.Flags().Changed("pairing") || cfg.Pairing == nil {
		cfg.Pairing = &o.pairing
	}
	if len(o.labels) > 0 {
		parsed, err := parseLabels(o.labels)
		if err != nil {
			return Config{}, err
		}
		cfg.Labels = parsed
	}
	if len(o.slots) > 0 {
		parsed, err := parseSlots(o.slots)
		if err != nil {
			return Config{}, err
		}
		cfg.Slots = parsed
	}
	if err := cfg.validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// mergeConfig starts from the file and applies the flags the user set.
func mergeConfig(file, flags Config, cmd *cobra.Command) Config {
	set := func(name string) bool { return cmd.Flags().Changed(name) }
	out := file
	if out.Board == "" || set("board") {
		out.Board = flags.Board
	}
	if set("state-dir") {
		out.StateDir = flags.StateDir
	}
	if out.Listen == "" && out.InsecureListen == "" && out.Serial == "" || set("listen") {
		out.Listen = flags.Listen
	}
	if set("token-file") {
		out.TokenFiles = flags.TokenFiles
	}
	if set("no-auth") {
		out.NoAuth = flags.NoAuth
	}
	for name, pair := range map[string][2]*string{
		"serial": {&out.Serial, &flags.Serial}, "insecure-listen": {&out.InsecureListen, &flags.InsecureListen},
		"id": {&out.ID, &flags.ID}, "model": {&out.Model, &flags.Model},
		"boot-env": {&out.BootEnv, &flags.BootEnv}, "cmdline": {&out.Cmdline, &flags.Cmdline},
		"reboot-command": {&out.RebootCommand, &flags.RebootCommand},
	} {
		if set(name) {
			*pair[0] = *pair[1]
		}
	}
	if out.ExecLogSize == 0 || set("exec-log-size") {
		out.ExecLogSize = flags.ExecLogSize
	}
	if set("verbose") {
		out.Verbose = flags.Verbose
	}
	if out.LogFormat == "" || set("log-format") {
		out.LogFormat = flags.LogFormat
	}
	if set("no-mdns") {
		out.NoMDNS = flags.NoMDNS
	}
	if set("iface") {
		out.Ifaces = flags.Ifaces
	}
	if set("root") {
		out.Roots = flags.Roots
	}
	if out.SimBootDelay == 0 || set("sim-boot-delay") {
		out.SimBootDelay = flags.SimBootDelay
	}
	if out.Boot == "" || set("boot") {
		out.Boot = flags.Boot
	}
	if set("trust-key") {
		out.TrustKeys = flags.TrustKeys
	}
	if set("health-check") {
		out.HealthChecks = flags.HealthChecks
	}
	if out.HealthTimeout == 0 || set("health-timeout") {
		out.HealthTimeout = flags.HealthTimeout
	}
	mergeLimits(&out.Limits, flags.Limits, set)
	return out
}

// mergeLimits takes each limit from the flags when the flag was given or
// the file left it out.
func mergeLimits(out *Limits, flags Limits, set func(string) bool) {
	take(&out.MaxConns, flags.MaxConns, "max-conns", set)
	take(&out.HandshakeTimeout, flags.HandshakeTimeout, "handshake-timeout", set)
	take(&out.IdleTimeout, flags.IdleTimeout, "idle-timeout", set)
	take(&out.KeepaliveTimeout, flags.KeepaliveTimeout, "keepalive-timeout", set)
	take(&out.MaxInflight, flags.MaxInflight, "max-inflight", set)
	take(&out.MaxStreams, flags.MaxStreams, "max-streams", set)
	take(&out.MaxCommands, flags.MaxCommands, "max-commands", set)
	take(&out.ResultGrace, flags.ResultGrace, "result-grace", set)
	take(&out.MaxDownload, flags.MaxDownload, "max-download", set)
	take(&out.MaxUnpack, flags.MaxUnpack, "max-unpack", set)
	take(&out.MaxUnpackEntries, flags.MaxUnpackEntries, "max-unpack-entries", set)
	take(&out.DownloadDeadline, flags.DownloadDeadline, "download-deadline", set)
}

// take sets *out to the flag's value when the flag was given or *out is
// unset.
func take[T comparable](out *T, flag T, name string, set func(string) bool) {
	var zero T
	if *out == zero || set(name) {
		*out = flag
	}
}

func parseLabels(kvs []string) (map[string]string, error) {
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want KEY=VALUE", kv)
		}
		out[k] = v
	}
	return out, nil
}

// parseSlots parses --slot SLOT=DEVICE flags; validate checks the slots.
func parseSlots(kvs []string) (map[string]string, error) {
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		s, dev, ok := strings.Cut(kv, "=")
		if !ok || s == "" || dev == "" {
			return nil, fmt.Errorf("--slot %q: want SLOT=DEVICE, e.g. A=/dev/mmcblk0p2", kv)
		}
		if _, dup := out[s]; dup {
			return nil, fmt.Errorf("--slot %s: given twice", s)
		}
		out[s] = dev
	}
	return out, nil
}

func newLogger(cfg Config, stderr io.Writer) *slog.Logger {
	level := slog.LevelInfo
	if cfg.Verbose {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == logJSON {
		return slog.New(slog.NewJSONHandler(stderr, opts))
	}
	return slog.New(slog.NewTextHandler(stderr, opts))
}

// The log formats of --log-format.
const (
	logText = "text"
	logJSON = "json"
)

// rebootRequest carries the agent's system.reboot to serve.
type rebootRequest chan struct{}

func (r rebootRequest) reboot() {
	select {
	case r <- struct{}{}:
	default: // one is pending already
	}
}

// logAccess says at every start who may use the agent: the key's
// fingerprint, the tokens and paired hosts, and a warning without any.
func logAccess(log *slog.Logger, cfg Config, key ed25519.PrivateKey) {
	fp := auth.FingerprintOf(key.Public().(ed25519.PublicKey))
	paired, err := agent.ReadPaired(cfg.pairedFile())
	if err != nil {
		log.Error("paired hosts", "err", err)
	}
	tokens, _ := cfg.tokens() // validated already
	log.Info("access", "fingerprint", fp, "tokens", len(tokens), "token_files", cfg.TokenFiles,
		"paired_hosts", len(paired), "pairing", cfg.pairing(), "image_keys", len(cfg.TrustKeys))
	switch {
	case cfg.NoAuth:
		log.Warn("--no-auth: every session is served without a token or a pairing; anyone who reaches this board can run commands as this user")
	case len(tokens) == 0 && len(paired) == 0 && cfg.pairing():
		log.Warn("no token and no paired host yet: every session is refused until a host pairs (boardlink pair BOARD, or boardlinkd pair on the board)")
	case len(tokens) == 0 && len(paired) == 0:
		log.Warn("no token, no paired host and pairing off: every session is refused")
	}
}

// yamlUnknownField is how the YAML decoder says a key is unknown.
var yamlUnknownField = regexp.MustCompile(`^(line \d+): field (\S+) not found in type \S+$`)

// unknownKeys words the decoder's unknown-key errors in the config's own
// terms, "unknown key rootz; known keys: ...", never a Go type.
func unknownKeys(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	known := strings.Join(configKeys(reflect.TypeFor[Config]()), ", ")
	msgs := make([]string, len(te.Errors))
	for i, e := range te.Errors {
		msgs[i] = e
		if m := yamlUnknownField.FindStringSubmatch(e); m != nil {
			msgs[i] = fmt.Sprintf("%s: unknown key %s; known keys: %s", m[1], m[2], known)
		}
	}
	path, _, _ := strings.Cut(err.Error(), ": yaml:")
	return fmt.Errorf("%s: %s", path, strings.Join(msgs, "; "))
}

// configKeys are the YAML keys of the struct t, inline ones included.
func configKeys(t reflect.Type) []string {
	var keys []string
	for f := range t.Fields() {
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case opts == "inline" && f.Type.Kind() == reflect.Struct:
			keys = append(keys, configKeys(f.Type)...)
		case name != "" && name != "-":
			keys = append(keys, name)
		}
	}
	return keys
}
