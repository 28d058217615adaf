package attacks

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"time"
)

// Per-IP flood and upgrade rate: one address cannot take more than its
// share. Locally (a relay of its own, flags below): an address holding
// --max-conns-per-ip connections is refused 429 while another address
// still connects; an address that upgrades in a tight loop is refused 429
// with Retry-After >= 1 once its --upgrade-burst is spent; /healthz is
// never limited.
//
// Remotely the operator's flags are unknown, so the run asserts only what
// the defaults guarantee (--upgrade-burst 20, --upgrade-rate 2/s): 40
// back-to-back upgrades from one address, finished within a few seconds,
// exceed any bucket of that size, so at least one is refused 429 with
// Retry-After >= 1; and /healthz, asked in between, is never 429. A relay
// configured with a much larger burst fails this scenario: that is a
// finding for the operator (their limit is looser than the default), not a
// flake.
const (
	perIPCapLocal    = 8
	perIPBurstLocal  = 12
	perIPRateLocal   = "0.5" // per second: nothing refills during the tight loop
	perIPLoopLocal   = 16    // > perIPBurstLocal
	perIPLoopRemote  = 40    // > 20 (default burst) + 2/s over the loop
	perIPHealthEvery = 10
)

func perIPFlood() Scenario {
	return Scenario{
		ID:      "ATK-PER-IP-FLOOD",
		Title:   "One address over its per-IP cap or upgrade rate gets 429 + Retry-After; other addresses and /healthz are unaffected",
		Threats: []string{"TM-DOS-6"},
		Mode:    RemoteSafe,
		Bounds: fmt.Sprintf("%d back-to-back upgrades of a phone to an unheld server-id (each closed 4404 at once) and %d /healthz requests, from one address; assumes the default --upgrade-burst 20 / --upgrade-rate 2",
			perIPLoopRemote, perIPLoopRemote/perIPHealthEvery),
		BehindProxy: ProxyNote{TestsRelay, "the relay's per-address limits answer; behind a proxy they charge the address the proxy " +
			"writes in X-Forwarded-For (believed through --trust-proxy), which a run from one address cannot tell from the proxy's " +
			"own: the relay's refusal log (remote) shows which it was"},
		Run: runPerIPFlood,
	}
}

func runPerIPFlood(ctx context.Context, t *Target) Result {
	if t.Local == nil {
		return perIPFloodRemote(ctx, t)
	}
	tgt, p, stop, err := dedicated(ctx, t, "--max-conns-per-ip", fmt.Sprint(perIPCapLocal), "--upgrade-burst", fmt.Sprint(perIPBurstLocal),
		"--upgrade-rate", perIPRateLocal)
	if err != nil {
		return Failf("%v", err)
	}
	defer stop()
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return Failf("setup: %v", err)
	}

	// A: one address fills its per-IP cap with held connections.
	hog, other, looper := srcAddr(0), srcAddr(1), srcAddr(2)
	var held []upgrade
	defer func() { closeAll(held) }()
	for len(held) < perIPCapLocal {
		u, err := tgt.holdBinary(ctx, hog)
		if err != nil || u.Status != http.StatusSwitchingProtocols {
			return Failf("connection %d of %s under its cap: status %d (%v)", len(held)+1, hog, u.Status, err)
		}
		held = append(held, u)
	}
	cap0, _ := m.value(ctx, mRejPerIP)
	u, err := tgt.holdBinary(ctx, hog)
	if err != nil {
		return Failf("connection over the per-IP cap: no answer (%v); want 429", err)
	}
	if u.Status == http.StatusSwitchingProtocols {
		u.Close()
		return Failf("%s opened connection %d with --max-conns-per-ip %d: per-IP cap not enforced", hog, perIPCapLocal+1, perIPCapLocal)
	}
	if u.Status != http.StatusTooManyRequests || u.retryAfterSecs() < 1 {
		return Failf("connection over the per-IP cap answered %d Retry-After %q, want 429 with Retry-After >= 1", u.Status, u.RetryAfter)
	}
	capRetry := u.RetryAfter
	if cap1, err := m.value(ctx, mRejPerIP); err != nil || cap1 != cap0+1 {
		return Failf("relay counted %v per-IP-cap rejections for the one refused connection (%v)", cap1-cap0, err)
	}

	// B: meanwhile another address connects normally.
	u, err = tgt.holdBinary(ctx, other)
	if err != nil || u.Status != http.StatusSwitchingProtocols {
		return Failf("%s was refused (status %d, %v) while only %s was at its cap", other, u.Status, err, hog)
	}
	u.Close()

	// C: a third address upgrades in a tight loop; past the burst it is
	// rate limited, while its /healthz requests are not.
	rate0, _ := m.value(ctx, mRejRate)
	res, err := upgradeLoop(ctx, tgt, looper, perIPLoopLocal)
	if err != nil {
		return Failf("%v", err)
	}
	if res.limited == 0 {
		return Failf("%d back-to-back upgrades from %s (burst %d): none refused 429; admitted %d: upgrade rate not limited", perIPLoopLocal, looper, perIPBurstLocal, res.admitted)
	}
	if res.badRetry > 0 {
		return Failf("%d of %d 429s lacked a Retry-After >= 1", res.badRetry, res.limited)
	}
	if res.admitted > perIPBurstLocal+1 {
		return Failf("%s made %d upgrades back to back, over --upgrade-burst %d", looper, res.admitted, perIPBurstLocal)
	}
	if res.healthBad > 0 {
		return Failf("/healthz from the rate-limited address answered non-200 %d times", res.healthBad)
	}
	if rate1, err := m.value(ctx, mRejRate); err != nil || rate1-rate0 < float64(res.limited) {
		return Failf("relay counted %v rate-limit rejections for %d 429s (%v)", rate1-rate0, res.limited, err)
	}
	return Passf("%s: %d held, the next 429 Retry-After %ss (per_ip_cap counted); %s still admitted; %s: %d back-to-back upgrades -> %d admitted (burst %d), %d x 429 Retry-After %ss; /healthz 200 x%d from the limited address",
		hog, perIPCapLocal, capRetry, other, looper, perIPLoopLocal, res.admitted, perIPBurstLocal, res.limited, res.retryAfter, res.healthOK)
}

