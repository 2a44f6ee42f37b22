package seriallink

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/boardlink/boardlink/proto"
	"github.com/boardlink/boardlink/transport"
)

const (
	// minRTO is the floor of the retransmission timeout. Probes are small
	// and only their echoes trigger retransmissions, so a low floor is cheap.
	minRTO = time.Millisecond
	// maxProbeGap caps the backoff between unanswered probes.
	maxProbeGap = 2 * time.Second
	maxBackoff  = 8
	// maxUnsent is how many fragments may wait for their first
	// transmission. Keeping it small keeps a control message from queueing
	// behind much bulk data.
	maxUnsent = 2
	// minAdaptivePayload is the smallest fragment the sender shrinks to.
	minAdaptivePayload = 64
	// adaptDecay weighs the loss history for the payload size: roughly the
	// last 64 acknowledged frames count.
	adaptDecay = 1 - 1.0/64
	// A session's first fecProbation bytes in framing 2 carry
	// probationParity unless the peer reports errors: until then its
	// reports of a clean line mean little, and at 0.1% of bytes corrupted a
	// 1 KiB frame without parity arrives intact one time in three.
	fecProbation    = 32 << 10
	probationParity = 4
	// probationMin is the smallest payload that takes probationParity: a
	// control message is short enough to cross a noisy line intact most
	// of the time, and parity would cost it a fifth of its bytes.
	probationMin = 64
	// ackDelay is how long an acknowledgement owed for in-order DATA
	// waits for a DATA frame of ours to ride on: an answer usually follows
	// a request within it, and the next request an answer, so a round trip
	// costs no frame of its own either way.
	ackDelay = 20 * time.Millisecond
	// msgOverhead is charged per queued message against the read queue
	// limit so that many tiny messages stay bounded too.
	msgOverhead = 64
)

// txFrame is one DATA frame from its queueing until it is acknowledged.
type txFrame struct {
	seq     uint16
	flags   byte
	payload []byte
	txCount int
	sentAt  time.Time
	order   uint64 // position in the send order, for loss detection
	sacked  bool
	lost    bool
}

type rxFrame struct {
	flags   byte
	payload []byte
}

type rxMsg struct {
	typ  transport.MessageType
	data []byte
	err  error
}

// link is one session; it implements transport.Link. Everything except the
// channels is guarded by e.mu.
type link struct {
	e    *Endpoint
	tag  uint16
	host bool

	established bool
	estab       chan struct{} // host: closed when the SYNACK arrives
	done        chan struct{} // closed when err is set
	closed      chan struct{} // closed by Close
	closing     bool
	err         error
	synAt       time.Time // host: next SYN
	synTries    int
	synAckOwed  bool // agent: answer the (repeated) SYN

	fec        bool // framing 2: DATA and ACK frames carry parity
	compact    byte // the compact encoding of text messages, 0: JSON
	peerRate   byte // the byte error rate the peer last reported seeing
	fecSent    int  // framing-2 bytes sent, up to fecProbation
	window     int  // frames in flight: min(ours, peer's)
	maxPayload int  // fragment size limit: min(ours, peer's)
	payload    int  // current fragment size, adapted to the line's error rate

	// Send side. snd holds frames sndUna, sndUna+1, ...; the first unsent
	// of them is snd[unsent]. Frames go out for the first time in order.
	snd       []*txFrame
	sndUna    uint16
	unsent    int
	peerLimit uint16 // the peer accepts seq < peerLimit
	clock     uint64 // transmission counter
	rackMax   uint64 // latest transmission known to have arrived
	srtt      time.Duration
	rttvar    time.Duration
	rto       time.Duration
	backoff   int
	probeID   uint16
	probeAt   time.Time
	probeOrd  uint64
	lastSend  time.Time
	lastHeard time.Time
	// unheard counts the SYNs, retransmissions and probes a host sent
	// since it last heard the agent: at Config.QuietAfter it goes quiet.
	unheard  int
	voice    voice     // whether a host may write (always speaking for an agent)
	progress time.Time // last sign the peer takes our frames
	// Decaying sums over acknowledged frames, for the payload size: frames,
	// their transmissions, and the wire bytes of those.
	adN, adTx, adWire float64
	wsem              chan struct{} // one WriteMessage at a time, so fragments stay together
	space             chan struct{} // signalled when snd shrinks or a frame goes out

	// Receive side. ring[head] holds seq rcvBase; frames before rcvNext are
	// all present, rcvHigh is one past the highest received.
	ring      []*rxFrame
	head      int
	rcvBase   uint16
	rcvNext   uint16
	rcvHigh   uint16
	reasm     []byte
	reasmOn   bool
	reasmBig  bool
	reasmType transport.MessageType
	ready     []rxMsg
	readyCost int
	readyCh   chan struct{}
	ackOwed   bool
	ackBy     time.Time // when an owed ACK goes out on its own, if nothing carries it
	echoOwed  bool
	echoID    uint16
}

