package cluster

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pyrycode/relay/internal/relay"
)

// Claims live in the JetStream KV bucket <name>-claims, one key per
// server-id:
//
//	key:   "s" + hex(server-id)
//	value: {"v":1,"server_id":"<id>","owner":"<instance>","epoch":N,"grace":false}
//
// KV keys cannot hold '~' (which server-ids may), and a naive substitution
// would let two server-ids share a key, i.e. one tenant's phones reach
// another's binary. Hex is injective, and the value repeats the raw
// server-id, which every reader checks (TM-CLU-1).
//
// The bucket keeps one revision per key (History 1) and every revision
// expires after the lease (MaxAge = --cluster-lease). The owner rewrites
// its keys every lease/3 with a revision-checked Update, so a live owner's
// claim never expires, and a crashed owner's claim disappears at most one
// lease after its last refresh: that is how long a slot outlives its
// owner's crash (TM-CLU-2).
//
// epoch is the revision at which the claim was created (0 in the create
// itself, which cannot know its own revision: the entry's revision is the
// epoch then). Epochs grow, so a phone that joined under an older claim of
// the same server-id can be told apart from one under the current one.

// claimValue is one KV value.
type claimValue struct {
	V        int    `json:"v"`
	ServerID string `json:"server_id"`
	Owner    string `json:"owner"`
	Epoch    uint64 `json:"epoch,omitempty"`
	Grace    bool   `json:"grace,omitempty"`
}

// keyFor is the KV key of a server-id.
func keyFor(serverID string) string { return "s" + hex.EncodeToString([]byte(serverID)) }

// bucketName is the claims bucket of cluster name.
func bucketName(name string) string { return name + "-claims" }

// lease is a claim this instance owns.
type lease struct {
	epoch uint64
	rev   uint64 // last revision written or read
	grace bool
	dirty bool // grace changed since the last write
}

// claimEntry is a decoded KV entry.
type claimEntry struct {
	claimValue
	rev uint64
}

// get reads serverID's claim; found is false when there is none.
func (c *Cluster) get(ctx context.Context, kv jetstream.KeyValue, serverID string) (e claimEntry, found bool, err error) {
	ent, err := kv.Get(ctx, keyFor(serverID))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return claimEntry{}, false, nil
	}
	if err != nil {
		return claimEntry{}, false, err
	}
	if e.claimValue, err = parseClaim(ent.Value(), serverID); err != nil {
		c.m.claims.WithLabelValues("invalid").Inc()
		return claimEntry{}, false, err
	}
	e.rev = ent.Revision()
	if e.Epoch == 0 {
		e.Epoch = e.rev
	}
	return e, true, nil
}

// parseClaim reads serverID's claim value. A value this code did not
// write for this server-id (an injected value, or a key collision) is
// refused: never route by it (TM-CLU-1, TM-CLU-4).
func parseClaim(b []byte, serverID string) (claimValue, error) {
	var v claimValue
	if err := json.Unmarshal(b, &v); err != nil || v.V != 1 || v.ServerID != serverID || !ValidToken(v.Owner) {
		return claimValue{}, fmt.Errorf("%w: claim value", ErrWire)
	}
	return v, nil
}

func (c *Cluster) value(serverID string, epoch uint64, grace bool) []byte {
	b, _ := json.Marshal(claimValue{V: 1, ServerID: serverID, Owner: c.self, Epoch: epoch, Grace: grace})
	return b
}

