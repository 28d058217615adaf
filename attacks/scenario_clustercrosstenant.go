package attacks

import (
	"context"
	"time"
)

// Cross-tenant routing across a cluster: two tenants whose server-ids
// differ only by '~' and '.' ("tenant~X", "tenant.X": NATS KV keys cannot
// hold '~', and a naive substitution would give both one claim), binaries
// on different instances, phones of both spread over the instances. The
// second tenant's claim must neither be refused nor take the first
// tenant's slot; each binary addresses the other tenant's conn_ids
// (learned out of band, the worst case) and nothing arrives; each binary
// still reaches every one of its own phones, across instances both ways,
// and only those, and a phone of each joining afterwards finds its own
// tenant's binary.
//
// Locally it starts a 3-instance cluster of its own. Remotely it needs two
// instances of one deployed cluster (relay attack --target A --peer-target
// B): tenant 1's binary on A with a phone on each, tenant 2's on B with a
// phone on each; without --peer-target it is skipped.
const clusterCrossTenantBounds = "with --peer-target only: 2 binaries and 6 phones over the two instances, about 12 small frames, held for two --cluster-lease (4.8 s with the default 2.4s; relay attack --cluster-lease D changes it)"

func clusterCrossTenant() Scenario {
	return Scenario{
		ID:      "ATK-CLUSTER-CROSS-TENANT",
		Title:   "Across a cluster's instances, look-alike server-ids stay distinct tenants, each binary reaches its own phones on every instance and no other tenant's",
		Threats: []string{"TM-CLU-1"},
		Mode:    RemoteSafe,
		Bounds:  clusterCrossTenantBounds,
		Run:     runClusterCrossTenant,
	}
}

// noPeerReason is the Skip of a cross-instance scenario against a remote
// target without a second instance to reach.
const noPeerReason = "needs a second instance of the same cluster: relay attack --target A --peer-target B"

func runClusterCrossTenant(ctx context.Context, t *Target) Result {
	if t.Local == nil {
		if t.Peer == nil {
			return Skipf("%s", noPeerReason)
		}
		return runClusterCrossTenantPeers(ctx, t, t.Peer, tuned(t.ClusterLease, defaultClusterLease))
	}
	return runClusterCrossTenantLocal(ctx, t)
}

// runClusterCrossTenantPeers is the scenario over two instances a and b of
// one cluster whose lease is lease: each tenant's binary on its own
// instance, a phone of each tenant on both.
func runClusterCrossTenantPeers(ctx context.Context, a, b *Target, lease time.Duration) Result {
	x := randHex(12)
	s1, s2 := "tenant~"+x, "tenant."+x
	t1, err := claimOn(ctx, a, s1)
	if err != nil {
		return Failf("tenant 1's binary on --target: %v", err)
	}
	defer t1.Close()
	// A phone on the other instance first: it reaches the binary only
	// through the cluster (cross-instance routing, phone to binary).
	if _, err := t1.addPhoneOn(b); err != nil {
		return Failf("tenant 1: a phone on the peer instance could not reach its binary on --target (cross-instance routing): %v", err)
	}
	if _, err := t1.addPhoneOn(a); err != nil {
		return Failf("tenant 1: a phone on the binary's own instance: %v", err)
	}
	t2, err := claimOn(ctx, b, s2)
	if err != nil {
		return Failf("tenant 2 (server-id differing by '~' vs '.') on --peer-target: %v", err)
	}
	defer t2.Close()
	if _, err := t2.addPhoneOn(a); err != nil {
		return Failf("tenant 2's binary (server-id differing by '~' vs '.') on the peer instance: a phone on --target could not reach it: %v (close %d)", err, t2.BinR.closeCode(0))
	}
	if _, err := t2.addPhoneOn(b); err != nil {
		return Failf("tenant 2: a phone on the binary's own instance: %v", err)
	}
	return crossTenantChecks(t1, t2, 2*lease, "--target and --peer-target")
}

// claimOn claims serverID with a binary on t.
func claimOn(ctx context.Context, t *Target, serverID string) (*session, error) {
	c, _, err := t.dial(ctx, "/v1/server", binaryHeaders(serverID))
	if err != nil {
		return nil, err
	}
	return &session{t: t, ctx: ctx, ServerID: serverID, Bin: c, BinR: startReader(ctx, c)}, nil
}

// addPhoneOn is addPhone with the phone on instance via (the binary may
// be on another). The phone reads from then on, so it answers the
// heartbeat's pings however long the rest of the setup takes.
func (s *session) addPhoneOn(via *Target) (*phone, error) {
	on := *s
	on.t, on.Phones = via, nil
	p, err := on.addPhone(nil)
	s.Seen = on.Seen
	if p != nil {
		p.StartReading()
		s.Phones = append(s.Phones, p)
	}
	return p, err
}

