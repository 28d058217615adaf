package cluster

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Claims are not refreshed, so nothing expires them: a claim whose
// incarnation ended without releasing it (its instance crashed, or was
// revoked and has not come back) stays until it is taken over or swept.
// The instance whose revocation of a session won sweeps, once per death:
// sweepAfter later (so that an owner back from a blip re-asserts its
// claims, one write each, instead of finding them deleted and creating
// them again), it reads the whole bucket once and deletes, each
// revision-checked, the claims whose incarnation has ended. Deaths during
// a sweep's wait share it. Should the sweeper die before it runs, its own
// revoker's sweep finds those claims too: a sweep removes every ended
// incarnation's claims, not only the one that scheduled it.

// sweepAfter is how long after a revocation its sweep runs.
func (c *Cluster) sweepAfter() time.Duration { return 4 * c.opts.Lease }

// scheduleSweep runs a sweep sweepAfter from now, unless one is pending.
func (c *Cluster) scheduleSweep() {
	c.sweepMu.Lock()
	defer c.sweepMu.Unlock()
	if c.sweepPending {
		return
	}
	c.sweepPending = true
	time.AfterFunc(c.sweepAfter(), func() {
		c.sweepMu.Lock()
		c.sweepPending = false
		c.sweepMu.Unlock()
		select {
		case <-c.stop:
			return
		default:
		}
		c.sweep()
	})
}

// sweep deletes every claim in the bucket whose owner's incarnation has
// ended, and reports how many it deleted.
func (c *Cluster) sweep() int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kv, err := c.bucket(ctx)
	if err != nil {
		return 0
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return 0
	}
	defer func() { _ = w.Stop() }()
	// ended caches ownerState per (owner, inc) for this pass.
	ended := map[[2]string]bool{}
	type stale struct {
		key string
		rev uint64
	}
	var del []stale
	for e := range w.Updates() {
		if e == nil {
			break // the initial values are in: the whole bucket as of now
		}
		if !strings.HasPrefix(e.Key(), "s") {
			continue
		}
		var v claimValue
		if json.Unmarshal(e.Value(), &v) != nil || v.V != claimVersion || keyFor(v.ServerID) != e.Key() {
			continue // not a claim this code wrote: never routed by, left alone
		}
		k := [2]string{v.Owner, v.Inc}
		gone, ok := ended[k]
		if !ok {
			st, _, err := c.ownerState(ctx, kv, v.Owner, v.Inc)
			gone = err == nil && st == ownerGone
			ended[k] = gone
		}
		if gone {
			del = append(del, stale{e.Key(), e.Revision()})
		}
	}
	_ = w.Stop()
	n := 0
	for _, s := range del {
		if remove(ctx, kv, s.key, s.rev) == nil {
			n++
		}
	}
	if n > 0 {
		c.m.claims.WithLabelValues("swept").Add(float64(n))
		c.log.Info("claims of ended instances deleted", "event", "cluster_claims_swept", "count", n)
	}
	return n
}

// ownerEnded closes this instance's proxies of a peer whose session ended
// (revoked, or deleted by its clean shutdown): their binary is gone, as a
// grace expiry would say (4404).
func (c *Cluster) ownerEnded(peer string) {
	c.reachable(peer)
	c.rl.OwnerGone(peer)
}
