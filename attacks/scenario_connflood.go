package attacks

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Connection flood: clients from many addresses, none over its own per-IP
// share, open WebSockets until the relay holds --max-conns. The next
// upgrade, from an address that has done nothing yet, is refused 503 with
// Retry-After before any upgrade work; a pair connected before the flood
// keeps relaying and /healthz (outside admission) keeps answering. Closing
// one flood connection frees its slot. Local-only: it fills the relay.
const (
	connFloodMaxConns = 200
	connFloodPerAddr  = 5  // held connections per simulated address (under every per-IP limit)
	connFloodOverCap  = 20 // upgrades tried once full, each from a fresh address
)

func connFlood() Scenario {
	return Scenario{
		ID:        "ATK-CONN-FLOOD",
		Title:     "Connections from many addresses fill --max-conns; the next gets 503 + Retry-After; a live pair and /healthz carry on",
		Threats:   []string{"TM-DOS-5"},
		Mode:      LocalOnly,
		LocalOnly: "filling --max-conns (4096 by default) takes thousands of connections from more than 64 addresses, and a deployment at its cap refuses its real users",
		Run:       runConnFlood,
	}
}

func runConnFlood(ctx context.Context, t *Target) Result {
	if _, skip := localOrSkip(t); skip != nil {
		return *skip
	}
	// The legitimate pair connects first (from 127.0.0.1): 2 connections.
	b, err := newStage(ctx, t, 1, "--max-conns", fmt.Sprint(connFloodMaxConns), "--max-conns-per-ip", "64")
	if err != nil {
		return Failf("%v", err)
	}
	defer b.Close()
	tgt, m, s, ph := b.tgt, b.m, b.s, b.phones[0]

	// /healthz is polled throughout from yet another address.
	hctx, hcancel := context.WithCancel(ctx)
	var healthOK, healthBad atomic.Int64
	var hwg sync.WaitGroup
	hwg.Add(1)
	go func() {
		defer hwg.Done()
		for hctx.Err() == nil {
			if code, err := tgt.healthzFrom(hctx, srcAddr(999), nil); err == nil && code == http.StatusOK {
				healthOK.Add(1)
			} else if hctx.Err() == nil {
				healthBad.Add(1)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	defer func() { hcancel(); hwg.Wait() }()

	// Fill the cap: 5 held binaries per address.
	var held []upgrade
	defer func() { closeAll(held) }()
	want := connFloodMaxConns - 2
	for i := 0; len(held) < want; i++ {
		u, err := tgt.holdBinary(ctx, srcAddr(i/connFloodPerAddr))
		if err != nil {
			return Failf("flood connection %d from %s: %v", len(held)+1, srcAddr(i/connFloodPerAddr), err)
		}
		if u.Status != http.StatusSwitchingProtocols {
			return Failf("flood connection %d (relay holding %d) refused %d before --max-conns %d was reached", len(held)+1, len(held)+2, u.Status, connFloodMaxConns)
		}
		held = append(held, u)
	}
	addrs := (want + connFloodPerAddr - 1) / connFloodPerAddr

	// Full: every further upgrade, from addresses that have sent nothing,
	// is refused 503 with a Retry-After.
	rej0, _ := m.value(ctx, mRejGlobal)
	t0 := time.Now()
	retryAfter := ""
	for i := 0; i < connFloodOverCap; i++ {
		src := srcAddr(500 + i)
		u, err := tgt.holdBinary(ctx, src)
		if err != nil {
			return Failf("over-cap upgrade from %s: no answer (%v); want 503", src, err)
		}
		if u.Status == http.StatusSwitchingProtocols {
			u.Close()
			return Failf("upgrade %d over the cap admitted (101) with %d connections held: --max-conns %d not enforced", i+1, connFloodMaxConns+i, connFloodMaxConns)
		}
		if u.Status != http.StatusServiceUnavailable {
			return Failf("over-cap upgrade from fresh address %s answered %d, want 503", src, u.Status)
		}
		if u.retryAfterSecs() < 1 {
			return Failf("503 over the cap carries Retry-After %q, want whole seconds >= 1", u.RetryAfter)
		}
		retryAfter = u.RetryAfter
	}
	rejTook := time.Since(t0)
	if rej1, err := m.value(ctx, mRejGlobal); err != nil || rej1-rej0 < connFloodOverCap {
		return Failf("relay counted %v global-cap rejections for %d refused upgrades (%v)", rej1-rej0, connFloodOverCap, err)
	}

	// At the cap the pair still relays both ways.
	var worst time.Duration
	for i := 0; i < 10; i++ {
		rtt, err := s.roundTrip(ph, 3*time.Second)
		if err != nil {
			return Failf("legitimate pair stopped relaying at the cap: %v", err)
		}
		worst = max(worst, rtt)
	}
	h, _, err := tgt.healthz(ctx)
	if err != nil {
		return Failf("/healthz at the cap: %v", err)
	}
	if h.Binaries < want {
		return Failf("/healthz reports %d binaries at the cap, want >= %d", h.Binaries, want)
	}

	// A slot freed is a slot admitted again.
	held[0].Close()
	held = held[1:]
	var again upgrade
	if !pollUntil(ctx, 5*time.Second, 50*time.Millisecond, func() bool {
		u, err := tgt.holdBinary(ctx, srcAddr(600))
		if err == nil && u.Status == http.StatusSwitchingProtocols {
			again = u
			return true
		}
		return false
	}) {
		return Failf("a freed slot was not admitted again within 5 s")
	}
	held = append(held, again)

	hcancel()
	hwg.Wait()
	if healthBad.Load() > 0 || healthOK.Load() == 0 {
		return Failf("/healthz failed %d of %d times during the flood", healthBad.Load(), healthBad.Load()+healthOK.Load())
	}
	return Passf("held %d/%d connections (%d flood binaries from %d addresses + the pair); %d over-cap upgrades from fresh addresses all 503 Retry-After %ss (%v each); pair relayed at the cap, worst %v; /healthz 200 x%d; a freed slot re-admitted",
		want+2, connFloodMaxConns, want, addrs, connFloodOverCap, retryAfter, ms(rejTook/connFloodOverCap), ms(worst), healthOK.Load())
}