func newLink(e *Endpoint, tag uint16, host bool, now time.Time) *link {
	return &link{
		e: e, tag: tag, host: host,
		estab:     make(chan struct{}),
		done:      make(chan struct{}),
		closed:    make(chan struct{}),
		synAt:     now,
		rto:       e.cfg.RTO,
		lastHeard: now,
		progress:  now,
		wsem:      make(chan struct{}, 1),
		space:     make(chan struct{}, 1),
		readyCh:   make(chan struct{}, 1),
		ring:      make([]*rxFrame, e.cfg.Window),
	}
}

// hello is the payload of SYN and SYNACK: version, max payload, window,
// the newest framing offered (from framing 2 on, or with the sixth byte),
// and the compact encoding: offered (SYN), accepted (SYNACK). A peer that
// knows less ignores the extra bytes and answers without them.
func hello(cfg *Config, compact byte) []byte {
	h := []byte{protoVersion, byte(cfg.MaxPayload >> 8), byte(cfg.MaxPayload), byte(cfg.Window)}
	if cfg.Framing > 1 || compact > 0 {
		h = append(h, byte(cfg.Framing))
	}
	if compact > 0 {
		h = append(h, compact)
	}
	return h
}

// offer is the compact encoding this end offers.
func offer(cfg *Config) byte {
	if cfg.JSONOnly {
		return 0
	}
	return proto.CompactVersion
}

// open takes the peer's hello, checked by validHello, and starts the session.
func (l *link) open(peer []byte, now time.Time) {
	pw := int(peer[3])
	l.maxPayload = min(l.e.cfg.MaxPayload, int(binary.BigEndian.Uint16(peer[1:3])))
	l.payload = l.maxPayload
	l.window = min(l.e.cfg.Window, pw)
	l.peerLimit = uint16(pw)
	l.fec = l.e.cfg.Framing >= 2 && len(peer) > 4 && peer[4] >= 2
	if len(peer) > 5 {
		l.compact = min(offer(&l.e.cfg), peer[5])
	}
	l.established = true
	l.lastHeard, l.progress = now, now
	if l.host {
		close(l.estab)
	}
}

func validHello(p []byte) bool {
	if len(p) < 4 || p[0] != protoVersion || p[3] == 0 {
		return false
	}
	pp := int(binary.BigEndian.Uint16(p[1:3]))
	return pp >= minPayload && pp <= MaxPayloadLimit
}

func seqLess(a, b uint16) bool { return int16(a-b) < 0 }

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// fail ends the session with err. Messages already received stay readable.
func (l *link) fail(err error) {
	if l.err != nil {
		return
	}
	l.err = err
	close(l.done)
	l.snd, l.ring = nil, nil
	e := l.e
	if e.sess == l {
		e.sess = nil
		e.lastTag = l.tag
		e.heard = false // the host wants fresh signs of an agent before it writes again
		e.nextBeacon = time.Time{}
	}
	if e.pending == l {
		e.pending = nil
	}
	e.log.Debug("seriallink: session ended", "tag", l.tag, "err", err)
}

