package attacks

import (
	"context"
	"fmt"
	"time"

	"github.com/coder/websocket"
)

// Dead peers: a phone that stops answering pings (a vanished network, a
// frozen app, or an attacker holding sockets open) is closed 1011 by the
// heartbeat and its binary is told, while live peers on the same slot are
// untouched.
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
// fails: the dead phone's notice must come within ping + pong + twice
// --close-timeout of its join (a missed pong is judged --close-timeout
// after its deadline, so that a relay that was itself late reads what
// arrived first, and the notice follows the close handshake the dead phone
// never answers), plus half of ping + pong as slack; the
// takeover within the probe plus half of it. The relay's timers fire on
// time; the slack covers the close frames' trips and the scheduler of a
// loaded 2-core machine (tens of milliseconds, measured well under 100).
// No earlier than 90 % of the configured time either, so it is that timer
// at work. The passing run is the positive control.
//
// Locally both halves run on relays of their own with short timers.
// Remotely they run on the deployed relay with its own (the defaults, or
// what relay attack --ping-interval, --pong-timeout and --probe-timeout
// say): about a minute for the dead phone and two probes for the binary.
const (
	deadPeerPing  = 300 * time.Millisecond
	deadPeerPong  = 300 * time.Millisecond
	deadPeerClose = 100 * time.Millisecond // --close-timeout
	// deadPeerProbe is --probe-timeout of the takeover relay.
	deadPeerProbe = 500 * time.Millisecond
)

// deadPeerTimers are the relay timers the scenario waits for.
type deadPeerTimers struct{ ping, pong, close, probe time.Duration }

func (d deadPeerTimers) slack() time.Duration      { return (d.ping + d.pong) / 2 }
func (d deadPeerTimers) probeSlack() time.Duration { return d.probe / 2 }

// timersOf are the relays' timers: locally the ones the scenario starts
// them with, remotely the deployed ones.
func timersOf(t *Target) deadPeerTimers {
	if t.Local != nil {
		return deadPeerTimers{deadPeerPing, deadPeerPong, deadPeerClose, deadPeerProbe}
	}
	return deadPeerTimers{tuned(t.PingInterval, defaultPingInterval), tuned(t.PongTimeout, defaultPongTimeout),
		defaultCloseTimeout, tuned(t.ProbeTimeout, defaultProbeTimeout)}
}

// tunedHint is what a remote failure of a timing bound adds: the flags
// that tell the suite a relay's tuned timers.
func tunedHint(t *Target, flags string) string {
	if t.Local != nil {
		return ""
	}
	return " (a relay tuned away from the defaults: tell relay attack with " + flags + ")"
}

func deadPeer() Scenario {
	return Scenario{
		ID:      "ATK-DEAD-PEER",
		Title:   "A phone that never answers pings is closed 1011, its binary notified; a dead incumbent binary is replaced after the probe",
		Threats: []string{"TM-DOS-10"},
		Mode:    RemoteSafe,
		Bounds:  "2 binaries and 3 phones held for ping + pong (about 60 s with the default --ping-interval and --pong-timeout 30s; relay attack --ping-interval/--pong-timeout D change it), then 4 binaries and 3 phones, the claims waiting two --probe-timeout (10 s); a few small frames; at most 6 connections open at once",
		Run:     runDeadPeer,
	}
}

