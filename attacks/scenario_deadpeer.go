package attacks

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Dead peers: a phone that stops answering pings (a vanished network, a
// frozen app, or an attacker holding sockets open) is closed 1011 by the
// heartbeat and its binary is told, while live peers on the same slot are
// untouched. Local-only: the deployed 30 s + 30 s heartbeat is too slow
// for a smoke test.
//
// A dead incumbent binary must not hold its server-id either: a binary
// that stops reading (so it answers no ping) holds a slot with phones; a
// new binary claiming the same server-id is given the slot once the
// conflict probe has waited --probe-timeout, the old binary is closed
// 1011 and its phones are evicted 4404. That relay runs the deployed
// heartbeat, so only the probe can free the slot in time. A live
// incumbent, probed the same way, keeps its slot and the claimant gets
// 4409: the probe must tell the two apart.
//
// The bounds are tight, so a pong deadline or probe several times too long
// fails: the dead phone's notice must come within ping + pong +
// --close-timeout (the notice follows the close handshake the dead phone
// never answers) of its join, plus half of ping + pong as slack; the
// takeover within the probe plus half of it. The relay's timers fire on
// time; the slack covers the close frames' trips over loopback and the
// scheduler of a loaded 2-core machine (tens of milliseconds, measured
// well under 100). No earlier than 90 % of the configured time either, so
// it is that timer at work. The passing run is the positive control.
const (
	deadPeerPing  = 300 * time.Millisecond
	deadPeerPong  = 300 * time.Millisecond
	deadPeerClose = 100 * time.Millisecond // --close-timeout
	deadPeerSlack = (deadPeerPing + deadPeerPong) / 2
	// deadPeerProbe is --probe-timeout of the takeover relay.
	deadPeerProbe      = 500 * time.Millisecond
	deadPeerProbeSlack = deadPeerProbe / 2
)

func deadPeer() Scenario {
	return Scenario{
		ID:      "ATK-DEAD-PEER",
		Title:   "A phone that never answers pings is closed 1011, its binary notified; a dead incumbent binary is replaced after the probe",
		Threats: []string{"TM-DOS-10"},
		Mode:    LocalOnly,
		Run:     runDeadPeer,
	}
}

func runDeadPeer(ctx context.Context, t *Target) Result {
	if _, skip := localOrSkip(t); skip != nil {
		return *skip
	}
	// The dead phone joins first; its heartbeat starts at its join, which
	// is after start and before start + setup.
	start := time.Now()
	st, err := newStage(ctx, t, 2, "--ping-interval", deadPeerPing.String(), "--pong-timeout", deadPeerPong.String(), "--close-timeout", deadPeerClose.String())
	if err != nil {
		return Failf("%v", err)
	}
	defer st.Close()
	s, dead, live := st.s, st.phones[0], st.phones[1] // dead never reads, so never answers a ping
	live.StartReading()
	setup := time.Since(start)
	budget := setup + deadPeerPing + deadPeerPong + deadPeerClose + deadPeerSlack
	e, ok := s.BinR.waitEnvelope(budget-time.Since(start), &s.Seen, func(e envelope) bool { return e.ConnID == dead.ConnID && e.CloseCode != 0 })
	took := time.Since(start)
	if !ok {
		return Failf("heartbeat (heartbeats.ping in internal/relay/heartbeat.go, --pong-timeout): phone that never answers pings still open %v after the stage was set (ping %v + pong %v + close %v + %v slack, setup %v)",
			took.Round(time.Millisecond), deadPeerPing, deadPeerPong, deadPeerClose, deadPeerSlack, setup.Round(time.Millisecond))
	}
	if e.CloseCode != 1011 {
		return Failf("dead phone closed with %d, want 1011", e.CloseCode)
	}
	if took < (deadPeerPing+deadPeerPong)*9/10 {
		return Failf("dead phone closed after %v, before ping %v + pong %v could elapse: not the heartbeat at work", took, deadPeerPing, deadPeerPong)
	}
	if n := noticeIn(s.Seen, live.ConnID); n != 0 {
		return Failf("live phone was closed too (%d)", n)
	}
	if _, err := s.roundTrip(live, 3*time.Second); err != nil {
		return Failf("live pair broken: %v", err)
	}
	takeover, err := deadIncumbent(ctx, t)
	if err != nil {
		return Failf("dead incumbent binary: %v", err)
	}
	return Passf("silent phone's notice %v after setup began (setup %v; bound: setup + ping %v + pong %v + close %v + %v slack), closed 1011; live phone and binary still relaying; %s",
		took.Round(10*time.Millisecond), setup.Round(10*time.Millisecond), deadPeerPing, deadPeerPong, deadPeerClose, deadPeerSlack, takeover)
}

// deadIncumbent runs the takeover half on a relay of its own with
// --probe-timeout deadPeerProbe and the deployed (30 s) heartbeat.
func deadIncumbent(ctx context.Context, t *Target) (string, error) {
	tgt, _, stop, err := dedicated(ctx, t, "--probe-timeout", deadPeerProbe.String())
	if err != nil {
		return "", err
	}
	defer stop()

	// Control: a live incumbent keeps its slot.
	live, err := newSession(ctx, tgt)
	if err != nil {
		return "", fmt.Errorf("live incumbent: %w", err)
	}
	defer live.Close()
	lp, err := live.addPhone(nil)
	if err != nil {
		return "", fmt.Errorf("live incumbent: %w", err)
	}
	rival, _, err := tgt.dial(ctx, "/v1/server", binaryHeaders(live.ServerID))
	if err != nil {
		return "", fmt.Errorf("claim against the live incumbent: %w", err)
	}
	defer rival.CloseNow()
	if code := startReader(ctx, rival).closeCode(deadPeerProbe + deadPeerProbeSlack); code != 4409 {
		if code == 0 {
			return "", fmt.Errorf("conflict probe (binaryConn.claim in internal/relay/binary.go): a claim against a live incumbent got no answer within the %v probe + %v", deadPeerProbe, deadPeerProbeSlack)
		}
		return "", fmt.Errorf("a claim against a live incumbent ended with %d, want 4409 (the probe must see it answer)", code)
	}
	if _, err := live.roundTrip(lp, 3*time.Second); err != nil {
		return "", fmt.Errorf("live incumbent's pair broken by the refused claim: %w", err)
	}

	// The dead incumbent: a raw socket that never reads after the upgrade,
	// so no ping it is sent is ever answered.
	id := newServerID()
	dead, err := tgt.dialRawWS(ctx, "/v1/server", binaryHeaders(id))
	if err != nil {
		return "", fmt.Errorf("dead incumbent: %w", err)
	}
	defer dead.c.Close()
	// The relay now holds the live pair (1 binary, 1 phone) and the dead
	// incumbent.
	counts := func(binaries, phones int) bool {
		return pollUntil(ctx, 3*time.Second, 20*time.Millisecond, func() bool {
			h, _, err := tgt.healthz(ctx)
			return err == nil && h.Binaries == binaries && h.Phones == phones
		})
	}
	if !counts(2, 1) {
		return "", errors.New("the dead incumbent's claim never registered")
	}
	var phones []*reader
	for range 2 {
		c, _, err := tgt.dial(ctx, "/v1/client", phoneHeaders(id, "tok-"+randHex(8)))
		if err != nil {
			return "", fmt.Errorf("phone of the dead incumbent: %w", err)
		}
		defer c.CloseNow()
		phones = append(phones, startReader(ctx, c))
	}
	if !counts(2, 3) {
		return "", errors.New("the dead incumbent's phones never joined")
	}
	for _, r := range phones {
		if code := r.closeCode(0); code != 0 {
			return "", fmt.Errorf("a phone of the dead incumbent was closed %d before any takeover", code)
		}
	}

	// The claimant: a live binary (its reader answers pings) on the same id.
	start := time.Now()
	nc, _, err := tgt.dial(ctx, "/v1/server", binaryHeaders(id))
	if err != nil {
		return "", fmt.Errorf("claimant: %w", err)
	}
	next := &session{t: tgt, ctx: ctx, ServerID: id, Bin: nc, BinR: startReader(ctx, nc)}
	defer next.Close()
	budget := deadPeerProbe + deadPeerProbeSlack
	for i, r := range phones {
		if code := r.closeCode(budget - time.Since(start)); code != 4404 {
			return "", fmt.Errorf("conflict probe (binaryConn.claim in internal/relay/binary.go, --probe-timeout): phone %d of the dead incumbent: close %d within %v of the claim (probe %v + %v slack), want 4404 (evicted by the takeover); the claimant's close: %d",
				i+1, code, time.Since(start).Round(time.Millisecond), deadPeerProbe, deadPeerProbeSlack, next.BinR.closeCode(0))
		}
	}
	took := time.Since(start)
	if took < deadPeerProbe*9/10 {
		return "", fmt.Errorf("the dead incumbent was replaced after %v, before the %v probe could have timed out", took, deadPeerProbe)
	}
	if code := next.BinR.closeCode(0); code != 0 {
		return "", fmt.Errorf("the claimant was closed %d instead of taking the slot", code)
	}
	// Its socket now holds the frames it never read, then the close.
	_ = dead.c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if code := dead.readCloseFrame(); code != 1011 {
		return "", fmt.Errorf("the replaced incumbent got close %d, want 1011", code)
	}
	np, err := next.addPhone(nil)
	if err != nil {
		return "", fmt.Errorf("new binary holds the slot but: %w", err)
	}
	if _, err := next.roundTrip(np, 3*time.Second); err != nil {
		return "", fmt.Errorf("new binary's pair: %w", err)
	}
	return fmt.Sprintf("a claim against a live incumbent got 4409 (pair intact); a binary that stopped reading was replaced %v after a new claim (--probe-timeout %v): old binary closed 1011, its 2 phones evicted 4404, the new binary relayed",
		took.Round(10*time.Millisecond), deadPeerProbe), nil
}