// onFrame handles a DATA or ACK frame of this session.
func (l *link) onFrame(h header, payload []byte, now time.Time) {
	l.lastHeard = now
	if l.fec {
		// A framing-1 frame in a framing-2 session reports a clean line:
		// its sender sends one only when it sees no errors.
		l.peerRate = h.rate
	}
	progress := l.onAck(h.ack, h.wnd, now)
	switch h.typ {
	case typeAck:
		progress = l.onSack(h.ack, payload, now) || progress
		if h.flags&flagEcho != 0 && h.seq == l.probeID {
			// The line keeps order: whatever we sent before the probe has
			// arrived by now, or it is lost.
			l.rackMax = max(l.rackMax, l.probeOrd)
			l.rttSample(now.Sub(l.probeAt))
			if l.inflight() || !l.blocked() {
				l.backoff = 0 // the peer answers; only a shut window keeps backing off
			}
		}
		if h.flags&flagAckReq != 0 {
			l.echoOwed, l.echoID = true, h.seq
		}
	case typeData:
		l.onData(h, payload, now)
	}
	l.detectLoss()
	if progress {
		l.backoff = 0
	}
	if progress || !l.inflight() {
		l.progress = now
	}
}

// onAck applies the cumulative acknowledgement and window of any frame.
func (l *link) onAck(ack uint16, wnd byte, now time.Time) bool {
	if lim := ack + uint16(wnd); seqLess(l.peerLimit, lim) {
		l.peerLimit = lim
	}
	d := int(ack - l.sndUna)
	if d == 0 || d > l.unsent {
		return false
	}
	for i, f := range l.snd[:d] {
		if !f.sacked {
			l.acked(f, now)
		}
		l.snd[i] = nil
	}
	l.snd = l.snd[d:]
	l.unsent -= d
	l.sndUna = ack
	signal(l.space)
	return true
}

// onSack applies an ACK frame's bitmap: bit i stands for seq ack+1+i.
func (l *link) onSack(ack uint16, bitmap []byte, now time.Time) bool {
	progress := false
	for i := range len(bitmap) * 8 {
		if bitmap[i/8]&(1<<(i%8)) == 0 {
			continue
		}
		d := int(ack + 1 + uint16(i) - l.sndUna)
		if d < l.unsent && !l.snd[d].sacked {
			l.snd[d].sacked = true
			l.acked(l.snd[d], now)
			progress = true
		}
	}
	return progress
}

func (l *link) acked(f *txFrame, now time.Time) {
	if f.txCount == 1 { // Karn: only unambiguous samples
		l.rttSample(now.Sub(f.sentAt))
	}
	l.rackMax = max(l.rackMax, f.order)
	l.adN = l.adN*adaptDecay + 1
	l.adTx = l.adTx*adaptDecay + float64(f.txCount)
	l.adWire = l.adWire*adaptDecay + float64(f.txCount*wireLen(len(f.payload)))
	l.adapt()
}

// detectLoss marks as lost every unacknowledged frame sent before one that
// is known to have arrived: a serial line does not reorder.
func (l *link) detectLoss() {
	for _, f := range l.snd[:l.unsent] {
		if !f.sacked && !f.lost && f.order < l.rackMax {
			f.lost = true
		}
	}
}

func (l *link) inflight() bool {
	for _, f := range l.snd[:l.unsent] {
		if !f.sacked && !f.lost {
			return true
		}
	}
	return false
}

// blocked reports frames that wait only for the peer's window to open.
func (l *link) blocked() bool {
	return l.unsent < len(l.snd) && !seqLess(l.snd[l.unsent].seq, l.peerLimit)
}

// rttSample updates the retransmission timeout as in RFC 6298.
func (l *link) rttSample(r time.Duration) {
	if l.srtt == 0 {
		l.srtt, l.rttvar = r, r/2
	} else {
		l.rttvar = (3*l.rttvar + (l.srtt - r).Abs()) / 4
		l.srtt = (7*l.srtt + r) / 8
	}
	l.rto = max(l.srtt+4*l.rttvar, minRTO)
}

// wireLen is the line length of a DATA frame with n payload bytes.
func wireLen(n int) int { return 5 + cobsMaxLen(headerLen+n+crcLen) }

// adapt picks the fragment size that maximises expected goodput for the
// byte error rate seen lately: a frame of w wire bytes arrives intact with
// probability exp(-rate*w), so long frames lose on a noisy line.
func (l *link) adapt() {
	rate := -math.Log(l.adN/l.adTx) / (l.adWire / l.adTx)
	best, bestEff := l.maxPayload, 0.0
	for p := l.maxPayload; p >= min(minAdaptivePayload, l.maxPayload); p /= 2 {
		w := float64(wireLen(p))
		if eff := float64(p) / w * math.Exp(-rate*w); eff > bestEff {
			best, bestEff = p, eff
		}
	}
	if best != l.payload {
		l.e.log.Debug("seriallink: fragment size", "bytes", best, "byteErrorRate", rate)
		l.payload = best
	}
}

