// Command packaging builds boardlink's Debian packages, with nfpm as a
// library and the go command, and no other tool:
//
//	go run ./packaging [-o dist] [-arch amd64,arm64,armhf,riscv64] [-version 1.2.3]
//	                   [-armhf-goarm 7] [-maintainer "NAME <EMAIL>"]
//
// For each architecture it writes two packages into the output directory:
//
//   - boardlinkd_VERSION_ARCH.deb, the board's side: the agent, a static
//     stripped binary (/usr/sbin/boardlinkd); its systemd unit
//     (boardlinkd.service, Type=notify, enabled and started at the first
//     install, restarted by an upgrade); its commented config
//     /etc/boardlink/boardlinkd.yaml, a conffile; its state directory
//     /var/lib/boardlink; and a unit, not enabled, that makes a USB gadget
//     serial port (/dev/ttyGS0) through configfs (boardlink-usb-gadget).
//   - boardlink_VERSION_ARCH.deb, the host's side: the CLI,
//     /usr/bin/boardlink.
//
// It prints each binary's size. The packaged files are in files/;
// docs/boards.md says how a board is set up with them.
package main