// Acquire implements relay.Backplane. Every grant is a create or a
// revision-checked update of the claim, and gives it a new epoch (the
// revision written), also for a new binary on the instance that owns it
// already: so of two instances that read the same claim and each want to
// give it to a new binary, exactly one write succeeds, and the other reads
// the claim again and finds the winner's binary (4409 when it lives).
func (c *Cluster) Acquire(ctx context.Context, serverID string, probe bool) (relay.ClaimOutcome, error) {
	kv, err := c.bucket(ctx)
	if err != nil {
		c.m.claims.WithLabelValues("unavailable").Inc()
		return 0, relay.ErrClusterUnavailable
	}
	key := keyFor(serverID)
	// probed is the claim (owner, epoch) whose binary its owner reported
	// dead: it may be replaced even though its owner refreshed it meanwhile
	// (the refresh changes the revision, not the epoch; a new binary there
	// would have changed the epoch).
	var probed *claimEntry
	for attempt := 0; attempt < 6; attempt++ {
		rev, err := kv.Create(ctx, key, c.value(serverID, 0, false))
		if err == nil {
			c.granted(serverID, rev, "created")
			return relay.ClaimGranted, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			break
		}
		e, found, err := c.get(ctx, kv, serverID)
		if err != nil {
			break
		}
		if !found {
			continue // expired or released since: create again
		}
		c.mu.Lock()
		l := c.leases[serverID]
		c.mu.Unlock()
		how := "reclaimed"
		switch {
		case e.Owner == c.self && l != nil && l.epoch == e.Epoch:
			// Ours: a new binary for this instance's slot (its grace, or
			// a binary here found dead). The write still goes through the
			// store, so a rival elsewhere that read the claim fails.
			how = "local"
		case e.Owner == c.self:
			how = "stale" // a claim this instance no longer serves
		case l != nil:
			// The store gave the server-id to another instance while this
			// one still served it (it was cut off from NATS): the store
			// wins, the slot here goes (binary 1011, phones 4404), and the
			// claim is decided against the new owner below.
			c.lost(serverID, l.epoch, e.Owner, e.Epoch)
			continue
		case e.Grace:
			// Another instance's slot in grace: its owner gives it a
			// binary only by a revision-checked write too, so if both
			// write, one fails.
		case probed != nil && probed.Owner == e.Owner && probed.Epoch == e.Epoch:
			how = "takeover"
		case !probe:
			return relay.ClaimHeld, nil
		default:
			res, err := c.probe(ctx, e.Owner, serverID)
			if err != nil {
				// The owner does not answer: crashed, or cut off from NATS.
				// Its lease ends the claim if it is gone; until then a
				// newcomer must not take a slot a live binary may hold.
				c.m.claims.WithLabelValues("unavailable").Inc()
				return 0, relay.ErrClusterUnavailable
			}
			if res == relay.ProbeLive {
				c.m.claims.WithLabelValues("conflict").Inc()
				return relay.ClaimConflict, nil
			}
			probed = &e
			how = "takeover"
		}
		// Revision-checked: if the claim changed since we read it (a
		// refresh, another claimant), read it again.
		rev, err = kv.Update(ctx, key, c.value(serverID, 0, false), e.rev)
		if err == nil {
			c.granted(serverID, rev, how)
			return relay.ClaimGranted, nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			break
		}
	}
	c.m.claims.WithLabelValues("unavailable").Inc()
	return 0, relay.ErrClusterUnavailable
}

// granted records a new lease and tells everyone: the former owner drops
// its slot and every instance closes phones that joined under an older
// claim. This instance's own proxies of an older claim go the same way.
func (c *Cluster) granted(serverID string, epoch uint64, how string) {
	c.m.claims.WithLabelValues(how).Inc()
	c.mu.Lock()
	c.leases[serverID] = &lease{epoch: epoch, rev: epoch}
	c.mu.Unlock()
	_ = c.nc.Publish(c.sub.ownerOut(), encodeOwner(ownerMsg{epoch: epoch, serverID: serverID}))
	c.rl.Superseded(serverID, c.self, epoch)
}

// SetGrace implements relay.Backplane: the next refresh records it.
func (c *Cluster) SetGrace(serverID string, grace bool) {
	c.mu.Lock()
	if l := c.leases[serverID]; l != nil && l.grace != grace {
		l.grace = grace
		l.dirty = true
	}
	c.mu.Unlock()
	c.kickRefresh()
}

// Release implements relay.Backplane: the claim is deleted if it is still
// the one this instance wrote (revision-checked), so a newer claim
// elsewhere is never removed.
func (c *Cluster) Release(serverID string) {
	c.mu.Lock()
	l := c.leases[serverID]
	delete(c.leases, serverID)
	c.mu.Unlock()
	if l == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	kv, err := c.bucket(ctx)
	if err != nil {
		return // the lease expires on its own
	}
	_ = kv.Delete(ctx, keyFor(serverID), jetstream.LastRevision(l.rev))
}