// onData stores a DATA frame in the receive window.
func (l *link) onData(h header, payload []byte, now time.Time) {
	if !l.ackOwed {
		l.ackBy = now.Add(ackDelay)
	}
	l.ackOwed = true
	off := int(h.seq - l.rcvBase)
	if off >= len(l.ring) || len(payload) > l.e.cfg.MaxPayload {
		return // a duplicate, or outside what we offered
	}
	i := (l.head + off) % len(l.ring)
	if seqLess(h.seq, l.rcvNext) || l.ring[i] != nil {
		return // already held
	}
	l.ring[i] = &rxFrame{flags: h.flags, payload: append([]byte(nil), payload...)}
	if !seqLess(h.seq, l.rcvHigh) {
		l.rcvHigh = h.seq + 1
	}
	for int(l.rcvNext-l.rcvBase) < len(l.ring) && l.ring[(l.head+int(l.rcvNext-l.rcvBase))%len(l.ring)] != nil {
		l.rcvNext++
	}
	l.deliver()
}

// deliver moves in-order frames into messages while the read queue has
// room; a slow reader so holds frames in the window and stops the peer.
func (l *link) deliver() (moved bool) {
	limit := l.e.cfg.MaxMessage
	for l.rcvBase != l.rcvNext {
		f := l.ring[l.head]
		last := f.flags&flagMore == 0
		if last && len(l.ready) > 0 && l.readyCost+len(l.reasm)+len(f.payload)+msgOverhead > limit {
			break
		}
		l.ring[l.head] = nil
		l.head = (l.head + 1) % len(l.ring)
		l.rcvBase++
		moved = true
		l.e.stats.payloadIn.Add(uint64(len(f.payload)))
		if f.flags&flagAbort != 0 {
			l.reasm, l.reasmOn, l.reasmBig = nil, false, false
			continue
		}
		if !l.reasmOn {
			l.reasmOn, l.reasmType = true, transport.Text
			if f.flags&flagBinary != 0 {
				l.reasmType = transport.Binary
			}
		}
		switch {
		case l.reasmBig:
		case len(l.reasm)+len(f.payload) > limit:
			l.reasmBig, l.reasm = true, nil
		case l.reasm == nil && last:
			l.reasm = f.payload // a single-frame message needs no copy
		default:
			l.reasm = append(l.reasm, f.payload...)
		}
		if !last {
			continue
		}
		m := rxMsg{typ: l.reasmType, data: l.reasm}
		if l.reasmBig {
			m = rxMsg{err: transport.ErrTooLarge}
		}
		if m.data == nil && m.err == nil {
			m.data = []byte{}
		}
		l.ready = append(l.ready, m)
		l.readyCost += len(m.data) + msgOverhead
		l.reasm, l.reasmOn, l.reasmBig = nil, false, false
		signal(l.readyCh)
	}
	return moved
}

// sack builds the bitmap of frames held beyond rcvNext.
func (l *link) sack() []byte {
	n := int(l.rcvHigh-l.rcvNext) - 1
	if n <= 0 {
		return nil
	}
	b := make([]byte, (n+7)/8)
	for i := range n {
		off := int(l.rcvNext + 1 + uint16(i) - l.rcvBase)
		if l.ring[(l.head+off)%len(l.ring)] != nil {
			b[i/8] |= 1 << (i % 8)
		}
	}
	return b
}

