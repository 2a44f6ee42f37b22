// Package board describes what the agent needs from the hardware:
// identity, reboot, A/B boot control and slots; backends in subpackages
// sim and linux.
package board
