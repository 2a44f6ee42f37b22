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
	// NoteTCPIncoming announces a connection accepted by a listener;
	// the host answers with tcp.accept, or lets it time out.
	NoteTCPIncoming = "tcp.incoming"

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

// TCPIncoming is the params of a tcp.incoming notification.
type TCPIncoming struct {
	Listener string `json:"listener"`
	Conn     string `json:"conn"`
	Remote   string `json:"remote"`
}

// TCPAcceptParams joins an announced connection to a stream the host
// opened.
type TCPAcceptParams struct {
	Conn   string `json:"conn" validate:"required,max=64"`
	Stream uint32 `json:"stream" validate:"required"`
}

// TCPUnlistenParams closes a listener; its connections already joined go on.
type TCPUnlistenParams struct {
	ID string `json:"id" validate:"required,max=64"`
}
