package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/pyrycode/relay/attacks"
)

// Step is one fault of the schedule: its kind, whether it is the long
// variant (longer than what a claim survives: the lease), its target (an
// instance, or a NATS node for nats-kill; stall, slow-phone and rogue pick
// a live connection when they run), how long it lasts and the pause
// before the next one.
type Step struct {
	Kind   FaultKind
	Long   bool
	Target int
	Dur    time.Duration
	Gap    time.Duration
}

func (s Step) String() string {
	v := "short"
	if s.Long {
		v = "long"
	}
	return fmt.Sprintf("%s/%s target %d for %v, then %v", s.Kind, v, s.Target, s.Dur.Round(time.Millisecond), s.Gap.Round(time.Millisecond))
}

// Plan is the fault schedule of cfg: rounds of every variant of every
// enabled kind in a seeded order, until their time fills cfg.Duration (at
// least one round, so that a short run still covers every kind).
//
// Durations, with L the lease: a short kill is restarted after 0.3-1 s, a
// long one after L+3 to L+4 s (its claims must expire meanwhile); a short
// stop, cut or blackhole lasts 0.3 s to L/2 (less than the 2/3 L a claim
// surely survives), a long one L+1.8 to L+2.5 s; a NATS node is down 1-4 s; a
// stall 2.5-3.5 s (less than the heartbeat's 6 s); a slow phone 1.5-3 s.
func Plan(cfg Config) []Step {
	cfg = cfg.Defaults()
	r := rand.New(rand.NewPCG(uint64(cfg.Seed), 0))
	L := cfg.Lease
	type variant struct {
		kind   FaultKind
		long   bool
		lo, hi time.Duration
	}
	var vs []variant
	for _, k := range cfg.Faults {
		switch k {
		case FaultKill:
			vs = append(vs, variant{k, false, 300 * time.Millisecond, time.Second}, variant{k, true, L + 3*time.Second, L + 4*time.Second})
		case FaultStop, FaultCut, FaultBlackhole:
			vs = append(vs, variant{k, false, 300 * time.Millisecond, L / 2}, variant{k, true, L + 1800*time.Millisecond, L + 2500*time.Millisecond})
		case FaultNATSKill:
			vs = append(vs, variant{k, false, time.Second, 4 * time.Second})
		case FaultStall:
			vs = append(vs, variant{k, false, 2500 * time.Millisecond, 3500 * time.Millisecond})
		case FaultSlowPhone:
			vs = append(vs, variant{k, false, 1500 * time.Millisecond, 3 * time.Second})
		case FaultRogue:
			vs = append(vs, variant{k, false, time.Second, time.Second})
		}
	}
	var out []Step
	var total time.Duration
	for len(out) == 0 || total < cfg.Duration {
		if len(vs) == 0 {
			break
		}
		for _, i := range r.Perm(len(vs)) {
			v := vs[i]
			s := Step{Kind: v.kind, Long: v.long, Target: r.IntN(3), Dur: dur(r, v.lo, v.hi), Gap: dur(r, 200*time.Millisecond, time.Second)}
			out = append(out, s)
			total += s.Dur + s.Gap
		}
	}
	return out
}

// inject runs one step of the schedule and records it.
func (d *driver) inject(ctx context.Context, s Step, r *rand.Rand) {
	f, h := d.f, d.h
	note := "short"
	if s.Long {
		note = "long"
	}
	switch s.Kind {
	case FaultKill:
		if f.addr(s.Target) == "" {
			return
		}
		i := h.fault(Fault{Kind: s.Kind, Target: s.Target, Start: f.now(), Note: note})
		f.kill(s.Target)
		time.Sleep(s.Dur)
		err := f.restart(ctx, s.Target)
		h.faultEnded(i, f.now(), errNote(err))
	case FaultStop:
		owners := d.prepareSplit(s, r)
		i := h.fault(Fault{Kind: s.Kind, Target: s.Target, Start: f.now(), Note: note})
		f.signal(s.Target, true)
		d.squatDuring(s, r, owners)
		f.signal(s.Target, false)
		h.faultEnded(i, f.now(), "")
	case FaultCut, FaultBlackhole:
		owners := d.prepareSplit(s, r)
		i := h.fault(Fault{Kind: s.Kind, Target: s.Target, Start: f.now(), Note: note})
		f.partition(s.Target, s.Kind == FaultBlackhole)
		d.squatDuring(s, r, owners)
		f.heal(s.Target)
		h.faultEnded(i, f.now(), "")
	case FaultNATSKill:
		// The node with the most relays on it (the plan's on a tie): a
		// node nobody uses would test only the election.
		best := -1
		for n := range f.nodes {
			c := 0
			for r := range f.rs {
				c += min(1, f.links[r][n].Conns())
			}
			if c > best || c == best && n == s.Target {
				best, s.Target = c, n
			}
		}
		var affected []int
		for r := range f.rs {
			if f.links[r][s.Target].Conns() > 0 {
				affected = append(affected, r)
			}
		}
		i := h.fault(Fault{Kind: s.Kind, Target: s.Target, Start: f.now(), Note: fmt.Sprintf("%s, relays on it %v", note, affected), Affected: affected})
		f.nodes[s.Target].Stop()
		time.Sleep(s.Dur)
		err := f.nodes[s.Target].Restart()
		h.faultEnded(i, f.now(), errNote(err))
	case FaultStall:
		d.stall(s, r)
	case FaultSlowPhone:
		d.slowPhone(s, r)
	case FaultRogue:
		d.rogue(s, r)
	}
}

