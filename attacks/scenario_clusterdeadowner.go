package attacks

import (
	"context"
	"time"
)

// A dead owner holding a slot: the instance that owns a server-id is
// killed (SIGKILL: no shutdown, no release of its claims). Its claim must
// not outlive it by more than --cluster-lease: the daemon, reconnecting
// through the load balancer to another instance, is refused 1013 (retry)
// while the lease runs, then holds the slot; the dead owner's phones on
// other instances are closed (1011), and new phones reach the new binary.
func clusterDeadOwner() Scenario {
	return Scenario{
		ID:        "ATK-CLUSTER-DEAD-OWNER",
		Title:     "A killed owner instance frees its server-ids within --cluster-lease; its remote phones are closed 1011",
		Threats:   []string{"TM-CLU-2"},
		Mode:      LocalOnly,
		LocalOnly: "it kills an instance (SIGKILL) and waits for its lease to expire: that would take down a deployed instance",
		Run:       runClusterDeadOwner,
	}
}

// clusterDeadOwnerSlack is what the reclaim may take beyond the lease:
// JetStream's expiry timer, the claimant's retry interval, a loaded CI box.
const clusterDeadOwnerSlack = 5 * time.Second

func runClusterDeadOwner(ctx context.Context, t *Target) Result {
	st, skip := newClusterStage(ctx, t, 3)
	if skip != nil {
		return *skip
	}
	defer st.Close()
	sid := newServerID()
	_, br, code, err := st.binary(ctx, 0, sid)
	if err != nil || code != 0 {
		return Failf("binary on instance a: err %v, close %d", err, code)
	}
	_, pr, _, err := st.phone(ctx, 1, sid, br)
	if err != nil {
		return Failf("%v", err)
	}
	st.procs[0].Kill()
	killed := time.Now()
	refused := 0
	deadline := killed.Add(clusterLease + clusterDeadOwnerSlack)
	for time.Now().Before(deadline) {
		_, nbr, code, err := st.binary(ctx, 2, sid)
		if err != nil {
			return Failf("claim on instance c: %v", err)
		}
		if code == 0 {
			took := time.Since(killed)
			if c := pr.closeCode(clusterDeadOwnerSlack); c != 1011 && c != 4404 {
				return Failf("the dead owner's phone on instance b: close %d, want 1011 (owner gone) or 4404 (claim gone)", c)
			}
			_, _, _, err := st.phone(ctx, 1, sid, nbr)
			if err != nil {
				return Failf("after the reclaim: %v", err)
			}
			return Passf("owner killed; claims on another instance refused 1013 %d times, then held %v after the kill (lease %v); its remote phone closed; a new phone reaches the new binary",
				refused, took.Round(10*time.Millisecond), clusterLease)
		}
		if code != 1013 {
			return Failf("claim on instance c while the dead owner's lease runs: close %d, want 1013", code)
		}
		refused++
		time.Sleep(200 * time.Millisecond)
	}
	return Failf("the killed owner still holds the server-id %v after the kill (lease %v): %d claims refused", clusterLease+clusterDeadOwnerSlack, clusterLease, refused)
}
