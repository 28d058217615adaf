package attacks

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// Wake flood: whoever claims a server-id can ask the relay to wake any FCM
// token, through the relay's own Firebase project. The scenario runs a
// relay with push on against a fake FCM and token endpoint on loopback and
// attacks both bounds:
//
//  1. One claimer sends 120 wakes as fast as it can, and five colluding
//     claimers 20 each: FCM may see at most --push-burst per server-id
//     (plus what the bucket refills while the flood runs). A victim tenant
//     on the same relay then wakes once: FCM sees exactly that one wake,
//     and the victim's frames go both ways.
//  2. FCM hangs. Four claimers each send a burst of hanging wakes: FCM may see at most
//     --push-max-in-flight requests at once, and the rest are dropped, not
//     queued. While the slots are held the victim's frames, and those of
//     a claimer whose own wakes hang, still go both ways promptly. After --push-timeout the slots are free again and the
//     victim's next wake reaches FCM.
//
// Every wake must end counted in relay_push_wakes_total.
func pushFlood() Scenario {
	return Scenario{
		ID:        "ATK-PUSH-FLOOD",
		Title:     "Push-wake flood and a hanging FCM: FCM sees at most the per-server-id burst and the in-flight cap; another tenant's wakes and frames go through",
		Threats:   []string{"TM-OUT-1", "TM-OUT-2", "TM-OUT-4"},
		Mode:      LocalOnly,
		LocalOnly: "it needs a fake FCM that counts and hangs wakes; against a deployment it would send real pushes to Google",
		Run:       runPushFlood,
	}
}

const (
	pushBurst    = 6
	pushInFlight = 8 // above the burst: one claimer's burst fits, five colluders' do not
	pushTimeout  = 1500 * time.Millisecond
)

// startPushRelay starts a relay with push wakes sent to g.
func startPushRelay(ctx context.Context, l *Local, g *fakeGoogle, flags ...string) (*Process, error) {
	dir, err := os.MkdirTemp(l.TempDir, "push-")
	if err != nil {
		return nil, err
	}
	creds, err := g.writeCredentials(dir)
	if err != nil {
		return nil, err
	}
	return l.Start(ctx, append([]string{"--fcm-credentials", creds, "--fcm-endpoint", g.base, "--metrics-listen", "127.0.0.1:0"}, flags...)...)
}

// wake sends one push_wake from s's binary.
func (s *session) wake(token string) error {
	return s.Bin.Write(s.ctx, websocket.MessageText, []byte(`{"push_wake":{"platform":"fcm","token":"`+token+`"}}`))
}

// settledSends waits until the fake has seen no new send for quiet, and
// returns what it saw.
func settledSends(ctx context.Context, g *fakeGoogle, quiet, max time.Duration) []fcmSend {
	last, since := -1, time.Now()
	for deadline := time.Now().Add(max); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(20 * time.Millisecond) {
		sends, _, _, _ := g.stats()
		if len(sends) != last {
			last, since = len(sends), time.Now()
		} else if time.Since(since) >= quiet {
			break
		}
	}
	sends, _, _, _ := g.stats()
	return sends
}

