package bootstrap

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"strings"
)

// Where --install puts things on the board (under InstallRoot).
const (
	installConfig = "/etc/boardlink/boardlinkd.yaml"
	installToken  = "/etc/boardlink/tokens"
	installState  = "/var/lib/boardlink"
	installUnit   = "/etc/systemd/system/boardlinkd.service"
)

// install copies the agent sent to the board's system (/usr/local/bin,
// else /usr/sbin), with its config and token in /etc/boardlink, and makes
// it start at boot: a systemd unit where systemd runs, else an init.d
// script. It does not start it: start does, on the line, at once.
func (b *run) install(ctx context.Context) error {
	o := b.opts
	root := strings.TrimRight(o.InstallRoot, "/")
	if root == "" && b.tools.uid != "0" {
		return fmt.Errorf("%w: installing needs root on the board, and id -u says %q: log in as root (--user root)", ErrCommand, b.tools.uid)
	}
	r := func(p string) string { return shQuote(root + p) }
	out, err := b.sh.check(ctx, o.CommandTimeout, `if [ -d `+r("/usr/local/bin")+` ]; then d=/usr/local/bin; else d=/usr/sbin; fi; echo "bin=$d"; `+
		`[ -d /run/systemd/system ] && echo init=systemd; ls `+r("/etc/init.d")+` 2>/dev/null | grep -q '^S[0-9][0-9]' && echo init=rcS; `+
		`[ -d `+r("/etc/init.d")+` ] && echo init=initd; true`)
	if err != nil {
		return err
	}
	var bin, initSys string
	for _, ln := range strings.Split(out, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(ln), "=")
		switch {
		case k == "bin":
			bin = v + "/boardlinkd"
		case k == "init" && initSys == "":
			initSys = v
		}
	}
	if bin == "" {
		return fmt.Errorf("%w: no directory for the agent on the board: %q", ErrCommand, out)
	}
	tmp := shQuote(root + bin + ".new")
	if _, err := b.sh.check(ctx, o.CommandTimeout, "mkdir -p "+shQuote(path.Dir(root+bin))+" "+r("/etc/boardlink")+" "+r(installState)+
		" && cp "+shQuote(b.res.Remote)+" "+tmp+" && chmod 755 "+tmp+" && mv -f "+tmp+" "+shQuote(root+bin)); err != nil {
		return err
	}
	if _, err := b.sh.check(ctx, o.CommandTimeout, "(umask 077 && cp "+shQuote(o.Dir+"/token")+" "+r(installToken)+")"); err != nil {
		return err
	}
	b.res.Installed = append(b.res.Installed, root+bin, root+installToken)

	q := func(s string) string { j, _ := json.Marshal(s); return string(j) }
	cfg := "# The boardlink agent, installed by boardlink bootstrap.\nboard: linux\nstate_dir: " + q(installState) +
		"\nserial: " + q(b.res.Tty) + "\ntoken_file: [" + q(installToken) + "]\nno_mdns: true\n"
	if o.ID != "" {
		cfg += "id: " + q(o.ID) + "\n"
	}
	if o.Model != "" {
		cfg += "model: " + q(o.Model) + "\n"
	}
	if err := b.writeFile(ctx, root+installConfig, cfg, "644"); err != nil {
		return err
	}
	b.res.Installed = append(b.res.Installed, root+installConfig)
	start := shJoin(append([]string{bin, "--config", installConfig}, o.Args...))

	switch initSys {
	case "systemd":
		unit := "[Unit]\nDescription=boardlink agent on " + b.res.Tty + "\n"
		if tty := path.Base(strings.SplitN(b.res.Tty, ":", 2)[0]); strings.HasPrefix(tty, "tty") {
			// The agent owns the line from now on: no login on it.
			unit += "Conflicts=serial-getty@" + tty + ".service\nAfter=serial-getty@" + tty + ".service\n"
		}
		unit += "\n[Service]\nExecStart=" + start + "\nRestart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n"
		if err := b.writeFile(ctx, root+installUnit, unit, "644"); err != nil {
			return err
		}
		wants := root + "/etc/systemd/system/multi-user.target.wants"
		if _, err := b.sh.check(ctx, o.CommandTimeout, "mkdir -p "+shQuote(wants)+" && ln -sf "+installUnit+" "+shQuote(wants+"/boardlinkd.service")); err != nil {
			return err
		}
		b.res.Installed = append(b.res.Installed, root+installUnit)
	case "rcS", "initd":
		script := "#!/bin/sh\n# The boardlink agent, installed by boardlink bootstrap.\ncase \"$1\" in\n" +
			"start) " + start + " </dev/null >>/var/log/boardlinkd.log 2>&1 & echo $! > /var/run/boardlinkd.pid ;;\n" +
			"stop) [ -f /var/run/boardlinkd.pid ] && kill $(cat /var/run/boardlinkd.pid); rm -f /var/run/boardlinkd.pid ;;\n" +
			"restart) \"$0\" stop; \"$0\" start ;;\n*) echo \"usage: $0 start|stop|restart\" >&2; exit 2 ;;\nesac\n"
		name := "/etc/init.d/boardlinkd"
		if initSys == "rcS" { // busybox and Buildroot run /etc/init.d/S??* in order
			name = "/etc/init.d/S99boardlinkd"
		}
		if err := b.writeFile(ctx, root+name, script, "755"); err != nil {
			return err
		}
		b.res.Installed = append(b.res.Installed, root+name)
		if initSys == "initd" {
			if _, err := b.sh.check(ctx, o.CommandTimeout, `for n in 2 3 4 5; do [ -d `+r("/etc/rc")+`$n.d ] && ln -sf ../init.d/boardlinkd `+r("/etc/rc")+`$n.d/S99boardlinkd; done; true`); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%w: the board has neither systemd nor /etc/init.d: the agent is in %s but nothing starts it at boot", ErrCommand, root+bin)
	}
	return nil
}

// writeFile writes text to name on the board with mode, through a
// here-document.
func (b *run) writeFile(ctx context.Context, name, text, mode string) error {
	end := "BL_END_" + b.sh.token
	_, err := b.sh.check(ctx, b.opts.CommandTimeout, "mkdir -p "+shQuote(path.Dir(name))+" && cat > "+shQuote(name)+" <<'"+end+"' && chmod "+mode+" "+shQuote(name),
		withBody([]byte(text+end+"\n"), fmt.Sprintf("%d lines of %s", strings.Count(text, "\n"), name)))
	return err
}
