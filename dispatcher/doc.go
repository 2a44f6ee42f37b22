// Package dispatcher is the host side of boardlink: a typed client for one
// board (Dial, Client), and, in later work, the board inventory and staged
// rollouts across many boards.
//
// Client is the only way the CLI talks to an agent. It dials any address
// form the CLI accepts (ws://, wss://, serial://, tcp://, unix://),
// negotiates the protocol version with session.hello and wraps each method
// in a typed call.
package dispatcher
