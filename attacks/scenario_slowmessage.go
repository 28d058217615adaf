package attacks

import (
	"bytes"
	"context"
	"fmt"
	"time"
)

// Slow message: a peer that sends a frame header and then trickles the
// payload holds a reader and its buffer. The per-message read deadline
// (--read-timeout, from the message's first byte) must close it, though
// bytes keep arriving, on both legs: a trickling phone is closed and its
// binary told; a trickling binary is closed.
//
// The bound is tight: the close must come no earlier than 90 % of the
// deadline (so it is the deadline, not something sooner) and no later than
// the deadline plus slowMsgSlack. The slack is half the local deadline:
// the relay's timer fires on time, and what remains is the close frame's
// trip over loopback and the scheduler of a loaded 2-core machine (tens of
// milliseconds), while a deadline twice as long already falls outside. The
// passing run is the positive control.
const (
	slowMsgLocalTimeout  = time.Second
	slowMsgRemoteTimeout = 30 * time.Second // the deployed default
	slowMsgTrickle       = 100 * time.Millisecond
)

// slowMsgSlack is what the close may take past the deadline rt: half of
// it, at most 3 s (remotely: the internet's round trips).
func slowMsgSlack(rt time.Duration) time.Duration { return min(rt/2, 3*time.Second) }

func slowMessage() Scenario {
	return Scenario{
		ID:      "ATK-SLOW-MESSAGE",
		Title:   "A message whose payload is trickled is cut off by the per-message read deadline, on the phone and the binary leg",
		Threats: []string{"TM-DOS-2"},
		Mode:    RemoteSafe,
		Bounds:  "2 binaries, 1 phone; per leg one 125-byte frame trickled at one byte per 100ms for at most 33s (the default --read-timeout 30s plus slack; relay attack --read-timeout D changes it)",
		Run:     runSlowMessage,
	}
}

func runSlowMessage(ctx context.Context, t *Target) Result {
	rt := slowMsgRemoteTimeout
	if t.ReadTimeout > 0 {
		rt = t.ReadTimeout
	}
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

	// Phone leg.
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
	phone, err := trickle(ws, rt, "phone")
	if err != nil {
		return Failf("%v", err)
	}
	e, ok := s.BinR.waitEnvelope(10*time.Second, &s.Seen, func(e envelope) bool { return e.ConnID == connID && e.CloseCode != 0 })
	if !ok {
		return Failf("trickling phone cut (%s) but its binary got no close notice", phone)
	}

	// Binary leg: a binary of its own that trickles an envelope.
	bws, err := tgt.dialRawWS(ctx, "/v1/server", binaryHeaders(newServerID()))
	if err != nil {
		return Failf("raw binary: %v", err)
	}
	defer bws.c.Close()
	binary, err := trickle(bws, rt, "binary")
	if err != nil {
		return Failf("%v", err)
	}
	return Passf("read timeout %v: phone leg %s, its binary notified (%d); binary leg %s", rt, phone, e.CloseCode, binary)
}

// trickle sends one frame header on ws and then its payload a byte every
// slowMsgTrickle, never the last byte, and requires the relay to close ws
// within [0.9 rt, rt + slowMsgSlack(rt)] of the header. It describes what
// happened.
func trickle(ws *rawWS, rt time.Duration, leg string) (string, error) {
	closed := make(chan int, 1)
	go func() { closed <- ws.readCloseFrame() }()
	payload := []byte(`{"pad":"` + string(bytes.Repeat([]byte("T"), 115)) + `"}`)
	k := maskKey()
	start := time.Now()
	if _, err := ws.c.Write(frameHeader(0x1, len(payload), k)); err != nil {
		return "", fmt.Errorf("%s leg: frame header write: %w", leg, err)
	}
	budget := rt + slowMsgSlack(rt)
	sent := 0
	timer := time.NewTimer(budget)
	defer timer.Stop()
	tick := time.NewTicker(slowMsgTrickle)
	defer tick.Stop()
	for i := 0; ; {
		select {
		case code := <-closed:
			took := time.Since(start)
			if took < rt*9/10 {
				return "", fmt.Errorf("%s leg: connection closed after %v, before the %v read deadline: not the deadline at work (code %d)", leg, took.Round(time.Millisecond), rt, code)
			}
			if took > budget {
				return "", fmt.Errorf("per-message read deadline (msgReader.read in internal/relay/conn.go) on the %s leg: closed only after %v, past the %v deadline + %v slack", leg, took.Round(time.Millisecond), rt, slowMsgSlack(rt))
			}
			return fmt.Sprintf("cut after %v with %d of %d payload bytes trickled (close %d)", took.Round(time.Millisecond), sent, len(payload), code), nil
		case <-timer.C:
			return "", fmt.Errorf("per-message read deadline (msgReader.read in internal/relay/conn.go) on the %s leg: trickled message still being read after %v (deadline %v + %v slack), %d bytes sent", leg, budget, rt, slowMsgSlack(rt), sent)
		case <-tick.C:
			if i < len(payload)-1 { // never the last byte: the message must stay incomplete
				if _, err := ws.c.Write([]byte{payload[i] ^ k[i%4]}); err == nil {
					sent++
				}
				i++
			}
		}
	}
}
