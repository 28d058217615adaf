package attacks

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Retry storm: a fleet of buggy clients reconnects in a tight loop after
// every refusal, ignoring the protocol's back-off: phones to a server-id
// no binary holds (closed 4404), binaries claiming a held server-id (4409
// after the probe), phones to a full server-id (4429). The per-IP upgrade
// limiter must absorb it: each address gets its burst, then 429 with
// Retry-After; the relay's goroutines and memory stay bounded and return
// to their baseline; a legitimate pair keeps relaying with bounded latency.
// Local-only: it hammers the relay for retryStormFor, and reads /metrics.
const (
	retryStormAddrs   = 8
	retryStormWorkers = 3 // per address; worker k runs refusal kind k%3
	retryStormFor     = 4 * time.Second
	// The dedicated relay keeps the default limiter (burst 20, 2/s), so the
	// bound below is what a deployment gets.
	retryStormBurst = 20
	retryStormRate  = 2.0
	// retryStormRTTRatio bounds the pair's p99 round trip during the storm
	// against its idle p99 (with a floor for sub-millisecond idle figures):
	// generous, because attacker and relay share the machine's cores.
	retryStormRTTRatio = 40
	retryStormRTTFloor = 250 * time.Millisecond
	retryStormIdleRTTs = 100
)

func retryStorm() Scenario {
	return Scenario{
		ID:        "ATK-RETRY-STORM",
		Title:     "Clients reconnecting in a tight loop after 4404/4409/4429 are held to their burst by 429s; goroutines, memory and a live pair's latency stay bounded",
		Threats:   []string{"TM-DOS-7"},
		Mode:      LocalOnly,
		LocalOnly: "it hammers the relay from 8 simulated addresses for seconds and reads its goroutines and memory on /metrics",
		Run:       runRetryStorm,
	}
}

// stormTally is what the storm's workers saw.
type stormTally struct {
	mu                          sync.Mutex
	admitted, limited, badRetry int
	other, errs                 int
	firstErr                    error
	codes                       map[int]int // close codes of admitted attempts
	admittedBy                  map[int]int // per address index
	retryAfter                  string
}

