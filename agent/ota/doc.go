// Package ota is the agent's A/B update state machine: plan (signature,
// model, version, which chunks the board already holds), prepare (write the
// inactive slot: chunks it lacks arrive over the link, chunks it holds are
// copied from the active slot, every chunk and the whole payload verified),
// activate (a one-shot trial boot), reboot, a health check after the trial
// boot, then commit, or roll back and reboot.
//
// The machine is decoupled from any connection: a dropped link does not
// stop it, and its status is re-readable at any time. Every transition is
// persisted atomically with a format version before it takes effect, so
// killing the agent (or cutting power) in any state leaves a board that
// boots a complete, verified slot and a status that tells the truth; a
// retried update resumes its prepare where it stopped. The number of
// transitions of one update is bounded: there are no loops.
package ota
