// Package board describes a board as the agent sees it: its Identity (id,
// model, labels, persisted by LoadIdentity in the state dir) and its A/B
// boot loader (BootControl, BootState). Backends live in subpackages: sim,
// a board in a directory whose supervisor process is its boot loader, and
// linux, a real board with U-Boot or GRUB environments and slot devices
// from the agent's config. The agent states what else it needs from a
// board as its own small interface (agent.Board).
package board
