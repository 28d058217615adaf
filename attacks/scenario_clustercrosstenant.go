package attacks

import (
	"context"
	"time"
)

// Cross-tenant routing across a cluster: two tenants whose server-ids
// differ only by '~' and '.' ("tenant~X", "tenant.X": NATS KV keys cannot
// hold '~', and a naive substitution would give both one claim), binaries
// on different instances, phones of both spread over all three. The second
// tenant's claim must neither be refused nor take the first tenant's slot;
// each binary addresses the other tenant's conn_ids (learned out of band,
// the worst case) and nothing arrives; each binary still reaches every one
// of its own phones, and only those.
func clusterCrossTenant() Scenario {
	return Scenario{
		ID:      "ATK-CLUSTER-CROSS-TENANT",
		Title:   "Across a 3-instance cluster, look-alike server-ids stay distinct tenants and no binary reaches another tenant's phones",
		Threats: []string{"TM-CLU-1"},
		Mode:    LocalOnly,
		Run:     runClusterCrossTenant,
	}
}

func runClusterCrossTenant(ctx context.Context, t *Target) Result {
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
	var ids1 []string
	var phones1 []*reader
	for _, i := range []int{1, 2} {
		_, r, id, err := st.phone(ctx, i, s1, b1r)
		if err != nil {
			return Failf("tenant 1: %v", err)
		}
		ids1, phones1 = append(ids1, id), append(phones1, r)
	}
	b2, b2r, code, err := st.binary(ctx, 1, s2)
	if err != nil || code != 0 {
		return Failf("tenant 2's binary (server-id differing by '~' vs '.') on instance b refused: err %v, close %d", err, code)
	}
	var ids2 []string
	var phones2 []*reader
	for _, i := range []int{0, 2} {
		_, r, id, err := st.phone(ctx, i, s2, b2r)
		if err != nil {
			return Failf("tenant 2: %v", err)
		}
		ids2, phones2 = append(ids2, id), append(phones2, r)
	}
	for _, id := range ids1 {
		if err := sendTo(ctx, b2, id, map[string]string{"leak": "tenant2"}); err != nil {
			return Failf("tenant 2's binary: %v", err)
		}
	}
	for _, id := range ids2 {
		if err := sendTo(ctx, b1, id, map[string]string{"leak": "tenant1"}); err != nil {
			return Failf("tenant 1's binary: %v", err)
		}
	}
	// Two lease refreshes: a claim the look-alike took over would be lost
	// by tenant 1's owner by now.
	time.Sleep(2 * clusterLease)
	if c := b1r.closeCode(0); c != 0 {
		return Failf("tenant 1's binary was closed %d after tenant 2 claimed a look-alike server-id", c)
	}
	if c := b2r.closeCode(0); c != 0 {
		return Failf("tenant 2's binary was closed %d", c)
	}
	for k, id := range ids1 {
		if err := sendTo(ctx, b1, id, map[string]string{"own": "tenant1"}); err != nil {
			return Failf("tenant 1's binary: %v", err)
		}
		if m := phones1[k].next(5 * time.Second); string(m) != `{"own":"tenant1"}` {
			return Failf("tenant 1's phone %d got %q first, want its own binary's frame (a foreign frame, or nothing)", k, m)
		}
	}
	for k, id := range ids2 {
		if err := sendTo(ctx, b2, id, map[string]string{"own": "tenant2"}); err != nil {
			return Failf("tenant 2's binary: %v", err)
		}
		if m := phones2[k].next(5 * time.Second); string(m) != `{"own":"tenant2"}` {
			return Failf("tenant 2's phone %d got %q first, want its own binary's frame", k, m)
		}
	}
	for k, r := range append(phones1, phones2...) {
		if m := r.next(300 * time.Millisecond); m != nil {
			return Failf("phone %d got a frame it was not sent: %q", k, m)
		}
	}
	return Passf("tenants %q and %q (one KV-illegal character apart) both hold their slots on instances a and b; 4 cross-addressed frames over 3 instances delivered nowhere; each binary reached its own 2 remote phones only", "tenant~…", "tenant.…")
}
