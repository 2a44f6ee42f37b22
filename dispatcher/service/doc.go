// Package service is the lab service behind `boardlink serve`: a
// long-running process that keeps an inventory of a lab's boards (static
// entries of its config, and boards found by mDNS and on serial ports),
// holds one connection to each with a heartbeat, and hands boards out in
// leases.
//
// Boards. Each board has one persistent dispatcher.Client, which the
// service calls board.info on every heartbeat (last seen, boot id, slot
// versions); a failed heartbeat closes it and the board is dialed again
// with backoff. A board on a serial line is reached through a line mux
// the service runs (lines.go), which lets a reboot's, an OTA's or a
// rollout's session share the line and records the console. A board's State moves only along the transitions of the
// table in state.go: idle, leased, updating, offline, and the two a person
// ends, maintenance and quarantined (after Config.QuarantineAfter failed
// health checks or recoveries in a row).
//
// Leases. An acquire names boards by labels or ids and a count; it waits
// in one first-come-first-served queue (a later request never takes a
// board an earlier one is waiting for) with a visible position, and is
// granted idle boards only, never a board twice. A lease lives while its
// holder renews it: one not renewed within its TTL ends (the bound is the
// TTL plus expiryTick, see Service.ExpiryBound), and so does one past the
// duration it asked for. When a lease ends, the commands it runs on its
// boards through the service are canceled. While a lease holds a board,
// exec and power by anyone else are refused with a *LeasedError that
// names the holder and the expiry.
//
// The HTTP API (api.go, documented in docs/service.md and
// docs/openapi.yaml) serves all of it under /api/v1 with per-user bearer
// tokens, and records every action in the store's audit table: exec (with
// stdin and a terminal over a WebSocket, exec.go), files, reboot and OTA
// (ops.go), and rollouts, which run as jobs of the service and resume
// when it starts again (rollout.go). A board an update holds reads
// updating. Client (client.go) is its typed Go client, which the CLI
// uses. The same handler serves the dashboard at / (dashboard*.go, pages
// rendered on the server, live over Server-Sent Events) and /metrics
// (metrics.go, on a Prometheus registry of the service's own).
//
// Several services may share one database (PostgreSQL, one per lab
// host): each owns the boards it reaches by claims that expire unless
// renewed (claims.go) and drives only those; the others' boards are listed
// with their owner, offline with the time when that owner vanished, and
// an action on one is forwarded to its owner with the peer token
// (forward.go). Leases are queued and held in the database, so a lease
// asked of one service is honoured by all. A rollout asked of one
// service starts a part of it on each other owner of its boards, on
// record; a part whose owner cannot be reached waits until a claim round
// sees it back (rollout_parts.go).
//
// State lives in dispatcher/store: the inventory (with maintenance and
// quarantine), every lease, and the audit log, so a restarted service
// keeps its leases and its boards.
package service