// crossTenantChecks is the attack once both tenants hold their slots: each
// binary addresses the other tenant's phones, then, after wait (enough
// lease refreshes for a claim the look-alike took over to be lost), each
// binary must still be up and reach exactly its own phones.
func crossTenantChecks(t1, t2 *session, wait time.Duration, where string) Result {
	ctx := t1.ctx
	for _, p := range t1.Phones {
		if err := sendTo(ctx, t2.Bin, p.ConnID, map[string]string{"leak": "tenant2"}); err != nil {
			return Failf("tenant 2's binary: %v", err)
		}
	}
	for _, p := range t2.Phones {
		if err := sendTo(ctx, t1.Bin, p.ConnID, map[string]string{"leak": "tenant1"}); err != nil {
			return Failf("tenant 1's binary: %v", err)
		}
	}
	time.Sleep(wait)
	if c := t1.BinR.closeCode(0); c != 0 {
		return Failf("tenant 1's binary was closed %d after tenant 2 claimed a look-alike server-id", c)
	}
	if c := t2.BinR.closeCode(0); c != 0 {
		return Failf("tenant 2's binary was closed %d", c)
	}
	for _, tn := range []struct {
		s    *session
		name string
	}{{t1, "tenant1"}, {t2, "tenant2"}} {
		for k, p := range tn.s.Phones {
			if err := sendTo(ctx, tn.s.Bin, p.ConnID, map[string]string{"own": tn.name}); err != nil {
				return Failf("%s's binary: %v", tn.name, err)
			}
			if m := p.StartReading().next(5 * time.Second); string(m) != `{"own":"`+tn.name+`"}` {
				return Failf("%s's phone %d got %q first, want its own binary's frame (a foreign frame, or nothing)", tn.name, k, m)
			}
		}
	}
	for _, s := range []*session{t1, t2} {
		for k, p := range s.Phones {
			if m := p.StartReading().next(300 * time.Millisecond); m != nil {
				return Failf("phone %d of %s got a frame it was not sent: %q", k, s.ServerID, m)
			}
		}
	}
	// A phone joining now, on the other tenant's instance, still finds its
	// own tenant's binary: the second claim took nothing from the first.
	// Claims are not rewritten while they hold, so a claim shared by the
	// two server-ids would show here, not in a refresh.
	cross := len(t1.Phones) + len(t2.Phones)
	if _, err := t1.addPhoneOn(t2.t); err != nil {
		return Failf("a new phone of tenant 1, after tenant 2's claim: %v", err)
	}
	if _, err := t2.addPhoneOn(t1.t); err != nil {
		return Failf("a new phone of tenant 2: %v", err)
	}
	return Passf("tenants %q and %q (one KV-illegal character apart) both hold their slots on %s; %d cross-addressed frames delivered nowhere; each binary reached its own %d phones, on other instances too, only, and a phone of each joining afterwards found its own binary",
		"tenant~…", "tenant.…", where, cross, len(t1.Phones)-1)
}

// runClusterCrossTenantLocal is the scenario on a 3-instance cluster of its
// own (a, b, c): tenant 1's binary on a with phones on b and c, tenant 2's
// on b with phones on a and c. Each claim is confirmed in its instance's
// log before the phones join.
func runClusterCrossTenantLocal(ctx context.Context, t *Target) Result {
	st, skip := newClusterStage(ctx, t, 3)
	if skip != nil {
		return *skip
	}
	defer st.Close()
	x := randHex(12)
	s1, s2 := "tenant~"+x, "tenant."+x
	b1, b1r, code, err := st.binary(ctx, 0, s1)
	if err != nil || code != 0 {
		return Failf("tenant 1's binary on instance a: err %v, close %d", err, code)
	}
	t1 := &session{t: st.relays[0], ctx: ctx, ServerID: s1, Bin: b1, BinR: b1r}
	for _, i := range []int{1, 2} {
		if _, err := t1.addPhoneOn(st.relays[i]); err != nil {
			return Failf("tenant 1: a phone on instance %c: %v", 'a'+i, err)
		}
	}
	defer t1.Close()
	b2, b2r, code, err := st.binary(ctx, 1, s2)
	if err != nil || code != 0 {
		return Failf("tenant 2's binary (server-id differing by '~' vs '.') on instance b refused: err %v, close %d", err, code)
	}
	t2 := &session{t: st.relays[1], ctx: ctx, ServerID: s2, Bin: b2, BinR: b2r}
	for _, i := range []int{0, 2} {
		if _, err := t2.addPhoneOn(st.relays[i]); err != nil {
			return Failf("tenant 2: a phone on instance %c: %v", 'a'+i, err)
		}
	}
	defer t2.Close()
	return crossTenantChecks(t1, t2, 2*clusterLease, "instances a and b of 3")
}
