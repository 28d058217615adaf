package attacks

import (
	"context"
	"time"
)

// Dead peers: a phone that stops answering pings (a vanished network, a
// frozen app, or an attacker holding sockets open) is closed 1011 by the
// heartbeat and its binary is told, while live peers on the same slot are
// untouched. Local-only: the deployed 30 s + 30 s heartbeat is too slow
// for a smoke test.
const (
	deadPeerPing  = 300 * time.Millisecond
	deadPeerPong  = 300 * time.Millisecond
	deadPeerSlack = 10 * time.Second
)

func deadPeer() Scenario {
	return Scenario{
		ID:      "ATK-DEAD-PEER",
		Title:   "A phone that never answers pings is closed 1011 and its binary notified; live peers stay",
		Threats: []string{"TM-DOS-10"},
		Mode:    LocalOnly,
		Run:     runDeadPeer,
	}
}

func runDeadPeer(ctx context.Context, t *Target) Result {
	if _, skip := localOrSkip(t); skip != nil {
		return *skip
	}
	tgt, _, stop, err := dedicated(ctx, t, "--ping-interval", deadPeerPing.String(), "--pong-timeout", deadPeerPong.String())
	if err != nil {
		return Failf("%v", err)
	}
	defer stop()
	s, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("setup: %v", err)
	}
	defer s.Close()
	dead, err := s.addPhone(nil) // never reads, so never answers a ping
	if err != nil {
		return Failf("setup: %v", err)
	}
	live, err := s.addPhone(nil)
	if err != nil {
		return Failf("setup: %v", err)
	}
	live.StartReading()
	start := time.Now()
	budget := deadPeerPing + deadPeerPong + deadPeerSlack
	e, ok := s.BinR.waitEnvelope(budget, &s.Seen, func(e envelope) bool { return e.ConnID == dead.ConnID && e.CloseCode != 0 })
	if !ok {
		return Failf("phone that never answers pings still open after %v (ping %v, pong %v)", budget, deadPeerPing, deadPeerPong)
	}
	if e.CloseCode != 1011 {
		return Failf("dead phone closed with %d, want 1011", e.CloseCode)
	}
	took := time.Since(start)
	if n := noticeIn(s.Seen, live.ConnID); n != 0 {
		return Failf("live phone was closed too (%d)", n)
	}
	if _, err := s.roundTrip(live, 3*time.Second); err != nil {
		return Failf("live pair broken: %v", err)
	}
	return Passf("silent phone closed 1011 after %v (ping %v + pong %v), binary notified; live phone and binary still relaying", took.Round(10*time.Millisecond), deadPeerPing, deadPeerPong)
}
