package proto

// Authentication and pairing (protocol 4). A session starts
// unauthenticated on every link: session.hello carries the host's nonce
// and its answer the board's key, nonce and signature (AuthChallenge), so
// the host checks who it talks to before it proves anything; then
// session.auth carries the host's proof (a paired host's signature, or a
// MAC keyed with a token: never the token itself). Until then only
// session.hello, session.auth and the pair.* methods are served. Package
// auth defines what is signed.
const (
	MethodAuth         = "session.auth"
	MethodPairBegin    = "pair.begin"
	MethodPairExchange = "pair.exchange"
	MethodPairConfirm  = "pair.confirm"
)

// CapPair is announced by an agent that accepts pairing.
const CapPair = "pair"

// Ways a host authenticates, as AuthChallenge.Methods and AuthResult.Method
// name them.
const (
	AuthKey    = "key"    // a paired host's signature
	AuthToken  = "token"  // a MAC keyed with one of the board's tokens
	AuthNoAuth = "none"   // the agent runs with --no-auth
	AuthBearer = "bearer" // the token on the WebSocket upgrade
)

// AuthChallenge is the board's half of a session's authentication, in the
// answer to session.hello: its key, its nonce, and its signature over
// both nonces and its key's fingerprint.
type AuthChallenge struct {
	Key     []byte   `json:"key"`     // ed25519 public key, 32 bytes
	Nonce   []byte   `json:"nonce"`   // 32 bytes
	Proof   []byte   `json:"proof"`   // ed25519 signature, 64 bytes
	Methods []string `json:"methods"` // what session.auth accepts here
}

// AuthParams proves the host's right to the board: a paired host's key and
// its signature, or a token's MAC, or both (the agent accepts either).
type AuthParams struct {
	Key        []byte `json:"key,omitempty" validate:"omitempty,len=32"`
	Proof      []byte `json:"proof,omitempty" validate:"required_with=Key,omitempty,len=64"`
	TokenProof []byte `json:"token_proof,omitempty" validate:"required_without=Key,omitempty,len=32"`
}

// AuthResult says how the host was authenticated.
type AuthResult struct {
	Method string `json:"method"`
	Host   string `json:"host,omitempty"` // the paired host's name
}

// PairBeginParams asks the board for a pairing code for the host key Key;
// the board shows the code on its console and log, or uses the one
// `boardlinkd pair` printed.
type PairBeginParams struct {
	Key  []byte `json:"key" validate:"len=32"`
	Name string `json:"name" validate:"required,max=128,printascii"`
}

// PairBeginResult says how long the code is valid and where it is shown.
type PairBeginResult struct {
	ExpiresMs int64  `json:"expires_ms"`
	Attempts  int    `json:"attempts"` // exchanges left for this code
	Shown     string `json:"shown"`    // where the code is to be read
}

// PairExchangeParams carries the host's SPAKE2 message.
type PairExchangeParams struct {
	Message []byte `json:"message" validate:"len=32"`
}

// PairExchangeResult carries the board's SPAKE2 message and confirmation.
type PairExchangeResult struct {
	Message []byte `json:"message"`
	Confirm []byte `json:"confirm"`
}

// PairConfirmParams carries the host's confirmation: the board stores the
// pairing only if it checks out.
type PairConfirmParams struct {
	Confirm []byte `json:"confirm" validate:"len=32"`
}

// PairConfirmResult names the board that stored the pairing.
type PairConfirmResult struct {
	BoardID string `json:"board_id"`
}
