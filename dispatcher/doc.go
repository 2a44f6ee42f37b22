// Package dispatcher is the host side of boardlink: a typed client for one
// board (Dial, Client), finding boards by id (Resolver), choosing the
// boards of a rollout (Selector, ReadInventory, Targets) and running
// staged rollouts across many boards (PlanRollout, RunRollout).
//
// Client is the only way the CLI talks to an agent, and the library does
// everything the CLI does: Dial takes any address form the CLI accepts
// (ws://, wss://, serial://, tcp://, unix://) and, with a Resolver in
// DialOptions, a board id or a unique prefix of one, found over mDNS and
// on serial ports and cached; it checks the board's key before anything
// secret is sent, negotiates the protocol version with session.hello and
// wraps each method in a typed call.
package dispatcher
