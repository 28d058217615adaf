package attacks

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Lease split brain: instance a, which owns a server-id, is cut off from
// NATS (a TCP forwarder between it and NATS is cut) while its binary and a
// phone on a stay connected to it.
//
// Blip: a cut shorter than the lease changes no claim. The local pair keeps
// working, no local phone is closed 4404, the claim stays a's (a binary for
// the server-id on another instance gets 4409); a's cross-instance phone is
// closed 1011 (its frames may have been lost while a's NATS link was down),
// never 4404, even when it sends a frame right after a reconnects.
//
// Partition: a cut longer than the lease. The pair on a keeps working (the
// availability choice: local pairs do not depend on NATS); claims on other
// instances are refused 1013 until a's lease has run out, never earlier;
// then a second binary claims the server-id on b, and for the rest of the
// partition two binaries serve it (the documented residual risk). When the
// partition heals, a's next refresh finds its claim replaced and a drops
// its stale slot: its binary 1011, its phone 4404, within
// clusterSplitBrainConverge. Afterwards exactly one binary serves the
// server-id (claims anywhere get 4409; new phones on any instance reach
// the second binary), no phone gets frames from two binaries, and every
// instance's binaries, phones, grace slots and queued bytes return to 0.
func clusterSplitBrain() Scenario {
	return Scenario{
		ID:        "ATK-CLUSTER-SPLIT-BRAIN",
		Title:     "An owner cut off from NATS past its lease drops its stale slot (binary 1011, phones 4404) when the partition heals; a shorter blip changes no claim",
		Threats:   []string{"TM-CLU-5"},
		Mode:      LocalOnly,
		LocalOnly: "it cuts an instance's link to NATS past the lease: that needs control of the network between a deployment's instances and NATS",
		Run:       runClusterSplitBrain,
	}
}

const (
	// clusterSplitBrainBlip is the short cut: well under the lease (a
	// refresh every lease/3 keeps the claim young).
	clusterSplitBrainBlip = 300 * time.Millisecond
	// clusterSplitBrainConverge bounds how long after the partition heals
	// the stale owner may still serve: its NATS reconnect (250 ms between
	// attempts) and one refresh (kicked by the reconnect, at most lease/3
	// later otherwise), with slack for a loaded machine.
	clusterSplitBrainConverge = clusterLease + 2*time.Second
	// clusterSplitBrainGrace is the stage's --grace-period, so the second
	// binary's slot is gone soon after the clients close.
	clusterSplitBrainGrace = 500 * time.Millisecond
)

