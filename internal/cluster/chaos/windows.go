package chaos

import (
	"sort"
	"time"
)

// Params are the timers and bounds the checker holds the cluster to: the
// relays' own flags, and the slack a loaded machine needs on top of the
// bounds docs/cluster.md states.
type Params struct {
	Instances int
	Lease     time.Duration // --cluster-lease
	Grace     time.Duration // --grace-period
	// Slack is added to every documented bound (a 2-core machine shared
	// with other work delays timers, reconnects and the harness's own
	// readers). It widens what is allowed; it never allows a kind of
	// anomaly the docs do not.
	Slack time.Duration
	// MaxQueued and PhoneQueue are --max-queued-bytes and
	// --phone-queue-bytes; KernelSlack the bytes a stalled binary's socket
	// holds outside the relay's queues (both kernel buffers and the
	// libraries' own).
	MaxQueued, PhoneQueue, KernelSlack int
	// ClaimAt101: an accepted claim is decided by the time its 101
	// arrives (issue 24's defect 10: a phone that joins after the 101
	// finds the server-id held). When false the claim may take effect
	// until the relay's binary_claimed log line for it.
	ClaimAt101 bool
}

// expiryBound: an unreachable owner's claims are gone this long after it
// was cut off (docs/cluster.md: within one lease, plus about 1 s of
// JetStream expiry).
func (p Params) expiryBound() time.Duration { return p.Lease + time.Second + p.Slack }

// splitAfter: a claim can lapse no sooner than this after its owner lost
// NATS (the last refresh was at most lease/3 earlier). A cut-off shorter
// than this changes no claim.
func (p Params) splitAfter() time.Duration { return p.Lease * 2 / 3 }

// healBound: after a partition heals, the cut-off owner finds its claim
// replaced within one reconnect (250 ms) and one refresh (lease/3).
func (p Params) healBound() time.Duration { return 250*time.Millisecond + p.Lease/3 + p.Slack }

// settle: how long after a fault ends its consequences (links found lost,
// 1013 while the store elects, claims re-created) may still show.
func (p Params) settle() time.Duration { return p.Lease + 2*time.Second + p.Slack }

// electionBound: a NATS node's loss or return may leave the claims bucket
// without a leader this long (docs/cluster.md measured 2 to 6 s).
func (p Params) electionBound() time.Duration { return 8*time.Second + p.Slack }

// windows are the intervals the fault log opens.
type windows struct {
	p Params
	// cutOff[i]: instance i could not speak to NATS (killed, stopped, its
	// links cut or blackholed, or no connection sampled).
	cutOff [][]Interval
	// store: the claims bucket may have had no leader (NATS node lost or
	// back).
	store []Interval
	// stalled[binary]: a binary not reading.
	stalled map[int][]Interval
	// slowPhone[phone]: a phone not reading.
	slowPhone map[int][]Interval
	// kills[i]: instance i was killed at these times.
	kills [][]T
	stops [][]Interval
}

func newWindows(h *History, p Params) *windows {
	w := &windows{p: p, cutOff: make([][]Interval, p.Instances), stalled: map[int][]Interval{}, slowPhone: map[int][]Interval{},
		kills: make([][]T, p.Instances), stops: make([][]Interval, p.Instances)}
	end := func(f Fault) T {
		if f.End == 0 {
			return h.End
		}
		return f.End
	}
	for _, f := range h.Faults {
		iv := Interval{f.Start, end(f)}
		switch f.Kind {
		case FaultKill, FaultStop, FaultCut, FaultBlackhole:
			w.cutOff[f.Target] = append(w.cutOff[f.Target], iv)
			if f.Kind == FaultKill {
				w.kills[f.Target] = append(w.kills[f.Target], f.Start)
			}
			if f.Kind == FaultStop {
				w.stops[f.Target] = append(w.stops[f.Target], iv)
			}
		case FaultNATSKill:
			w.store = append(w.store, Interval{f.Start, f.Start + p.electionBound()}, Interval{iv.To, iv.To + p.electionBound()})
			for _, i := range f.Affected {
				// Its connection dropped and moved to another node: a
				// disconnect as short as the reconnect (sampling may miss
				// it), so the window is the kill itself plus settle.
				w.cutOff[i] = append(w.cutOff[i], Interval{f.Start, f.Start + p.Slack})
			}
		case FaultStall:
			w.stalled[f.Target] = append(w.stalled[f.Target], iv)
		case FaultSlowPhone:
			w.slowPhone[f.Target] = append(w.slowPhone[f.Target], iv)
		}
	}
	for i := range w.cutOff {
		if i < len(h.Offline) {
			w.cutOff[i] = append(w.cutOff[i], h.Offline[i]...)
		}
		// A relay the machine did not run for a while, or a harness that
		// did not run, is as good as stopped: its timers fire late, its
		// lease may lapse, and what it delivers is late by that much.
		if i < len(h.Starved) {
			w.cutOff[i] = append(w.cutOff[i], h.Starved[i]...)
			w.stops[i] = append(w.stops[i], h.Starved[i]...)
		}
		w.stops[i] = append(w.stops[i], h.Paused...)
		w.cutOff[i] = merge(w.cutOff[i])
		w.stops[i] = merge(w.stops[i])
	}
	return w
}