// next returns the next frame of this session appended to out, or, if
// there is none, when to look again (zero: only when woken).
func (l *link) next(now time.Time, fb *frameBuf, out []byte) ([]byte, time.Time) {
	cfg := &l.e.cfg
	if l.quiet() {
		if l.voice == hushed { // the frame that made it quiet is out
			l.voice = l.voice.on(reported)
			l.e.stats.quiet.Add(1)
			l.e.log.Debug("seriallink: the agent does not answer; listening only", "tag", l.tag, "unanswered", l.unheard)
			l.e.broadcast()
		}
		// Listen only, until the agent's next frame (it beacons or probes
		// at least every BeaconInterval) wakes us; DeadAfter still ends
		// the session (Dial's own timer a session not yet open).
		if !l.established {
			return out, time.Time{}
		}
		if dead := l.progress.Add(cfg.DeadAfter); now.Before(dead) {
			return out, dead
		}
		l.fail(fmt.Errorf("%w: no progress for %v", ErrDead, cfg.DeadAfter))
		return out, time.Time{}
	}
	if !l.established {
		if now.Before(l.synAt) {
			return out, l.synAt
		}
		l.synAt = now.Add(min(cfg.RTO<<min(l.synTries, maxBackoff), maxProbeGap))
		l.synTries++
		l.unanswered()
		return fb.appendFrame(out, header{typ: typeSyn, tag: l.tag}, hello(cfg, offer(cfg))), time.Time{}
	}
	if l.synAckOwed {
		l.synAckOwed = false
		return fb.appendFrame(out, header{typ: typeSynAck, tag: l.tag}, hello(cfg, l.compact)), time.Time{}
	}
	dead := l.progress.Add(cfg.DeadAfter)
	if !now.Before(dead) {
		l.fail(fmt.Errorf("%w: no progress for %v", ErrDead, cfg.DeadAfter))
		return out, time.Time{}
	}
	h := header{tag: l.tag, ack: l.rcvNext, wnd: byte(len(l.ring) - int(l.rcvNext-l.rcvBase))}
	var f *txFrame
	for _, g := range l.snd[:l.unsent] {
		if g.lost {
			f = g
			break
		}
	}
	if f == nil && l.unsent < len(l.snd) && seqLess(l.snd[l.unsent].seq, l.peerLimit) {
		f = l.snd[l.unsent]
	}
	gaps := l.rcvHigh != l.rcvNext
	if l.echoOwed || l.ackOwed && (gaps || f == nil && !now.Before(l.ackBy)) {
		h.typ = typeAck
		if l.echoOwed {
			h.flags, h.seq, l.echoOwed = flagEcho, l.echoID, false
		}
		l.ackOwed = false
		return l.frame(fb, out, h, l.sack()), time.Time{}
	}
	if f != nil {
		if !l.inflight() {
			l.progress = now // the wait for an answer starts now
		}
		if f.txCount > 0 {
			l.e.stats.retransmits.Add(1)
			l.unanswered()
		} else {
			l.unsent++
			l.e.stats.payloadOut.Add(uint64(len(f.payload)))
			signal(l.space) // room for another unsent frame
		}
		l.clock++
		f.txCount, f.sentAt, f.order, f.lost = f.txCount+1, now, l.clock, false
		l.lastSend = now
		if !gaps {
			l.ackOwed = false
		}
		h.typ, h.flags, h.seq = typeData, f.flags, f.seq
		return l.frame(fb, out, h, f.payload), time.Time{}
	}
	// Nothing to send: probe when frames go unanswered, when the peer's
	// window stays shut, or when the line has been quiet (keepalive).
	var due time.Time
	if l.inflight() || l.blocked() {
		// The peer may hold its ACK for ackDelay: a probe before then
		// would only make it answer at once, in front of its answer.
		due = later(l.lastSend, l.probeAt).Add(min(max(l.rto, ackDelay)<<l.backoff, l.quietMax(maxProbeGap)))
	} else {
		due = later(l.lastHeard, l.probeAt).Add(l.quietMax(cfg.DeadAfter / 5))
	}
	if l.ackOwed && l.ackBy.Before(due) {
		due = l.ackBy // wake for the owed ACK (taken above once due)
	}
	if now.Before(due) {
		if dead.Before(due) {
			return out, dead
		}
		return out, due
	}
	if l.inflight() || l.blocked() {
		l.backoff = min(l.backoff+1, maxBackoff)
	}
	l.probeID++
	l.clock++
	l.probeOrd, l.probeAt = l.clock, now
	l.unanswered()
	h.typ, h.flags, h.seq = typeAck, flagAckReq, l.probeID
	l.ackOwed = false
	return l.frame(fb, out, h, l.sack()), time.Time{}
}

