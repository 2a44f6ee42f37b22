package seriallink

import "sync/atomic"

// Stats counts an endpoint's traffic since it was created.
type Stats struct {
	WireIn, WireOut       uint64 // bytes read from and written to the line
	PayloadIn, PayloadOut uint64 // message bytes received in order; sent in DATA frames the first time
	FramesIn, FramesOut   uint64 // valid frames received; frames written (all types)
	Retransmits           uint64 // DATA frames sent again
	Corrupt               uint64 // frame candidates dropped: bad CRC, length or encoding, torn
	Recovered             uint64 // frames saved by cutting console text out of them
	FECFramesIn           uint64 // valid frames received in framing 2 (with forward error correction)
	Corrected             uint64 // bytes the forward error correction repaired
	ConsoleBytes          uint64 // console text received
	ConsoleDropped        uint64 // console text dropped because nobody read it in time
	CompactIn, CompactOut uint64 // text messages received and sent in the compact encoding
	Quiet                 uint64 // times a host stopped writing to an agent that did not answer (Config.QuietAfter)
}

type counters struct {
	wireIn, wireOut, payloadIn, payloadOut, framesIn, framesOut   atomic.Uint64
	retransmits, corrupt, recovered, consoleBytes, consoleDropped atomic.Uint64
	fecIn, corrected, compactIn, compactOut, quiet                atomic.Uint64
	rxRate                                                        atomic.Uint32 // the error rate byte to report, from the parser
}

func (c *counters) snapshot() Stats {
	return Stats{
		WireIn: c.wireIn.Load(), WireOut: c.wireOut.Load(),
		PayloadIn: c.payloadIn.Load(), PayloadOut: c.payloadOut.Load(),
		FramesIn: c.framesIn.Load(), FramesOut: c.framesOut.Load(),
		Retransmits: c.retransmits.Load(), Corrupt: c.corrupt.Load(), Recovered: c.recovered.Load(),
		ConsoleBytes: c.consoleBytes.Load(), ConsoleDropped: c.consoleDropped.Load(),
		FECFramesIn: c.fecIn.Load(), Corrected: c.corrected.Load(),
		CompactIn: c.compactIn.Load(), CompactOut: c.compactOut.Load(),
		Quiet: c.quiet.Load(),
	}
}