// refresh rewrites every claim this instance owns. A claim that changed
// under it was lost (split brain after a partition, or an operator's
// purge): the slot here is dropped, since the store is the truth. A claim
// that expired (NATS was away longer than the lease) is created again if
// nobody took it.
func (c *Cluster) refresh(ctx context.Context) {
	if !c.nc.IsConnected() {
		return // no 4404 storm from a blip: keep serving, retry later
	}
	kv, err := c.bucket(ctx)
	if err != nil {
		return
	}
	for _, id := range c.leasedIDs() {
		c.mu.Lock()
		l := c.leases[id]
		if l == nil {
			c.mu.Unlock()
			continue
		}
		epoch, rev, grace := l.epoch, l.rev, l.grace
		l.dirty = false
		c.mu.Unlock()
		newRev, err := kv.Update(ctx, keyFor(id), c.value(id, epoch, grace), rev)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
			newRev, err = c.reassert(ctx, kv, id, epoch, grace)
		}
		if err != nil {
			if errors.Is(err, errLost) || errors.Is(err, errRetry) {
				continue
			}
			c.m.refreshErrors.Inc()
			continue
		}
		c.mu.Lock()
		if l := c.leases[id]; l != nil && l.epoch == epoch {
			l.rev = newRev
		}
		c.mu.Unlock()
	}
}

var (
	errLost  = errors.New("cluster: claim lost")
	errRetry = errors.New("cluster: claim changing; retry")
)

// reassert repairs a refresh that failed its revision check.
func (c *Cluster) reassert(ctx context.Context, kv jetstream.KeyValue, id string, epoch uint64, grace bool) (uint64, error) {
	e, found, err := c.get(ctx, kv, id)
	if err != nil {
		return 0, err
	}
	switch {
	case !found:
		rev, err := kv.Create(ctx, keyFor(id), c.value(id, epoch, grace))
		if err == nil {
			c.m.claims.WithLabelValues("reasserted").Inc()
			return rev, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, err
		}
		e, found, err = c.get(ctx, kv, id)
		if err != nil || !found {
			return 0, errRetry
		}
	case e.Owner == c.self && e.Epoch == epoch:
		return kv.Update(ctx, keyFor(id), c.value(id, epoch, grace), e.rev)
	}
	if e.Owner == c.self && e.Epoch == epoch {
		return e.rev, nil
	}
	c.mu.Lock()
	l := c.leases[id]
	regranted := l != nil && e.Owner == c.self && l.epoch == e.Epoch
	c.mu.Unlock()
	if regranted {
		// A new binary here took the claim under a new epoch while this
		// refresh ran (Acquire): nothing was lost; the next refresh
		// writes the new lease.
		return 0, errRetry
	}
	c.lost(id, epoch, e.Owner, e.Epoch)
	return 0, errLost
}

// lost drops a lease another claim replaced.
func (c *Cluster) lost(id string, epoch uint64, owner string, newEpoch uint64) {
	c.mu.Lock()
	if l := c.leases[id]; l != nil && l.epoch == epoch {
		delete(c.leases, id)
	}
	c.mu.Unlock()
	c.m.claims.WithLabelValues("lost").Inc()
	c.log.Warn("claim lost to another instance", "event", "cluster_claim_lost", "server_id", id)
	c.rl.Superseded(id, owner, newEpoch)
}

// verify checks the claims this instance's proxies joined under: a claim
// that vanished (its owner crashed and the lease ran out, or the grace
// ended) or moved closes those phones 4404, as a grace expiry would.
func (c *Cluster) verify(ctx context.Context) {
	if !c.nc.IsConnected() {
		return
	}
	kv, err := c.bucket(ctx)
	if err != nil {
		return
	}
	seen := map[string]bool{}
	for _, rc := range c.rl.RemoteClaims() {
		e, found, err := c.get(ctx, kv, rc.ServerID)
		switch {
		case err != nil && !errors.Is(err, ErrWire):
			continue // uncertain: ask again next time
		case !found || err != nil:
			// Twice in a row: a live owner whose refresh ran late
			// re-creates its claim in between, and its phones stay.
			seen[rc.ServerID] = true
			if c.missing[rc.ServerID]++; c.missing[rc.ServerID] >= 2 {
				c.rl.Superseded(rc.ServerID, "", ^uint64(0))
			}
		case e.Owner != rc.Owner || e.Epoch != rc.Epoch:
			c.rl.Superseded(rc.ServerID, e.Owner, e.Epoch)
		}
	}
	for id := range c.missing {
		if !seen[id] {
			delete(c.missing, id)
		}
	}
}

// ownerChanged handles another instance's broadcast that it now owns a
// server-id.
func (c *Cluster) ownerChanged(from string, o ownerMsg) {
	if from == c.self {
		return
	}
	c.mu.Lock()
	l := c.leases[o.serverID]
	if l != nil && l.epoch >= o.epoch {
		c.mu.Unlock()
		return // a late broadcast about a claim older than ours
	}
	delete(c.leases, o.serverID)
	c.mu.Unlock()
	c.rl.Superseded(o.serverID, from, o.epoch)
}