// unanswered counts a SYN, retransmission or probe sent by a host that
// has not heard the agent since. Past Config.QuietAfter of them in a row
// the host stops writing: an agent that stops answering may have lost its
// power, and its UART may now be read by a boot loader, for which any
// byte is a key that stops autoboot (an ESC puts OVMF in its setup).
func (l *link) unanswered() {
	if !l.host {
		return
	}
	if l.unheard++; l.unheard >= l.e.cfg.QuietAfter {
		l.voice = l.voice.on(unansweredEnough)
	}
}

// heard: the host heard the agent (whichever session it speaks of), so
// writing is safe again.
func (l *link) heard() {
	if l.voice == listening {
		l.backoff = 0 // what went unanswered is probed for at once
	}
	l.unheard, l.voice = 0, l.voice.on(agentHeard)
}

// quiet reports a host that wrote QuietAfter frames in a row unanswered
// and now only listens.
func (l *link) quiet() bool { return l.host && l.voice != speaking }

// voice is whether a host may write to its agent.
type voice uint8

const (
	speaking  voice = iota // writes; counts the frames the agent leaves unanswered
	hushed                 // wrote QuietAfter unanswered frames: writes no more, not yet reported
	listening              // reported (stats, log); listens until the agent is heard
)

// voiceEvent is what moves a host's voice.
type voiceEvent uint8

const (
	unansweredEnough voiceEvent = iota // QuietAfter frames in a row unanswered
	reported                           // the writer saw it hushed and said so
	agentHeard                         // a valid frame from the agent
)

// voiceMoves is the transition table; an event not listed for a state
// leaves it as it is.
var voiceMoves = map[voice]map[voiceEvent]voice{
	speaking:  {unansweredEnough: hushed},
	hushed:    {reported: listening, agentHeard: speaking},
	listening: {agentHeard: speaking},
}

func (v voice) on(ev voiceEvent) voice {
	if next, ok := voiceMoves[v][ev]; ok {
		return next
	}
	return v
}

// quietMax caps a wait before a probe. An agent never stays silent longer
// than its beacon interval, session or not: a host that vanished without
// its RST reaching the agent (QEMU drops what its socket client wrote last)
// is followed by one that listens before it writes, and that one must hear
// the agent as soon as it would on an idle line, not after a keepalive.
func (l *link) quietMax(d time.Duration) time.Duration {
	if l.host {
		return d
	}
	return min(d, l.e.cfg.BeaconInterval)
}

