package attacks

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// Oversized frames: a message over --max-message-bytes must be refused with
// close 1009 on either leg before the relay buffers it, and must hurt
// nobody else: the sibling phone and the binary keep relaying.
const (
	oversizeCapLocal  = 64 * 1024
	oversizeCapRemote = 256 * 1024 // the deployed default (protocol §8)
)

func oversizedFrame() Scenario {
	return Scenario{
		ID:      "ATK-OVERSIZE",
		Title:   "Messages over the cap close the sender with 1009 on either leg; the pair keeps relaying",
		Threats: []string{"TM-DOS-3"},
		Mode:    RemoteSafe,
		Bounds:  "2 binaries, 2 phones, one oversized message per leg (cap+1 bytes, 256 KiB+1 remotely)",
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
	tgt, _, stop, err := dedicated(ctx, t, "--max-message-bytes", fmt.Sprint(limit))
	if err != nil {
		return Failf("%v", err)
	}
	defer stop()

	// Phone leg.
	s, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("setup: %v", err)
	}
	defer s.Close()
	big, err := s.addPhone(nil)
	if err != nil {
		return Failf("setup: %v", err)
	}
	sib, err := s.addPhone(nil)
	if err != nil {
		return Failf("setup: %v", err)
	}
	if _, err := s.roundTrip(sib, 3*time.Second); err != nil {
		return Failf("setup round trip: %v", err)
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
	env := []byte(fmt.Sprintf(`{"conn_id":%q,"frame":`, p2.ConnID))
	frame := jsonOfSize(limit + 1 - len(env) - 1)
	env = append(append(env, frame...), '}')
	_ = s2.Bin.Write(ctx, websocket.MessageText, env)
	if code := s2.BinR.closeCode(5 * time.Second); code != 1009 {
		return Failf("binary sent a %d-byte envelope (cap %d): close code %d, want 1009", len(env), limit, code)
	}
	// The first pair is untouched by the second binary's fate.
	if _, err := s.roundTrip(sib, 3*time.Second); err != nil {
		return Failf("unrelated pair stopped relaying: %v", err)
	}
	return Passf("cap %d: phone's %d-byte message closed it 1009 (binary notified), binary's %d-byte envelope closed it 1009; sibling pair kept relaying",
		limit, limit+1, len(env))
}