func errNote(err error) string {
	if err != nil {
		return "error: " + err.Error()
	}
	return ""
}

// prepareSplit readies a long stop or partition of s.Target to become a
// split brain: up to two binaries there (one is dialled if there is none),
// each with a phone there too, pinned open until well after the fault, so
// that the cut-off owner has local pairs that must stop once the heal is
// noticed. It returns those binaries.
func (d *driver) prepareSplit(s Step, r *rand.Rand) []*client {
	if !s.Long {
		return nil
	}
	var owners []*client
	for _, b := range shuffle(r, d.live(Binary)) {
		if b.c.Inst == s.Target && len(owners) < 2 {
			owners = append(owners, b)
		}
	}
	if len(owners) == 0 {
		for _, t := range shuffle(r, append([]*tenant(nil), d.tenants...)) {
			b := d.dial(t, Binary, s.Target, true)
			if b == nil {
				continue
			}
			select {
			case <-b.done: // refused: someone holds it
				continue
			case <-time.After(500 * time.Millisecond):
			}
			owners = append(owners, b)
			break
		}
	}
	pinned := s.Dur + d.cfg.Lease + 3*time.Second
	for _, b := range owners {
		b.pin.Store(time.Now().Add(pinned).UnixNano())
		if p := d.dial(b.t, Phone, s.Target, false); p != nil {
			d.closeAfter(p, pinned)
		}
		if b.c.Squatter { // dialled here: closed when its pin ends
			d.closeAfter(b, pinned)
		}
	}
	time.Sleep(300 * time.Millisecond) // the phones' joins and first frames
	return owners
}

// squatDuring waits out a stop or partition of s.Target. A long one is a
// split brain in the making: once the target's claims can have expired
// (L + 1.5 s), a second daemon claims the server-ids of the owners
// prepareSplit readied, from other instances; the cluster may grant them
// (docs/cluster.md, availability), and after the heal the cut-off owner
// must give way.
func (d *driver) squatDuring(s Step, r *rand.Rand, owners []*client) {
	start := time.Now()
	if s.Long {
		time.Sleep(d.cfg.Lease + 1500*time.Millisecond)
		for _, b := range owners {
			d.squat(b.t, r, s.Target)
		}
	}
	time.Sleep(time.Until(start.Add(s.Dur)))
}

// stall makes a binary stop reading while phones of its tenant on other
// instances burst frames at it: its owner must hold them in stub queues
// charged to --max-queued-bytes, so that what the binary gets once it
// reads again stays within that ceiling (checkBudgets).
func (d *driver) stall(s Step, r *rand.Rand) {
	var b *client
	for _, c := range shuffle(r, d.live(Binary)) {
		if !c.c.Squatter {
			b = c
			break
		}
	}
	if b == nil {
		return
	}
	t := b.t
	t.mu.Lock()
	n := 14 - len(t.phones) // stay under --max-phones (16)
	t.mu.Unlock()
	n = min(n, 10)
	var extra []*client
	for range n {
		inst := (b.c.Inst + 1 + r.IntN(2)) % 3
		if p := d.dial(t, Phone, inst, false); p != nil {
			extra = append(extra, p)
		}
	}
	// Until the binary knows every phone (joined, first frame through).
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		known := 0
		for _, p := range extra {
			if b.connIDOf(p.c.ID) != "" {
				known++
			}
		}
		if known == len(extra) {
			break
		}
	}
	b.pin.Store(time.Now().Add(s.Dur + 2*time.Second).UnixNano()) // its backlog is the point
	i := d.h.fault(Fault{Kind: s.Kind, Target: b.c.ID, Start: d.f.now(), Note: fmt.Sprintf("binary %d on %d, %d remote phones bursting", b.c.ID, b.c.Inst, len(extra))})
	b.pause(s.Dur)
	for _, p := range extra {
		go func() {
			for range 6 { // 42 KB: under --phone-queue-bytes, so no phone's own cap closes it
				if p.sendUp(7000) != nil {
					return
				}
			}
		}()
	}
	time.Sleep(s.Dur)
	d.h.faultEnded(i, d.f.now(), "")
	for _, p := range extra {
		d.closeAfter(p, 1500*time.Millisecond)
	}
}

