// Package qemuboard boots real boards for the end-to-end tests: a QEMU
// x86_64 machine (TCG, no network) whose firmware (OVMF) starts GRUB, whose
// GRUB chooses slot A or B with its grubenv and the grub.cfg that
// docs/boot.md states (GrubConfig reads it from there), and whose Debian
// cloud kernel starts a busybox initramfs that runs boardlinkd --board
// linux --boot grub on a serial port (or, with Spec.ShellOnly, only a root
// shell there, for boardlink bootstrap).
//
// Everything is built by the test, as an ordinary user, into a cache
// directory keyed by content (Cache): the static agent, the initramfs
// (busybox-static, the virtio-blk and vfat modules, grub-editenv and its
// libraries), the kernel, GRUB's EFI image and OVMF, the last four from
// Debian packages fetched with apt-get download and unpacked with dpkg-deb. Each board
// then gets a disk of its own (Build): a GPT with the EFI system partition
// (GRUB, grub.cfg, grubenv, the kernel and the initramfs, shared by both
// slots), slot A, slot B and a data partition for the agent's state.
//
// Board runs QEMU on that disk, its serial ports on unix sockets (the
// kernel console on ttyS0, logged to a file across every boot; the agent
// on ttyS1 or sharing ttyS0; a plain shell on ttyS2, for comparison), a
// reset over QMP, and kills it (a power cut) with the test in every case,
// even when the test process is killed (Pdeathsig).
package qemuboard
