// Package power switches a board's power for the lab service: on, off and
// a power cycle, through a Driver chosen by a board's configuration.
//
//   - command runs the commands the configuration gives for each action
//     (a PDU's CLI, a relay, uhubctl), each in a process group of its own
//     and bounded by a timeout; a failure carries the command's output.
//   - qemu speaks QMP to a QEMU board's monitor socket: system_reset for
//     a cycle, quit for off, and, for on, the command line that starts
//     QEMU again.
//   - none has no power control: every action is ErrNoPower.
//
// New builds a Driver from a Config without touching the board. Recover
// is what the service does with a board whose agent stopped answering:
// power-cycle it and wait for a new boot, a bounded number of times,
// recording each step, and give up (ErrGaveUp) so that the service can
// quarantine the board.
package power
