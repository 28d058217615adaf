package attacks

import (
	"context"
	"fmt"
	"time"
)

// A stalled token endpoint: FCM wakes need an OAuth2 access token, fetched
// from the key file's token_uri. That fetch is bounded by --push-timeout
// like the FCM call itself: a token endpoint that accepts a request and
// never answers must not hold the relay's wakes past it. The scenario runs
// a relay with push on against a fake token endpoint that reads the first
// token request and never answers it. Every wake waiting on that fetch
// (they share it) must end "failed" within --push-timeout, not sooner (the
// stall was really waited on) and not later; the stalled request itself
// must be given up by the relay at that bound; and once the endpoint
// answers again, the next wake fetches a token and reaches FCM. A fetch
// bounded by anything longer (or by nothing) is still running when the
// later wake arrives, which then shares it and fails too. The binary's
// frames flow meanwhile.
func pushTokenStall() Scenario {
	return Scenario{
		ID:        "ATK-PUSH-TOKEN-STALL",
		Title:     "A token endpoint that accepts and never answers: wakes end failed at --push-timeout, the fetch is given up, later wakes are sent",
		Threats:   []string{"TM-OUT-4"},
		Mode:      LocalOnly,
		LocalOnly: "it needs a fake token endpoint that never answers, and a relay of its own with push on against it",
		Run:       runPushTokenStall,
	}
}

// tokenStallTimeout is the relay's --push-timeout here.
const tokenStallTimeout = time.Second

func runPushTokenStall(ctx context.Context, t *Target) Result {
	l, g, skip := localFakeGoogle(t)
	if skip != nil {
		return *skip
	}
	defer g.Close()
	g.stallTokens(1)
	p, err := startPushRelay(ctx, l, g, "--push-timeout", tokenStallTimeout.String(), "--push-max-in-flight", "4", "--push-burst", "8")
	if err != nil {
		return Failf("start relay: %v: %s", err, tail(logText(p), 300))
	}
	defer p.Stop()
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return Failf("%v", err)
	}
	s, err := newSession(ctx, &Target{Base: p.URL})
	if err != nil {
		return Failf("binary: %v", err)
	}
	defer s.Close()
	ph, err := s.addPhone(nil)
	if err != nil {
		return Failf("phone: %v", err)
	}
	outcome := func(o string) int {
		v, _ := m.value(ctx, `relay_push_wakes_total{outcome="`+o+`"}`)
		return int(v)
	}

	// Four wakes share the stalled fetch.
	began := time.Now()
	for i := range 4 {
		if err := s.wake(fmt.Sprintf("stalled-%d-%s", i, randHex(8))); err != nil {
			return Failf("wake: %v", err)
		}
	}
	if !pollUntil(ctx, 5*time.Second, 10*time.Millisecond, func() bool { return len(g.stalled()) == 1 }) {
		return Failf("the token endpoint never received the fetch it was to stall")
	}
	if _, err := s.roundTrip(ph, 3*time.Second); err != nil {
		return Failf("the binary's frames stalled with the token fetch: %v", err)
	}
	limit := tokenStallTimeout + 4*time.Second
	if !pollUntil(ctx, limit, 20*time.Millisecond, func() bool { return outcome("failed") == 4 }) {
		all, _ := m.scrape(ctx)
		return Failf("%v after the stall began, the 4 wakes waiting on the token fetch had not ended failed (--push-timeout %v): %v", limit, tokenStallTimeout, pushCounts(all))
	}
	took := time.Since(began)
	if took < tokenStallTimeout*9/10 {
		return Failf("the wakes failed after %v, before --push-timeout %v: the stall was not waited on, so it proves nothing", took, tokenStallTimeout)
	}
	// The relay gives up the stalled request at the same bound.
	if !pollUntil(ctx, tokenStallTimeout+2*time.Second, 20*time.Millisecond, func() bool { return !g.stalled()[0].ended.IsZero() }) {
		return Failf("the relay still held the stalled token request open %v after it began (--push-timeout %v): the fetch is not bounded", time.Since(g.stalled()[0].began).Round(time.Millisecond), tokenStallTimeout)
	}
	held := g.stalled()[0].ended.Sub(g.stalled()[0].began)

	// The endpoint answers again: a later wake is sent. (One that lands in
	// the instant the stalled fetch is failing shares its failure, so a few
	// are tried, within far less than a fetch bounded ten times longer.)
	reached, tries := false, 0
	for deadline := time.Now().Add(tokenStallTimeout + 4*time.Second); !reached && time.Now().Before(deadline); {
		late := "late-" + randHex(8)
		if err := s.wake(late); err != nil {
			return Failf("wake: %v", err)
		}
		tries++
		reached = pollUntil(ctx, 500*time.Millisecond, 20*time.Millisecond, func() bool {
			sends, _, _, _ := g.stats()
			n, _ := countSends(sends, late)
			return n == 1
		})
	}
	if !reached {
		all, _ := m.scrape(ctx)
		return Failf("after the stalled fetch, %d later wakes never reached FCM: %v", tries, pushCounts(all))
	}
	if sends, _, _, _ := g.stats(); len(sends) != 1 {
		return Failf("FCM received %d requests, want only one later wake's", len(sends))
	}
	all, _ := m.scrape(ctx)
	return Passf("4 wakes on a token fetch the endpoint never answered ended failed after %v (--push-timeout %v); the relay gave up the request after %v; the binary's frames flowed meanwhile; a later wake was sent (try %d); outcomes %v",
		took.Round(time.Millisecond), tokenStallTimeout, held.Round(time.Millisecond), tries, pushCounts(all))
}