// slowPhone makes a phone stop reading while its binary bursts frames at
// it: the phone's queue (on its home, a proxy's when the binary is
// elsewhere) fills to --phone-queue-bytes and the relay closes it 1011.
func (d *driver) slowPhone(s Step, r *rand.Rand) {
	for _, b := range shuffle(r, d.live(Binary)) {
		ids := b.connIDs()
		if len(ids) == 0 {
			continue
		}
		id := ids[r.IntN(len(ids))]
		b.wmu.Lock()
		pr := b.peers[id]
		b.wmu.Unlock()
		if pr == nil {
			continue
		}
		b.t.mu.Lock()
		p := b.t.phones[pr.phone]
		b.t.mu.Unlock()
		if p == nil {
			continue
		}
		i := d.h.fault(Fault{Kind: s.Kind, Target: p.c.ID, Start: d.f.now(), Note: fmt.Sprintf("phone %d on %d, binary %d on %d", p.c.ID, p.c.Inst, b.c.ID, b.c.Inst)})
		p.pause(s.Dur)
		for range 12 {
			if b.sendDown(id, 6000, 0) != nil {
				break
			}
		}
		time.Sleep(s.Dur)
		d.h.faultEnded(i, d.f.now(), "")
		return
	}
}

func shuffle[X any](r *rand.Rand, xs []X) []X {
	r.Shuffle(len(xs), func(i, j int) { xs[i], xs[j] = xs[j], xs[i] })
	return xs
}

// Link message kinds of the cluster wire (docs/cluster.md,
// internal/cluster/wire.go); attacks.ForgeLink encodes them independently
// of the relay's code: the forgeries are what a client holding NATS
// credentials could send.
const (
	linkUp    = 1
	linkDown  = 2
	linkLeave = 3
	linkEvict = 4
)

// rogueID is the forger's own instance id: it speaks as itself (NATS
// permissions keep it from speaking as another, TM-CLU-4), with payloads
// that name a live phone of another instance.
const rogueID = "rogue"

// rogue forges link messages for up to three live phones on other
// instances than their binaries, knowing their conn_ids (the worst case):
// to each one's owner a phone frame (with the next sequence numbers the
// real ones will have) and a leave; to its home an envelope from the
// binary and an eviction. Every one must be dropped: none may reach a
// client, close the phone or send its binary a notice (checkFrames,
// checkCloses, checkNotices).
func (d *driver) rogue(s Step, r *rand.Rand) {
	if d.nc == nil {
		return
	}
	type target struct {
		b, p     *client
		id       string
		up, down int
	}
	var ts []target
	for _, b := range shuffle(r, d.live(Binary)) {
		for _, id := range b.connIDs() {
			b.wmu.Lock()
			pr := b.peers[id]
			var down, phone int
			if pr != nil {
				down, phone = pr.seq, pr.phone
			}
			b.wmu.Unlock()
			b.t.mu.Lock()
			p := b.t.phones[phone]
			b.t.mu.Unlock()
			if p == nil || p.c.Inst == b.c.Inst || len(ts) == 3 {
				continue
			}
			p.wmu.Lock()
			up := p.seq
			p.wmu.Unlock()
			ts = append(ts, target{b, p, id, up, down})
		}
	}
	if len(ts) == 0 {
		return
	}
	var note []string
	for _, t := range ts {
		note = append(note, fmt.Sprintf("phone %d on %d, binary %d on %d", t.p.c.ID, t.p.c.Inst, t.b.c.ID, t.b.c.Inst))
	}
	i := d.h.fault(Fault{Kind: s.Kind, Target: ts[0].p.c.ID, Start: d.f.now(), Note: strings.Join(note, "; ")})
	subj := func(inst int) string { return "relay.i." + instanceID(inst) + ".m." + rogueID }
	for _, t := range ts {
		forged, _ := json.Marshal(Payload{Tenant: t.b.t.sid, Phone: t.p.c.ID, Binary: t.b.c.ID, Sent: int64(d.f.now()), Forged: true})
		for k := 1; k <= 2; k++ {
			_ = d.nc.Publish(subj(t.b.c.Inst), attacks.ForgeLink(linkUp, 0, uint64(t.up+k), 0, t.b.t.sid, t.id, forged))
			_ = d.nc.Publish(subj(t.p.c.Inst), attacks.ForgeLink(linkDown, 0, uint64(t.down+k), 0, t.b.t.sid, t.id, forged))
		}
	}
	_ = d.nc.Flush()
	time.Sleep(s.Dur / 2)
	for _, t := range ts {
		_ = d.nc.Publish(subj(t.b.c.Inst), attacks.ForgeLink(linkLeave, 0, 0, 4999, t.b.t.sid, t.id, nil))
		_ = d.nc.Publish(subj(t.p.c.Inst), attacks.ForgeLink(linkEvict, 0, 0, 4404, t.b.t.sid, t.id, nil))
	}
	_ = d.nc.Flush()
	time.Sleep(s.Dur / 2)
	d.h.faultEnded(i, d.f.now(), "")
}
