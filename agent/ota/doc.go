// Package ota is the agent's A/B update state machine: plan (signature,
// model, version, the slot's size, which chunks the board already holds),
// prepare (write the inactive slot: chunks it lacks arrive over the link
// or are fetched from a URL, chunks it holds are copied from the active
// slot, every chunk and the whole payload verified), activate (a one-shot
// trial boot), reboot, a health check after the trial boot, then commit,
// or roll back and reboot. A prepare that cannot go on by itself (its URL
// fails) halts with the reason, until it is started again or aborted.
//
// Which chunks the active slot holds comes from the agent's record of a
// slot it wrote, or else from reading and hashing the slot on the board
// (hash.go: a slot flashed in the factory or by hand), once: the hashes
// are kept with a stamp of the slot, until it changes. A chunk copied from
// the active slot is verified first; one that no longer matches is needed
// from outside, and the start's plan says so.
//
// The machine is decoupled from any connection: a dropped link does not
// stop it, and its status is re-readable at any time. Its phases
// (proto.Phase) move only along one table (phase.go), which refuses any
// other move; every cycle in it waits for a request or a boot. Every
// transition is persisted atomically with a format version before it
// takes effect, so killing the agent (or cutting power) in any state
// leaves a board that boots a complete, verified slot and a status that
// tells the truth; a retried update resumes its prepare where it stopped.
//
// Test builds (tag boardlink_testhooks) add a crash point (crash.go); a
// default build has none.
package ota