// merge sorts and joins overlapping intervals.
func merge(ivs []Interval) []Interval {
	sort.Slice(ivs, func(i, j int) bool { return ivs[i].From < ivs[j].From })
	var out []Interval
	for _, iv := range ivs {
		if n := len(out); n > 0 && iv.From <= out[n-1].To {
			if iv.To > out[n-1].To {
				out[n-1].To = iv.To
			}
			continue
		}
		out = append(out, iv)
	}
	return out
}

func anyOverlap(ivs []Interval, a, b T) bool {
	for _, iv := range ivs {
		if iv.overlaps(a, b) {
			return true
		}
	}
	return false
}

// disturbed: instance i was cut off from NATS, or had been within settle,
// at some time in [a, b]. Cross-instance links of i may be lost (1011), and
// its claims and remote joins refused 1013.
func (w *windows) disturbed(i int, a, b T) bool {
	if i < 0 || i >= len(w.cutOff) {
		return false
	}
	for _, iv := range w.cutOff[i] {
		if (Interval{iv.From, iv.To + w.p.settle()}).overlaps(a, b) {
			return true
		}
	}
	return false
}

// anyDisturbed: some instance was disturbed in [a, b].
func (w *windows) anyDisturbed(a, b T) bool {
	for i := range w.cutOff {
		if w.disturbed(i, a, b) {
			return true
		}
	}
	return false
}

// tryAgain: a claim or remote join on instance i in [a, b] may be refused
// 1013: i itself was cut off (or just back), or some instance that may own
// the server-id could not be asked while its claims had not yet expired,
// or the claims bucket may have had no leader.
func (w *windows) tryAgain(i int, a, b T) bool {
	if w.disturbed(i, a, b) || anyOverlap(w.store, a, b) {
		return true
	}
	for j := range w.cutOff {
		for _, iv := range w.cutOff[j] {
			to := min(iv.To+w.p.settle(), iv.From+w.p.expiryBound())
			if (Interval{iv.From, to}).overlaps(a, b) {
				return true
			}
		}
	}
	return false
}

// split are the times a binary on instance i may go on serving its local
// phones beside a newer owner elsewhere (docs/cluster.md: an owner cut off
// from NATS for longer than its claim's lease, until heal plus one
// reconnect and one refresh).
func (w *windows) split(i int) []Interval {
	var out []Interval
	for _, iv := range w.cutOff[i] {
		if iv.To-iv.From >= w.p.splitAfter()-w.p.Slack/2 {
			out = append(out, Interval{iv.From + w.p.splitAfter() - w.p.Slack/2, iv.To + w.p.healBound()})
		}
	}
	return out
}

// stale: instance i was cut off in [a, b] (or had healed less than
// healBound before): a grace slot it holds may have been reclaimed
// elsewhere meanwhile (a reclaim needs no word from the owner), and it
// does not know yet.
func (w *windows) stale(i int, a, b T) bool {
	for _, iv := range w.cutOff[i] {
		if (Interval{iv.From, iv.To + w.p.healBound()}).overlaps(a, b) {
			return true
		}
	}
	return false
}

// mayBeDead: at some time in [a, b] the cluster may have taken binary c
// for gone, so a claim may take its server-id, a phone may be refused or
// evicted 4404: c had ended or was being closed (the relay may know up to
// Slack before its client does), it was not reading, or its instance was
// cut off long enough for its claim to lapse.
func (w *windows) mayBeDead(c *Conn, a, b T) bool {
	gone := forever
	switch {
	case c.Ended == 0:
	case c.relayClosed() && c.Reason == reasonReplaced:
		// Closed because another claim took the server-id: the
		// consequence of a takeover, not a reason for one.
		gone = c.Ended
	default:
		gone = c.Ended - w.p.Slack
	}
	if c.SelfClose != 0 && c.SelfClose < gone {
		gone = c.SelfClose
	}
	if gone <= b {
		return true
	}
	if anyOverlap(w.stalled[c.ID], a, b) {
		return true
	}
	for _, k := range w.kills[c.Inst] {
		if k >= c.Dial && k <= b {
			return true
		}
	}
	return anyOverlap(w.split(c.Inst), a, b)
}

// stopped: instance i was stopped (or had just been continued) in [a, b]:
// its timers may fire late all at once, so its own heartbeat and read
// deadlines may close clients that did nothing wrong.
func (w *windows) stopped(i int, a, b T) bool {
	for _, iv := range w.stops[i] {
		if (Interval{iv.From, iv.To + w.p.settle()}).overlaps(a, b) {
			return true
		}
	}
	return false
}

// deadline is the time by which something started at t on instances
// insts (a frame's send, a phone's leave) has shown its effect, given
// bound: t + bound, pushed back past every stop of those instances that
// overlaps it (a stopped relay can neither deliver nor close anything
// until it is continued).
func (w *windows) deadline(t T, bound time.Duration, insts ...int) T {
	by := t + bound
	for changed := true; changed; {
		changed = false
		for _, i := range insts {
			if i < 0 || i >= len(w.stops) {
				continue
			}
			for _, iv := range w.stops[i] {
				if iv.overlaps(t, by) && iv.To+bound > by {
					by, changed = iv.To+bound, true
				}
			}
		}
	}
	return by
}

// killed: instance i was killed in [a, b].
func (w *windows) killed(i int, a, b T) bool {
	for _, k := range w.kills[i] {
		if k >= a && k <= b {
			return true
		}
	}
	return false
}
