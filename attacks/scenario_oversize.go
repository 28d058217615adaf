package attacks

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// Oversized frames: a message over --max-message-bytes must be refused with
// close 1009 on either leg before the relay buffers it, and must hurt
// nobody else: the sibling phone and the binary keep relaying.
//
// The positive control, a message of exactly the cap relayed intact on
// both legs, is what ties the 1009 to the relay's own limit: the WebSocket
// library's default read limit (32 KiB) is below every cap tested, so a
// relay that forgot to set its limit would still close cap+1 with 1009, but
// would close the exact-cap message too.
const (
	oversizeCapLocal  = 64 * 1024
	oversizeCapRemote = 256 * 1024 // the deployed default (protocol §8)
)

func oversizedFrame() Scenario {
	return Scenario{
		ID:      "ATK-OVERSIZE",
		Title:   "A message of exactly the cap is relayed on both legs; cap+1 closes the sender 1009; the pair keeps relaying",
		Threats: []string{"TM-DOS-3"},
		Mode:    RemoteSafe,
		Bounds:  "2 binaries, 3 phones, per leg one message of exactly the cap and one of cap+1 bytes (256 KiB remotely)",
		Run:     runOversize,
	}
}

// jsonOfSize returns a JSON object of exactly n bytes (n >= 16).
func jsonOfSize(n int) []byte {
	const pre, post = `{"pad":"`, `"}`
	return []byte(pre + strings.Repeat("A", n-len(pre)-len(post)) + post)
}

func runOversize(ctx context.Context, t *Target) Result {
	limit := oversizeCapRemote
	if t.Local != nil {
		limit = oversizeCapLocal
	}
	st, err := newStage(ctx, t, 2, "--max-message-bytes", fmt.Sprint(limit))
	if err != nil {
		return Failf("%v", err)
	}
	defer st.Close()
	// Phone leg.
	tgt, s, big, sib := st.tgt, st.s, st.phones[0], st.phones[1]
	if _, err := s.roundTrip(sib, 3*time.Second); err != nil {
		return Failf("setup round trip: %v", err)
	}
	// Positive control, phone leg: exactly the cap reaches the binary intact.
	exact := jsonOfSize(limit)
	if err := big.C.Write(ctx, websocket.MessageText, exact); err != nil {
		return Failf("phone write of %d bytes: %v", limit, err)
	}
	if e, ok := s.BinR.waitEnvelope(5*time.Second, &s.Seen, func(e envelope) bool { return e.ConnID == big.ConnID }); !ok || !bytes.Equal(e.Frame, exact) {
		return Failf("phone's message of exactly the cap (%d bytes) did not reach the binary intact (got a %d-byte frame, close code %d)", limit, len(e.Frame), e.CloseCode)
	}
	br := big.StartReading()
	_ = big.C.Write(ctx, websocket.MessageText, jsonOfSize(limit+1))
	code := br.closeCode(5 * time.Second)
	if code != 1009 {
		return Failf("phone sent %d bytes (cap %d): close code %d, want 1009", limit+1, limit, code)
	}
	if _, ok := s.BinR.waitEnvelope(3*time.Second, &s.Seen, func(e envelope) bool { return e.ConnID == big.ConnID && e.CloseCode != 0 }); !ok {
		return Failf("binary got no close notice for the phone closed 1009")
	}
	if _, err := s.roundTrip(sib, 3*time.Second); err != nil {
		return Failf("sibling phone stopped relaying after the oversized message: %v", err)
	}

	// Binary leg: an oversized envelope closes the binary with 1009.
	s2, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("setup binary leg: %v", err)
	}
	defer s2.Close()
	p2, err := s2.addPhone(nil)
	if err != nil {
		return Failf("setup binary leg: %v", err)
	}
	// Positive control, binary leg: an envelope of exactly the cap is
	// delivered, its frame intact.
	okEnv, okFrame := envelopeOfSize(p2.ConnID, limit)
	if err := s2.Bin.Write(ctx, websocket.MessageText, okEnv); err != nil {
		return Failf("binary write of a %d-byte envelope: %v", len(okEnv), err)
	}
	r2 := p2.StartReading()
	if m := r2.next(5 * time.Second); !bytes.Equal(m, okFrame) {
		return Failf("binary's envelope of exactly the cap (%d bytes) did not reach the phone intact (got %d bytes; binary close code %d)", len(okEnv), len(m), s2.BinR.closeCode(0))
	}
	env, _ := envelopeOfSize(p2.ConnID, limit+1)
	_ = s2.Bin.Write(ctx, websocket.MessageText, env)
	if code := s2.BinR.closeCode(5 * time.Second); code != 1009 {
		return Failf("binary sent a %d-byte envelope (cap %d): close code %d, want 1009", len(env), limit, code)
	}
	// The first pair is untouched by the second binary's fate.
	if _, err := s.roundTrip(sib, 3*time.Second); err != nil {
		return Failf("unrelated pair stopped relaying: %v", err)
	}
	return Passf("cap %d: exactly-cap messages relayed intact both ways (phone %d bytes, binary envelope %d bytes); phone's %d-byte message closed it 1009 (binary notified), binary's %d-byte envelope closed it 1009; sibling pair kept relaying",
		limit, len(exact), len(okEnv), limit+1, len(env))
}

// envelopeOfSize returns a binary envelope addressed to connID of exactly n
// bytes, and the frame it carries.
func envelopeOfSize(connID string, n int) (env, frame []byte) {
	env = []byte(fmt.Sprintf(`{"conn_id":%q,"frame":`, connID))
	frame = jsonOfSize(n - len(env) - 1)
	return append(append(env, frame...), '}'), frame
}
