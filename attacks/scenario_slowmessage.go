package attacks

import (
	"bytes"
	"context"
	"time"
)

// Slow message: a peer that sends a frame header and then trickles the
// payload holds a reader and its buffer. The per-message read deadline
// (--read-timeout, from the message's first byte) must close it, though
// bytes keep arriving, and its binary must be told.
const (
	slowMsgLocalTimeout  = time.Second
	slowMsgRemoteTimeout = 30 * time.Second // the deployed default
	slowMsgSlack         = 3 * time.Second
	slowMsgTrickle       = 200 * time.Millisecond
)

func slowMessage() Scenario {
	return Scenario{
		ID:      "ATK-SLOW-MESSAGE",
		Title:   "A message whose payload is trickled is cut off by the per-message read deadline",
		Threats: []string{"TM-DOS-2"},
		Mode:    RemoteSafe,
		Bounds:  "1 binary, 1 phone; one 125-byte frame trickled at one byte per 200ms for at most 33s",
		Run:     runSlowMessage,
	}
}

func runSlowMessage(ctx context.Context, t *Target) Result {
	rt := slowMsgRemoteTimeout
	if t.Local != nil {
		rt = slowMsgLocalTimeout
	}
	// A long heartbeat, so the pong deadline does not cut the trickle first.
	st, err := newStage(ctx, t, 0, "--read-timeout", rt.String(), "--ping-interval", "1m", "--pong-timeout", "1m")
	if err != nil {
		return Failf("%v", err)
	}
	defer st.Close()
	tgt, s := st.tgt, st.s
	var ws *rawWS
	var connID string
	for attempt := 0; attempt < 5 && connID == ""; attempt++ {
		if ws, err = tgt.dialRawWS(ctx, "/v1/client", phoneHeaders(s.ServerID, "tok-"+randHex(8))); err != nil {
			return Failf("raw phone: %v", err)
		}
		nonce := randHex(8)
		if err := ws.writeMessage([]byte(`{"hello":"` + nonce + `"}`)); err != nil {
			return Failf("raw phone write: %v", err)
		}
		if e, ok := s.BinR.waitEnvelope(2*time.Second, &s.Seen, func(e envelope) bool { return bytes.Contains(e.Frame, []byte(nonce)) }); ok {
			connID = e.ConnID
		} else {
			ws.c.Close()
		}
	}
	if connID == "" {
		return Failf("raw phone's hello never reached the binary")
	}
	defer ws.c.Close()

	closed := make(chan int, 1)
	go func() { closed <- ws.readCloseFrame() }()
	payload := []byte(`{"pad":"` + string(bytes.Repeat([]byte("T"), 115)) + `"}`)
	k := maskKey()
	start := time.Now()
	if _, err := ws.c.Write(frameHeader(0x1, len(payload), k)); err != nil {
		return Failf("frame header write: %v", err)
	}
	budget := rt + slowMsgSlack
	sentBytes := 0
	timer := time.NewTimer(budget)
	defer timer.Stop()
	tick := time.NewTicker(slowMsgTrickle)
	defer tick.Stop()
	for i := 0; ; {
		select {
		case code := <-closed:
			took := time.Since(start)
			if took < rt/2 {
				return Failf("connection closed after %v, before the %v read deadline: not the deadline at work (code %d)", took, rt, code)
			}
			e, ok := s.BinR.waitEnvelope(10*time.Second, &s.Seen, func(e envelope) bool { return e.ConnID == connID && e.CloseCode != 0 })
			if !ok {
				return Failf("trickling phone cut after %v but its binary got no close notice", took.Round(10*time.Millisecond))
			}
			return Passf("frame payload trickled %d of %d bytes: cut after %v (read timeout %v, close %d, notice %d)",
				sentBytes, len(payload), took.Round(10*time.Millisecond), rt, code, e.CloseCode)
		case <-timer.C:
			return Failf("trickled message still being read after %v (read timeout %v): %d bytes sent", budget, rt, sentBytes)
		case <-tick.C:
			if i < len(payload)-1 { // never the last byte: the message must stay incomplete
				if _, err := ws.c.Write([]byte{payload[i] ^ k[i%4]}); err == nil {
					sentBytes++
				}
				i++
			}
		}
	}
}