// loopResult tallies a tight upgrade loop.
type loopResult struct {
	admitted, limited, badRetry, other int
	retryAfter                         string // the last 429's Retry-After
	healthOK, healthBad                int
}

// upgradeLoop makes n back-to-back phone upgrades to unheld server-ids from
// src (the zero Addr: the system's choice), closing each accepted one at
// once, and asks /healthz every perIPHealthEvery attempts.
func upgradeLoop(ctx context.Context, t *Target, src netip.Addr, n int) (loopResult, error) {
	var r loopResult
	for i := 0; i < n; i++ {
		if i > 0 && i%perIPHealthEvery == 0 {
			if code, err := t.healthzFrom(ctx, src, nil); err == nil && code == http.StatusOK {
				r.healthOK++
			} else {
				r.healthBad++
			}
		}
		u, err := t.upgradeFrom(ctx, src, nil, "/v1/client", orphanPhoneHeaders())
		if err != nil {
			return r, fmt.Errorf("upgrade %d of the loop: %v", i+1, err)
		}
		switch u.Status {
		case http.StatusSwitchingProtocols:
			r.admitted++
			u.Close()
		case http.StatusTooManyRequests:
			r.limited++
			r.retryAfter = u.RetryAfter
			if u.retryAfterSecs() < 1 {
				r.badRetry++
			}
		default:
			r.other++
		}
	}
	return r, nil
}

func perIPFloodRemote(ctx context.Context, t *Target) Result {
	start := time.Now()
	res, err := upgradeLoop(ctx, t, netip.Addr{}, perIPLoopRemote)
	took := time.Since(start)
	if err != nil {
		return Failf("%v", err)
	}
	switch {
	case res.healthBad > 0:
		return Failf("/healthz answered non-200 %d of %d times during the loop (it must be exempt from admission)", res.healthBad, res.healthBad+res.healthOK)
	case res.limited == 0:
		return Failf("%d back-to-back upgrades in %v: none refused 429 (admitted %d, other %d); the per-IP upgrade rate is looser than the defaults (burst 20, 2/s) or off",
			perIPLoopRemote, took.Round(time.Millisecond), res.admitted, res.other)
	case res.badRetry > 0:
		return Failf("%d of %d 429s lacked a Retry-After >= 1", res.badRetry, res.limited)
	}
	return Passf("%d back-to-back upgrades in %v: %d admitted, %d x 429 Retry-After %ss, %d other; /healthz 200 x%d",
		perIPLoopRemote, took.Round(time.Millisecond), res.admitted, res.limited, res.retryAfter, res.other, res.healthOK)
}