// frame appends a DATA or ACK frame in the session's framing. In framing 2
// its parity follows the error rate the peer reports, and it reports ours.
func (l *link) frame(fb *frameBuf, out []byte, h header, payload []byte) []byte {
	if !l.fec {
		return fb.appendFrame(out, h, payload)
	}
	p := parityFor(decodeRate(l.peerRate))
	if p == 0 && l.fecSent < fecProbation && len(payload) >= probationMin {
		p = probationParity
	}
	if p == 0 && l.e.stats.rxRate.Load() == 0 {
		// No parity, and no errors to report: framing 1 says the same in
		// fewer bytes (and reports a clean line, see onFrame).
		return fb.appendFrame(out, h, payload)
	}
	n := len(out)
	out = fb.appendFEC(out, h, payload, p, byte(l.e.stats.rxRate.Load()))
	l.fecSent = min(l.fecSent+len(out)-n, fecProbation)
	return out
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// ReadMessage returns the next message. Messages received before the
// session ended are returned before its error.
func (l *link) ReadMessage() (transport.MessageType, []byte, error) {
	e := l.e
	for {
		e.mu.Lock()
		if l.closing {
			e.mu.Unlock()
			return 0, nil, transport.ErrClosed
		}
		if len(l.ready) > 0 {
			m := l.ready[0]
			l.ready[0] = rxMsg{}
			l.ready = l.ready[1:]
			l.readyCost -= len(m.data) + msgOverhead
			if l.err == nil && l.deliver() {
				l.ackOwed, l.ackBy = true, time.Time{} // the window opened: say so at once
				e.kick()
			}
			compact := l.compact > 0
			e.mu.Unlock()
			if compact && m.err == nil && m.typ == transport.Text && proto.IsCompact(m.data) {
				return l.fromCompact(m.data)
			}
			return m.typ, m.data, m.err
		}
		err := l.err
		e.mu.Unlock()
		if err != nil {
			return 0, nil, err
		}
		select {
		case <-l.readyCh:
		case <-l.done:
		case <-l.closed:
		}
	}
}

// fromCompact turns a compact text message back into JSON. One that is
// not valid is handed on as it is: as JSON it is a parse error, answered
// as any bad input is, and the session goes on.
func (l *link) fromCompact(c []byte) (transport.MessageType, []byte, error) {
	l.e.stats.compactIn.Add(1)
	j, err := proto.FromCompact(c, l.e.cfg.MaxMessage)
	switch {
	case errors.Is(err, proto.ErrCompactTooLong):
		return 0, nil, transport.ErrTooLarge
	case err != nil:
		l.e.log.Debug("seriallink: bad compact message", "err", err)
		return transport.Text, c, nil
	}
	return transport.Text, j, nil
}

// WriteMessage queues p, split into frames, in the send window. It blocks
// while the window is full. If ctx ends after part of the message was
// queued, an abort frame tells the peer to drop the part.
func (l *link) WriteMessage(ctx context.Context, t transport.MessageType, p []byte) error {
	var flags byte
	switch t {
	case transport.Text:
	case transport.Binary:
		flags = flagBinary
	default:
		return fmt.Errorf("seriallink: unknown message type %d", t)
	}
	select {
	case l.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-l.done:
		return l.sessionErr()
	case <-l.closed:
		return transport.ErrClosed
	}
	defer func() { <-l.wsem }()

	e := l.e
	e.mu.Lock()
	compact := l.compact > 0
	e.mu.Unlock()
	if compact && t == transport.Text {
		if c, err := proto.Compact(p); err == nil {
			p = c
			e.stats.compactOut.Add(1)
		}
	}
	queued := false
	for first := true; first || len(p) > 0; first = false {
		e.mu.Lock()
		for l.err == nil && !l.closing && (len(l.snd) >= l.window || len(l.snd)-l.unsent >= maxUnsent) {
			e.mu.Unlock()
			var err error
			select {
			case <-l.space:
			case <-l.done:
			case <-l.closed:
			case <-ctx.Done():
				err = ctx.Err()
			}
			e.mu.Lock()
			if err != nil {
				if queued && l.err == nil {
					l.enqueue(flagAbort, nil) // may exceed the window by this one frame
					e.kick()
				}
				e.mu.Unlock()
				return err
			}
		}
		if l.closing {
			e.mu.Unlock()
			return transport.ErrClosed
		}
		if l.err != nil {
			err := l.err
			e.mu.Unlock()
			return err
		}
		n := min(len(p), l.payload)
		fl := flags
		if n < len(p) {
			fl |= flagMore
		}
		l.enqueue(fl, append([]byte(nil), p[:n]...))
		queued = true
		p = p[n:]
		e.mu.Unlock()
		e.kick()
	}
	return nil
}

func (l *link) enqueue(flags byte, payload []byte) {
	l.snd = append(l.snd, &txFrame{seq: l.sndUna + uint16(len(l.snd)), flags: flags, payload: payload})
}

func (l *link) sessionErr() error {
	l.e.mu.Lock()
	defer l.e.mu.Unlock()
	return l.err
}

// Close stops reads and writes at once, waits up to min(DeadAfter, 5s) for
// queued frames to be acknowledged, then resets the session (RST) so the
// peer notices promptly.
func (l *link) Close() error {
	e := l.e
	e.mu.Lock()
	if l.closing {
		e.mu.Unlock()
		return nil
	}
	l.closing = true
	close(l.closed)
	e.mu.Unlock()

	linger := time.NewTimer(min(e.cfg.DeadAfter, 5*time.Second))
	defer linger.Stop()
	for drained := false; !drained; {
		e.mu.Lock()
		drained = l.err != nil || len(l.snd) == 0
		e.mu.Unlock()
		if !drained {
			select {
			case <-l.space:
			case <-l.done:
			case <-linger.C:
				drained = true
			}
		}
	}
	e.reset(l, transport.ErrClosed)
	return nil
}

// MaxChunk is the stream payload that, with the stream frame header, fills
// one frame.
func (l *link) MaxChunk() int {
	l.e.mu.Lock()
	defer l.e.mu.Unlock()
	return l.maxPayload - proto.StreamHeaderLen
}

var (
	_ transport.Link       = (*link)(nil)
	_ transport.ChunkSizer = (*link)(nil)
)
