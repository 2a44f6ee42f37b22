// Package board describes a board as the agent sees it: its Identity
// (id, model, labels), shared by every backend. Backends live in
// subpackages: sim, a board in a directory. Reboot, A/B slots and boot
// control join as the features that need them land; the agent states what
// it needs from a board as its own small interface (agent.Board).
package board
