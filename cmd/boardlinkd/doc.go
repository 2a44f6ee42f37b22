// Command boardlinkd is the boardlink agent that runs on a board. See
// `boardlinkd --help`.
//
// It reads its flags and config file (command.go, config.go), opens the
// board it runs on (boards.go: --board linux, or a sim board in a
// directory), and runs one boot of the agent wired with fx (wiring.go),
// which starts and stops the agent's components in a fixed order
// (lifecycle). A sim board's boardlinkd is first its boot loader, a
// supervisor that runs every boot as a child process (supervise.go).
// boardlinkd pair and boardlinkd fingerprint manage access (pair.go).
// docs/architecture.md describes the whole.
package main