func runDeadPeer(ctx context.Context, t *Target) Result {
	tm := timersOf(t)
	// The dead phone joins first; its heartbeat starts at its join, which
	// is after start and before start + setup.
	start := time.Now()
	st, err := newStage(ctx, t, 2, "--ping-interval", tm.ping.String(), "--pong-timeout", tm.pong.String(), "--close-timeout", tm.close.String())
	if err != nil {
		return Failf("%v", err)
	}
	defer st.Close()
	s, dead, live := st.s, st.phones[0], st.phones[1] // dead never reads, so never answers a ping
	live.StartReading()
	setup := time.Since(start)
	budget := setup + tm.ping + tm.pong + 2*tm.close + tm.slack()
	e, ok := s.BinR.waitEnvelope(budget-time.Since(start), &s.Seen, func(e envelope) bool { return e.ConnID == dead.ConnID && e.CloseCode != 0 })
	took := time.Since(start)
	if !ok {
		return Failf("heartbeat (heartbeats.ping in internal/relay/heartbeat.go, --pong-timeout): phone that never answers pings still open %v after the stage was set (ping %v + pong %v + 2 × close %v + %v slack, setup %v)%s",
			took.Round(time.Millisecond), tm.ping, tm.pong, tm.close, tm.slack(), setup.Round(time.Millisecond), tunedHint(t, "--ping-interval and --pong-timeout"))
	}
	if e.CloseCode != 1011 {
		return Failf("dead phone closed with %d, want 1011", e.CloseCode)
	}
	if took < (tm.ping+tm.pong)*9/10 {
		return Failf("dead phone closed after %v, before ping %v + pong %v could elapse: not the heartbeat at work%s", took, tm.ping, tm.pong, tunedHint(t, "--ping-interval and --pong-timeout"))
	}
	if n := noticeIn(s.Seen, live.ConnID); n != 0 {
		return Failf("live phone was closed too (%d)", n)
	}
	if _, err := s.roundTrip(live, 3*time.Second); err != nil {
		return Failf("live pair broken: %v", err)
	}
	var takeover string
	if hb := tm.ping + tm.pong; t.Local == nil && hb < 2*(tm.probe+tm.probeSlack()) {
		// Locally the takeover relay runs the deployed heartbeat under a
		// short probe; a remote relay whose heartbeat is this close to its
		// probe could free the dead incumbent's slot by the heartbeat alone.
		takeover = fmt.Sprintf("takeover half not run: the relay's ping + pong (%v) is under twice the probe's bound (%v + %v), so its heartbeat could free a dead incumbent's slot as fast as the probe", hb, tm.probe, tm.probeSlack())
	} else if takeover, err = deadIncumbent(ctx, t, tm); err != nil {
		return Failf("dead incumbent binary: %v", err)
	}
	return Passf("silent phone's notice %v after setup began (setup %v; bound: setup + ping %v + pong %v + close %v + %v slack), closed 1011; live phone and binary still relaying; %s",
		took.Round(10*time.Millisecond), setup.Round(10*time.Millisecond), tm.ping, tm.pong, tm.close, tm.slack(), takeover)
}

// deadIncumbent runs the takeover half, locally on a relay of its own with
// --probe-timeout deadPeerProbe and the deployed (30 s) heartbeat.
func deadIncumbent(ctx context.Context, t *Target, tm deadPeerTimers) (string, error) {
	tgt, _, stop, err := dedicated(ctx, t, "--probe-timeout", tm.probe.String())
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
	if code := startReader(ctx, rival).closeCode(tm.probe + tm.probeSlack()); code != 4409 {
		if code == 0 {
			return "", fmt.Errorf("conflict probe (binaryConn.claim in internal/relay/binary.go): a claim against a live incumbent got no answer within the %v probe + %v%s", tm.probe, tm.probeSlack(), tunedHint(t, "--probe-timeout"))
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
	// Two phones join the dead incumbent. A phone that comes before its
	// claim is registered is closed 4404 at once; it is tried again. (No
	// /healthz counts: a deployed relay has other clients.)
	var phones []*reader
	for range 2 {
		c, r, err := joinHeld(ctx, tgt, id)
		if err != nil {
			return "", fmt.Errorf("phone of the dead incumbent: %w", err)
		}
		defer c.CloseNow()
		phones = append(phones, r)
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
	budget := tm.probe + tm.probeSlack()
	for i, r := range phones {
		if code := r.closeCode(budget - time.Since(start)); code != 4404 {
			return "", fmt.Errorf("conflict probe (binaryConn.claim in internal/relay/binary.go, --probe-timeout): phone %d of the dead incumbent: close %d within %v of the claim (probe %v + %v slack), want 4404 (evicted by the takeover); the claimant's close: %d%s",
				i+1, code, time.Since(start).Round(time.Millisecond), tm.probe, tm.probeSlack(), next.BinR.closeCode(0), tunedHint(t, "--probe-timeout"))
		}
	}
	took := time.Since(start)
	if took < tm.probe*9/10 {
		return "", fmt.Errorf("the dead incumbent was replaced after %v, before the %v probe could have timed out%s", took, tm.probe, tunedHint(t, "--probe-timeout"))
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
		took.Round(10*time.Millisecond), tm.probe), nil
}

// joinHeld joins a phone to serverID, whose binary may not read, and
// returns its reader once the relay has kept it open for a moment: a phone
// closed 4404 (the claim not registered yet) is tried again, up to 5 s.
func joinHeld(ctx context.Context, t *Target, serverID string) (*websocket.Conn, *reader, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, _, err := t.dial(ctx, "/v1/client", phoneHeaders(serverID, "tok-"+randHex(8)))
		if err != nil {
			return nil, nil, err
		}
		r := startReader(ctx, c)
		code := r.closeCode(300 * time.Millisecond)
		if code == 0 {
			return c, r, nil
		}
		_ = c.CloseNow()
		if code != 4404 || time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("closed %d at once (want it held by the dead incumbent's slot)", code)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
