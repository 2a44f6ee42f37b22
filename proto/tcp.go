package proto

// The tcp family (protocol 5) forwards TCP connections over streams, as
// ssh -L/-R and adb forward/reverse do: each connection is one stream of
// the session, with its flow control. Its listeners and connections end
// with the session.
const (
	MethodTCPDial     = "tcp.dial"
	MethodTCPListen   = "tcp.listen"
	MethodTCPAccept   = "tcp.accept"
	MethodTCPUnlisten = "tcp.unlisten"

	CapTCP = "tcp"
)

// TCPDialParams connects the stream the caller opened to Host:Port on the
// board (Host defaults to localhost).
type TCPDialParams struct {
	Host   string `json:"host,omitempty" validate:"omitempty,max=253,hostname_rfc1123|ip"`
	Port   int    `json:"port" validate:"min=1,max=65535"`
	Stream uint32 `json:"stream" validate:"required"`
}

// TCPDialResult names the two ends of the connection made.
type TCPDialResult struct {
	Local  string `json:"local"`
	Remote string `json:"remote"`
}

// TCPListenParams listens on Host:Port on the board (Host defaults to
// 127.0.0.1; port 0 picks a free one).
type TCPListenParams struct {
	Host string `json:"host,omitempty" validate:"omitempty,max=253,hostname_rfc1123|ip"`
	Port int    `json:"port" validate:"min=0,max=65535"`
}

// TCPListenResult identifies a listener and the address it listens on.
type TCPListenResult struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Port    int    `json:"port"`
}

// TCPAcceptParams waits for the next connection on the listener and joins
// it to the stream the caller opened.
type TCPAcceptParams struct {
	Listener string `json:"listener" validate:"required,max=64"`
	Stream   uint32 `json:"stream" validate:"required"`
}

// TCPIncoming is tcp.accept's result: the connection it joined to the
// stream, by the address of the peer that made it on the board.
type TCPIncoming struct {
	Listener string `json:"listener"`
	Remote   string `json:"remote"`
}

// TCPUnlistenParams closes a listener; its connections already joined go on.
type TCPUnlistenParams struct {
	ID string `json:"id" validate:"required,max=64"`
}