func runRetryStorm(ctx context.Context, t *Target) Result {
	if _, skip := localOrSkip(t); skip != nil {
		return *skip
	}
	// The legitimate pair, a held server-id (its binary answers the
	// relay's probes) and a full one (binary plus --max-phones phones).
	b, err := newStage(ctx, t, 1, "--max-phones", "2",
		"--upgrade-burst", fmt.Sprint(retryStormBurst), "--upgrade-rate", fmt.Sprint(retryStormRate))
	if err != nil {
		return Failf("%v", err)
	}
	defer b.Close()
	tgt, m, pair, ph := b.tgt, b.m, b.s, b.phones[0]
	heldID, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("setup: %v", err)
	}
	defer heldID.Close()
	full, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("setup: %v", err)
	}
	defer full.Close()
	for i := 0; i < 2; i++ {
		if _, err := full.addPhone(nil); err != nil {
			return Failf("setup: %v", err)
		}
	}

	// Baselines, in this run: idle round trips, goroutines, RSS.
	var idle []time.Duration
	for i := 0; i < retryStormIdleRTTs; i++ {
		rtt, err := pair.roundTrip(ph, 3*time.Second)
		if err != nil {
			return Failf("idle pair: %v", err)
		}
		idle = append(idle, rtt)
	}
	base, err := m.scrape(ctx)
	if err != nil {
		return Failf("metrics: %v", err)
	}
	g0, rss0 := base[mGoroutines], base[mRSS]
	rej0 := base[mRejRate]

	// The storm.
	sctx, scancel := context.WithTimeout(ctx, retryStormFor)
	defer scancel()
	tally := &stormTally{codes: map[int]int{}, admittedBy: map[int]int{}}
	var wg sync.WaitGroup
	start := time.Now()
	for a := 0; a < retryStormAddrs; a++ {
		for w := 0; w < retryStormWorkers; w++ {
			wg.Add(1)
			go func(a, kind int) {
				defer wg.Done()
				stormWorker(ctx, start.Add(retryStormFor), tgt, a, kind, heldID.ServerID, full.ServerID, tally)
			}(a, (a+w)%3)
		}
	}

	// Sampling and the pair's round trips, while the storm runs.
	var peakG, peakRSS float64
	var sampleErr error
	var swg sync.WaitGroup
	swg.Add(1)
	go func() {
		defer swg.Done()
		for sctx.Err() == nil {
			v, err := m.scrape(ctx)
			if err != nil {
				sampleErr = err
				return
			}
			peakG, peakRSS = max(peakG, v[mGoroutines]), max(peakRSS, v[mRSS])
			time.Sleep(200 * time.Millisecond)
		}
	}()
	var during []time.Duration
	var pairErr error
	for sctx.Err() == nil {
		rtt, err := pair.roundTrip(ph, 5*time.Second)
		if err != nil {
			pairErr = err
			break
		}
		during = append(during, rtt)
		time.Sleep(10 * time.Millisecond)
	}
	scancel()
	wg.Wait()
	swg.Wait()
	elapsed := time.Since(start)
	if pairErr != nil {
		return Failf("legitimate pair stopped relaying during the storm after %d round trips: %v", len(during), pairErr)
	}
	if sampleErr != nil {
		return Failf("metrics during the storm: %v", sampleErr)
	}

	tally.mu.Lock()
	defer tally.mu.Unlock()
	attempts := tally.admitted + tally.limited + tally.other
	// The limiter's bound: each address gets its burst plus what refills.
	perAddrBound := retryStormBurst + int(retryStormRate*elapsed.Seconds()) + 1
	switch {
	case tally.limited == 0:
		return Failf("%d storm attempts in %v, none refused 429 (admitted %d): retries are not rate limited", attempts, elapsed.Round(time.Millisecond), tally.admitted)
	case tally.badRetry > 0:
		return Failf("%d of %d 429s lacked a Retry-After >= 1", tally.badRetry, tally.limited)
	case tally.other > 0 || tally.errs > 0:
		return Failf("storm saw %d unexpected answers and %d transport errors (want only 101 or 429; first error: %v)", tally.other, tally.errs, tally.firstErr)
	}
	for a, n := range tally.admittedBy {
		if n > perAddrBound {
			return Failf("address %s was admitted %d times in %v, over burst %d + %.0f/s", srcAddr(a), n, elapsed.Round(time.Millisecond), retryStormBurst, retryStormRate)
		}
	}
	for _, code := range []int{4404, 4409, 4429} {
		if tally.codes[code] == 0 {
			return Failf("no admitted storm attempt was closed %d (codes %v): the storm missed a refusal path", code, tally.codes)
		}
	}
	if rej1, err := m.value(ctx, mRejRate); err != nil || rej1-rej0 < float64(tally.limited) {
		return Failf("relay counted %v rate-limit rejections for %d 429s (%v)", rej1-rej0, tally.limited, err)
	}

	// Bounded while it lasted, and back to the baseline after.
	workers := retryStormAddrs * retryStormWorkers
	if peakG > g0+float64(8*workers+64) {
		return Failf("relay goroutines peaked at %.0f during the storm (baseline %.0f, %d clients)", peakG, g0, workers)
	}
	if peakRSS > 2*rss0+64<<20 {
		return Failf("relay RSS peaked at %s during the storm (baseline %s)", mib(peakRSS), mib(rss0))
	}
	var gAfter float64
	if !pollUntil(ctx, 10*time.Second, 100*time.Millisecond, func() bool {
		v, err := m.value(ctx, mGoroutines)
		gAfter = v
		return err == nil && v <= g0+8
	}) {
		return Failf("relay goroutines at %.0f 10 s after the storm, baseline %.0f: something leaked", gAfter, g0)
	}

	p99i, p99s := percentile(idle, 99), percentile(during, 99)
	bound := max(retryStormRTTRatio*p99i, retryStormRTTFloor)
	if len(during) == 0 || p99s > bound {
		return Failf("pair's p99 round trip %v during the storm (idle p99 %v) exceeds %v", p99s, p99i, bound)
	}
	return Passf("%d clients on %d addresses for %v: %d attempts, %d admitted (closes %v; <= %d per address), %d x 429 Retry-After %ss (%.0f/s); relay goroutines %.0f -> peak %.0f -> %.0f, RSS %s -> peak %s; pair RTT idle p50 %s p99 %s, storm p50 %s p99 %s (x%.1f, %d trips)",
		workers, retryStormAddrs, elapsed.Round(time.Millisecond), attempts, tally.admitted, tally.codes, perAddrBound, tally.limited, tally.retryAfter,
		float64(tally.limited)/elapsed.Seconds(), g0, peakG, gAfter, mib(rss0), mib(peakRSS),
		ms(percentile(idle, 50)), ms(p99i), ms(percentile(during, 50)), ms(p99s), float64(p99s)/float64(max(p99i, 1)), len(during))
}

// stormWorker reconnects as fast as it can until end; the attempt under
// way then finishes, so every error counted is a real one. kind 0: a phone
// to an unheld server-id (4404); 1: a binary claiming heldID (4409);
// 2: a phone to fullID (4429).
func stormWorker(ctx context.Context, end time.Time, t *Target, addr, kind int, heldID, fullID string, tally *stormTally) {
	src := srcAddr(addr)
	for time.Now().Before(end) && ctx.Err() == nil {
		var path string
		var h http.Header
		switch kind {
		case 0:
			path, h = "/v1/client", orphanPhoneHeaders()
		case 1:
			path, h = "/v1/server", binaryHeaders(heldID)
		default:
			path, h = "/v1/client", phoneHeaders(fullID, "tok-"+randHex(8))
		}
		u, err := t.upgradeFrom(ctx, src, nil, path, h)
		if err != nil {
			if ctx.Err() == nil {
				tally.mu.Lock()
				tally.errs++
				if tally.firstErr == nil {
					tally.firstErr = err
				}
				tally.mu.Unlock()
			}
			continue
		}
		code := 0
		if u.WS != nil {
			// Read to the relay's close (4409 waits for the probe).
			_ = u.WS.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			code = u.WS.readCloseFrame()
			u.Close()
		}
		tally.mu.Lock()
		switch u.Status {
		case http.StatusSwitchingProtocols:
			tally.admitted++
			tally.admittedBy[addr]++
			tally.codes[code]++
		case http.StatusTooManyRequests:
			tally.limited++
			tally.retryAfter = u.RetryAfter
			if u.retryAfterSecs() < 1 {
				tally.badRetry++
			}
		default:
			tally.other++
		}
		tally.mu.Unlock()
	}
}