func runClusterSplitBrain(ctx context.Context, t *Target) Result {
	l, skip := localOrSkip(t)
	if skip != nil {
		return *skip
	}
	if l.NATSURL == "" {
		return Skipf("cluster scenarios need a NATS server (go test ./attacks starts one)")
	}
	link, err := NewCutLink(l.NATSURL)
	if err != nil {
		return Failf("cut link: %v", err)
	}
	defer link.Close()
	st, skip := newClusterStageVia(ctx, t, []string{link.URL(), "", ""}, "--grace-period", clusterSplitBrainGrace.String())
	if skip != nil {
		return *skip
	}
	defer st.Close()
	a := st.procs[0]
	sid := newServerID()
	x1, x1r, code, err := st.binary(ctx, 0, sid)
	if err != nil || code != 0 {
		return Failf("binary on instance a: err %v, close %d", err, code)
	}
	pa, par, paID, err := st.phone(ctx, 0, sid, x1r)
	if err != nil {
		return Failf("a's local phone: %v", err)
	}
	pb, pbr, _, err := st.phone(ctx, 1, sid, x1r)
	if err != nil {
		return Failf("a's phone on b: %v", err)
	}
	var x1seen []envelope
	rt := 0
	roundTrip := func(when string) error {
		rt++
		if err := sendTo(ctx, x1, paID, map[string]any{"from": "x1", "rt": rt}); err != nil {
			return fmt.Errorf("%s: a's binary: %v", when, err)
		}
		if m := par.next(5 * time.Second); string(m) != fmt.Sprintf(`{"from":"x1","rt":%d}`, rt) {
			return fmt.Errorf("%s: a's local phone got %q, want its binary's frame %d (closed %d)", when, m, rt, par.closeCode(0))
		}
		if err := writeJSON(ctx, pa, map[string]int{"back": rt}); err != nil {
			return fmt.Errorf("%s: a's local phone: %v", when, err)
		}
		want := fmt.Sprintf(`{"back":%d}`, rt)
		if _, ok := x1r.waitEnvelope(5*time.Second, &x1seen, func(e envelope) bool { return e.ConnID == paID && string(e.Frame) == want }); !ok {
			return fmt.Errorf("%s: a's binary never got its local phone's reply (closed %d)", when, x1r.closeCode(0))
		}
		return nil
	}

	// Blip.
	reconnects := logEvents(a, "cluster_reconnected")
	link.Cut()
	time.Sleep(clusterSplitBrainBlip)
	link.Heal()
	if !pollUntil(ctx, 5*time.Second, 20*time.Millisecond, func() bool { return logEvents(a, "cluster_reconnected") > reconnects }) {
		return Failf("blip: instance a never reconnected to NATS within 5s of the %v cut healing", clusterSplitBrainBlip)
	}
	// a's remote phone speaks at once, before its home has noticed that
	// a dropped it: a must answer that its frames were lost, not that its
	// binary is gone.
	_ = writeJSON(ctx, pb, map[string]string{"after": "blip"})
	if c := pbr.closeCode(clusterLease + 3*time.Second); c != 1011 {
		return Failf("blip: a's cross-instance phone on b closed %d, want 1011 (frames may have been lost while a's NATS link was down; never 4404 from a blip)", c)
	}
	if c := par.closeCode(0); c != 0 {
		return Failf("blip: a's local phone was closed %d by a %v NATS blip", c, clusterSplitBrainBlip)
	}
	if err := roundTrip("after a blip"); err != nil {
		return Failf("%v", err)
	}
	if n := logEvents(a, "cluster_claim_lost"); n != 0 {
		return Failf("blip: a %v NATS blip (lease %v) lost a's claim", clusterSplitBrainBlip, clusterLease)
	}
	if _, _, code, err := st.binary(ctx, 2, sid); err != nil || code != 4409 {
		return Failf("blip: a binary for the server-id on c: err %v, close %d; want 4409 (a's claim and live binary kept)", err, code)
	}

	// Partition, longer than the lease.
	link.Cut()
	cutAt := time.Now()
	healed := false
	defer func() {
		if !healed {
			link.Heal()
		}
	}()
	if err := roundTrip("partitioned"); err != nil {
		return Failf("%v (a pair on one instance must keep working without NATS)", err)
	}
	refused := 0
	var x2r *reader
	var took time.Duration
	for deadline := cutAt.Add(clusterLease + clusterDeadOwnerSlack); ; {
		if time.Now().After(deadline) {
			return Failf("partition: no binary could claim the server-id on b within %v of a's cut (lease %v); %d claims refused", clusterLease+clusterDeadOwnerSlack, clusterLease, refused)
		}
		_, r, code, err := st.binary(ctx, 1, sid)
		if err != nil {
			return Failf("partition: claim on b: %v", err)
		}
		if code == 0 {
			x2r, took = r, time.Since(cutAt)
			break
		}
		if code != 1013 {
			return Failf("partition: claim on b while a's lease may run: close %d, want 1013", code)
		}
		refused++
		time.Sleep(100 * time.Millisecond)
	}
	x2 := st.conns[len(st.conns)-1]
	// a refreshed at most lease/3 before the cut, so its claim lived at
	// least 2/3 of a lease after it.
	if took < clusterLease*2/3 {
		return Failf("partition: b granted a's server-id %v after a's cut, before a's lease (%v) could have run out", took.Round(time.Millisecond), clusterLease)
	}
	// The documented window: both binaries serve their own phones.
	if err := roundTrip("split brain"); err != nil {
		return Failf("%v", err)
	}
	_, pcr, pcID, err := st.phone(ctx, 2, sid, x2r)
	if err != nil {
		return Failf("partition: a phone on c for the second binary: %v", err)
	}

	// Heal.
	link.Heal()
	healed = true
	healAt := time.Now()
	if c := x1r.closeCode(clusterSplitBrainConverge); c != 1011 {
		return Failf("after healing: a's stale binary closed %d within %v, want 1011 (a must drop the slot whose claim was replaced)", c, clusterSplitBrainConverge)
	}
	if c := par.closeCode(clusterSplitBrainConverge - time.Since(healAt)); c != 4404 {
		return Failf("after healing: a's local phone closed %d, want 4404", c)
	}
	converged := time.Since(healAt)

	// Exactly one binary serves the server-id.
	if c := x2r.closeCode(0); c != 0 {
		return Failf("after healing: the second binary was closed %d", c)
	}
	for _, i := range []int{0, 2} {
		if _, _, code, err := st.binary(ctx, i, sid); err != nil || code != 4409 {
			return Failf("after healing: a binary for the server-id on instance %c: err %v, close %d; want 4409", 'a'+i, err, code)
		}
	}
	_, pa2r, pa2ID, err := st.phone(ctx, 0, sid, x2r)
	if err != nil {
		return Failf("after healing: a new phone on a: %v", err)
	}
	_ = sendTo(ctx, x1, paID, map[string]string{"from": "x1-late"}) // closed: goes nowhere
	for _, p := range []struct {
		id string
		r  *reader
	}{{pcID, pcr}, {pa2ID, pa2r}} {
		if err := sendTo(ctx, x2, p.id, map[string]string{"from": "x2", "to": p.id}); err != nil {
			return Failf("after healing: the second binary: %v", err)
		}
		if m := p.r.next(5 * time.Second); string(m) != fmt.Sprintf(`{"from":"x2","to":%q}`, p.id) {
			return Failf("after healing: phone %s got %q, want the second binary's frame", p.id, m)
		}
	}
	for _, r := range []*reader{pcr, pa2r} {
		if m := r.next(300 * time.Millisecond); m != nil {
			return Failf("after healing: a phone of the second binary got another frame: %q", m)
		}
	}
	binaries := 0.0
	for i, p := range st.procs {
		v, err := p.Metric(ctx, "relay_binaries")
		if err != nil {
			return Failf("metrics of %c: %v", 'a'+i, err)
		}
		binaries += v
	}
	if binaries != 1 {
		return Failf("after healing: relay_binaries sums to %v over the three instances, want 1", binaries)
	}
	for _, series := range []string{"relay_binaries", "relay_grace_slots", "relay_phones"} {
		if v, err := a.Metric(ctx, series); err != nil || v != 0 {
			return Failf("after healing: a's %s = %v (err %v), want 0: its stale slot is gone", series, v, err)
		}
	}

	// Everything returns to zero once the clients are gone.
	for _, c := range st.conns {
		_ = c.CloseNow()
	}
	for i, p := range st.procs {
		var last string
		if !pollUntil(ctx, clusterSplitBrainGrace+5*time.Second, 50*time.Millisecond, func() bool {
			last = ""
			for _, series := range []string{"relay_binaries", "relay_phones", "relay_grace_slots", mQueuedBytes} {
				if v, err := p.Metric(ctx, series); err != nil || v != 0 {
					last += fmt.Sprintf(" %s=%v", series, v)
				}
			}
			return last == ""
		}) {
			return Failf("instance %c with every client gone:%s (want 0)", 'a'+i, last)
		}
	}
	return Passf("blip of %v: claim kept, local pair untouched, a's remote phone closed 1011, a claim elsewhere 4409; partition: local pair kept working, claims on b refused 1013 %d times, granted %v after the cut (lease %v); healed: a dropped its stale slot (binary 1011, phone 4404) %v after the heal (bound %v), then one binary served the server-id (4409 on a and c, new phones on a and c reach it), every gauge back to 0",
		clusterSplitBrainBlip, refused, took.Round(10*time.Millisecond), clusterLease, converged.Round(10*time.Millisecond), clusterSplitBrainConverge)
}

// logEvents counts p's log lines with event ev.
func logEvents(p *Process, ev string) int {
	n := 0
	for _, line := range p.Log() {
		if !strings.Contains(line, ev) {
			continue
		}
		var m struct {
			Event string `json:"event"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Event == ev {
			n++
		}
	}
	return n
}