func runPushFlood(ctx context.Context, t *Target) Result {
	l, g, skip := localFakeGoogle(t)
	if skip != nil {
		return *skip
	}
	defer g.Close()
	p, err := startPushRelay(ctx, l, g, "--push-burst", fmt.Sprint(pushBurst), "--push-interval", "10s",
		"--push-max-in-flight", fmt.Sprint(pushInFlight), "--push-timeout", pushTimeout.String(), "--shutdown-timeout", "2s")
	if err != nil {
		return Failf("start relay: %v: %s", err, tail(logText(p), 300))
	}
	defer p.Stop()
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return Failf("%v", err)
	}
	tt := &Target{Base: p.URL}

	victim, err := newSession(ctx, tt)
	if err != nil {
		return Failf("victim: %v", err)
	}
	defer victim.Close()
	vp, err := victim.addPhone(nil)
	if err != nil {
		return Failf("victim phone: %v", err)
	}
	var attackers []*session
	defer func() {
		for _, a := range attackers {
			a.Close()
		}
	}()
	newAttacker := func() (*session, error) {
		a, err := newSession(ctx, tt)
		if err == nil {
			attackers = append(attackers, a)
		}
		return a, err
	}

	// 1. Flood: one claimer, then five colluding ones.
	began := time.Now()
	wakes := 0
	solo, err := newAttacker()
	if err != nil {
		return Failf("attacker: %v", err)
	}
	for i := range 120 {
		if err := solo.wake(fmt.Sprintf("flood-solo-%03d-%s", i, randHex(8))); err != nil {
			return Failf("attacker wake: %v", err)
		}
		wakes++
	}
	for c := range 5 {
		a, err := newAttacker()
		if err != nil {
			return Failf("attacker: %v", err)
		}
		for i := range 20 {
			if err := a.wake(fmt.Sprintf("flood-c%d-%03d-%s", c, i, randHex(8))); err != nil {
				return Failf("attacker wake: %v", err)
			}
			wakes++
		}
	}
	// Once the flood's sends are answered, the victim wakes once.
	settledSends(ctx, g, 300*time.Millisecond, 10*time.Second)
	victimToken := "victim-1-" + randHex(8)
	if err := victim.wake(victimToken); err != nil {
		return Failf("victim wake: %v", err)
	}
	wakes++
	sends := settledSends(ctx, g, 300*time.Millisecond, 10*time.Second)
	// A bucket refills one wake per --push-interval (10 s) while the flood runs.
	allowed := pushBurst + int(time.Since(began)/(10*time.Second))
	if n, problems := countSends(sends, ""); len(problems) > 0 {
		return Failf("FCM received %d malformed requests: %v", len(problems), problems[0])
	} else if n == 0 {
		return Failf("FCM received nothing: push is not working, so the bound proves nothing")
	}
	solos, _ := countSends(sends, "flood-solo-")
	if solos > allowed {
		return Failf("one claimer's 120 wakes reached FCM %d times; the per-server-id bucket allows %d", solos, allowed)
	}
	if solos < pushBurst {
		return Failf("one claimer's burst reached FCM %d times, want %d: wakes within the bound were lost", solos, pushBurst)
	}
	for c := range 5 {
		if n, _ := countSends(sends, fmt.Sprintf("flood-c%d-", c)); n > allowed {
			return Failf("colluding claimer %d's 20 wakes reached FCM %d times; the bucket allows %d", c, n, allowed)
		}
	}
	if n, _ := countSends(sends, victimToken); n != 1 {
		return Failf("the victim's one wake reached FCM %d times during the flood, want 1", n)
	}
	if _, err := victim.roundTrip(vp, 3*time.Second); err != nil {
		return Failf("victim's frames after the flood: %v", err)
	}
	floodSends := len(sends)

	// 2. FCM hangs; four claimers take every in-flight slot. The first has
	// a phone: its own frames must flow while its wakes hang.
	var hanger *session
	var hangerPhone *phone
	for c := range 4 {
		a, err := newAttacker()
		if err != nil {
			return Failf("attacker: %v", err)
		}
		if c == 0 {
			if hangerPhone, err = a.addPhone(nil); err != nil {
				return Failf("attacker phone: %v", err)
			}
			hanger = a
		}
		for i := range pushBurst {
			if err := a.wake(fmt.Sprintf("hang-c%d-%d-%s", c, i, randHex(8))); err != nil {
				return Failf("attacker wake: %v", err)
			}
			wakes++
		}
	}
	if !pollUntil(ctx, 5*time.Second, 10*time.Millisecond, func() bool {
		sends, _, _, _ := g.stats()
		n, _ := countSends(sends, "hang-")
		return n >= pushInFlight
	}) {
		sends, _, _, _ := g.stats()
		n, _ := countSends(sends, "hang-")
		return Failf("only %d hanging wakes reached FCM, want the in-flight cap %d", n, pushInFlight)
	}
	var worst time.Duration
	for range 20 {
		d, err := victim.roundTrip(vp, 2*time.Second)
		if err != nil {
			return Failf("victim's frames while FCM hangs: %v", err)
		}
		worst = max(worst, d)
		if d, err = hanger.roundTrip(hangerPhone, 1*time.Second); err != nil {
			return Failf("the frames of a binary whose wakes hang stalled (its read loop waits on FCM): %v", err)
		}
		worst = max(worst, d)
	}
	sends, _, _, maxIn := g.stats()
	hangs, _ := countSends(sends, "hang-")
	if hangs > pushInFlight || maxIn > pushInFlight {
		return Failf("FCM saw %d hanging wakes (at most %d at once) with --push-max-in-flight %d: wakes were queued or the cap is not relay-wide", hangs, maxIn, pushInFlight)
	}
	// The held slots end at --push-timeout; the victim's next wake goes through.
	victimToken2 := "victim-2-" + randHex(8)
	var reached bool
	for deadline := time.Now().Add(pushTimeout + 5*time.Second); time.Now().Before(deadline) && !reached; {
		if err := victim.wake(victimToken2); err != nil {
			return Failf("victim wake: %v", err)
		}
		wakes++
		reached = pollUntil(ctx, 400*time.Millisecond, 20*time.Millisecond, func() bool {
			sends, _, _, _ := g.stats()
			n, _ := countSends(sends, victimToken2)
			return n > 0
		})
	}
	if !reached {
		return Failf("%v after FCM hung, the victim's wake never reached FCM: the hanging sends kept their slots past --push-timeout %v", pushTimeout+5*time.Second, pushTimeout)
	}

	// Every wake is counted under exactly one outcome.
	if !pollUntil(ctx, 5*time.Second, 50*time.Millisecond, func() bool {
		all, err := m.scrape(ctx)
		if err != nil {
			return false
		}
		var total float64
		for k, v := range all {
			if strings.HasPrefix(k, "relay_push_wakes_total{") {
				total += v
			}
		}
		return int(total) == wakes
	}) {
		all, _ := m.scrape(ctx)
		return Failf("relay_push_wakes_total does not add up to the %d wakes sent: %v", wakes, pushCounts(all))
	}
	all, _ := m.scrape(ctx)
	return Passf("flood: 120 wakes from one server-id reached FCM %d times (burst %d), 5 colluders' 100 at most %d each, the victim's wake exactly once (%d sends in all); hanging FCM: %d wakes in flight at most (cap %d), victim's frames worst round trip %s, its wake through after --push-timeout; outcomes %v",
		solos, pushBurst, allowed, floodSends, maxIn, pushInFlight, ms(worst), pushCounts(all))
}

// pushCounts is the non-zero relay_push_wakes_total series, for evidence.
func pushCounts(all map[string]float64) string {
	var parts []string
	for k, v := range all {
		if o, ok := strings.CutPrefix(k, `relay_push_wakes_total{outcome="`); ok && v > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", strings.TrimSuffix(o, `"}`), int(v)))
		}
	}
	return strings.Join(parts, " ")
}
