package cluster

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pyrycode/relay/internal/relay"
)

// Claims live in the JetStream KV bucket <name>-claims, one key per
// server-id:
//
//	key:   "s" + hex(server-id)
//	value: {"v":2,"server_id":"<id>","owner":"<instance>","inc":"<incarnation>","epoch":N,"grace":false}
//
// KV keys cannot hold '~' (which server-ids may), and a naive substitution
// would let two server-ids share a key, i.e. one tenant's phones reach
// another's binary. Hex is injective, and the value repeats the raw
// server-id, which every reader checks (TM-CLU-1).
//
// A claim is written only when it changes (created, taken over or
// reclaimed, grace on or off, released, re-asserted after a revocation),
// always revision-checked, and never refreshed: it is valid while its
// owner's session with that incarnation lives (session.go), so an
// instance's upkeep is one session write per lease/3 whatever it owns. A
// crashed owner's claims can be taken once its session is judged dead and
// revoked, about one lease after its last refresh (TM-CLU-2); claims left
// by an ended incarnation are swept (sweep.go). The bucket keeps one
// revision per key (History 1) and expires nothing.
//
// epoch is the revision at which the claim was created or last given to
// a new binary (0 in the create itself, which cannot know its own
// revision: the entry's revision is the epoch then). Epochs grow, so a
// phone that joined under an older claim of the same server-id can be told
// apart from one under the current one. A re-assertion under a new
// incarnation keeps the epoch: it is the same binary's claim.
//
// Version 2 (1 was refreshed per server-id and expired by MaxAge): an
// instance reads only its own version, so a fleet must not mix them
// (docs/cluster.md, upgrading).
const claimVersion = 2

// claimValue is one KV value.
type claimValue struct {
	V        int    `json:"v"`
	ServerID string `json:"server_id"`
	Owner    string `json:"owner"`
	Inc      string `json:"inc"`
	Epoch    uint64 `json:"epoch,omitempty"`
	Grace    bool   `json:"grace,omitempty"`
}

// markerTTL is how long the marker of a removed key (a released or swept
// claim, an ended session) stays in the bucket. Nothing expires the keys
// themselves, so without it every server-id ever released would leave a
// marker behind for good. Watchers and readers need the marker only
// briefly: a watch that misses one still finds the key gone when it asks.
const markerTTL = time.Minute

// remove deletes key if its revision is still rev (revision-checked), all
// its history with it, leaving a marker that expires after markerTTL.
func remove(ctx context.Context, kv jetstream.KeyValue, key string, rev uint64) error {
	return kv.Purge(ctx, key, jetstream.LastRevision(rev), jetstream.PurgeTTL(markerTTL))
}

// keyFor is the KV key of a server-id.
func keyFor(serverID string) string { return "s" + hex.EncodeToString([]byte(serverID)) }

// bucketName is the claims bucket of cluster name.
func bucketName(name string) string { return name + "-claims" }

// lease is a claim this instance owns.
type lease struct {
	epoch uint64
	rev   uint64 // last revision written or read
	inc   string // the incarnation the claim names in the store
	grace bool
	dirty bool // grace changed and not written yet
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
	if err := json.Unmarshal(b, &v); err != nil || v.V != claimVersion || v.ServerID != serverID || !ValidToken(v.Owner) || v.Inc == "" {
		return claimValue{}, fmt.Errorf("%w: claim value", ErrWire)
	}
	return v, nil
}

func (c *Cluster) value(serverID, inc string, epoch uint64, grace bool) []byte {
	b, _ := json.Marshal(claimValue{V: claimVersion, ServerID: serverID, Owner: c.self, Inc: inc, Epoch: epoch, Grace: grace})
	return b
}

// Acquire implements relay.Backplane. Every grant is a create or a
// revision-checked update of the claim, and gives it a new epoch (the
// revision written), also for a new binary on the instance that owns it
// already: so of two instances that read the same claim and each want to
// give it to a new binary, exactly one write succeeds, and the other reads
// the claim again and finds the winner's binary (4409 when it lives).
func (c *Cluster) Acquire(ctx context.Context, serverID string) (relay.ClaimOutcome, error) {
	kv, err := c.bucket(ctx)
	inc := c.ownInc()
	if err != nil || inc == "" {
		c.m.claims.WithLabelValues("unavailable").Inc()
		return 0, relay.ErrClusterUnavailable
	}
	key := keyFor(serverID)
	// probed is the claim (owner, epoch) whose binary its owner reported
	// dead: it may be replaced even though its owner wrote it meanwhile
	// (grace, a re-assertion: the epoch stays; a new binary there would
	// have changed the epoch).
	var probed *claimEntry
	for attempt := 0; attempt < 6; attempt++ {
		rev, err := kv.Create(ctx, key, c.value(serverID, inc, 0, false))
		if err == nil {
			c.granted(serverID, inc, rev, "created")
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
			continue // released or swept since: create again
		}
		c.mu.Lock()
		l := c.leases[serverID]
		c.mu.Unlock()
		how := "reclaimed"
		// prev is the instance whose slot this claim replaces, told before
		// the 101 (tellReplaced): a reclaim of its grace slot or a
		// takeover of its dead binary.
		prev := e.Owner
		switch {
		case e.Owner == c.self && l != nil && l.epoch == e.Epoch:
			// Ours: a new binary for this instance's slot (its grace, or
			// a binary here found dead). The write still goes through the
			// store, so a rival elsewhere that read the claim fails.
			how = "local"
		case e.Owner == c.self:
			how = "stale" // a claim of this id it no longer serves (a previous run)
		case l != nil:
			// The store gave the server-id to another instance while this
			// one still served it (it was cut off from NATS): the store
			// wins, the slot here goes (binary 1011, phones 4404), and the
			// claim is decided against the new owner below.
			c.lost(serverID, l.epoch, e.Owner, e.Epoch)
			continue
		default:
			st, err := c.ownerEnds(ctx, kv, e)
			if err != nil {
				c.m.claims.WithLabelValues("unavailable").Inc()
				return 0, relay.ErrClusterUnavailable
			}
			switch {
			case st == ownerGone:
				// Its incarnation ended (crashed and revoked, restarted):
				// nobody can serve this claim; take it without asking.
				how, prev = "ended", ""
			case e.Grace:
				// Another instance's slot in grace: its owner gives it a
				// binary only by a revision-checked write too, so if both
				// write, one fails.
			case probed != nil && probed.Owner == e.Owner && probed.Epoch == e.Epoch:
				how = "takeover"
			default:
				res, err := c.probe(ctx, e.Owner, serverID)
				if err != nil {
					// The owner's session lived but it does not answer: a
					// newcomer must not take a slot a live binary may
					// hold. Its session ends if it is gone, perhaps while
					// the probe waited.
					if st, err := c.ownerEnds(ctx, kv, e); err == nil && st == ownerGone {
						continue
					}
					return 0, c.unreachable(e.Owner)
				}
				c.reachable(e.Owner)
				if res == relay.ProbeLive {
					c.m.claims.WithLabelValues("conflict").Inc()
					return relay.ClaimConflict, nil
				}
				probed = &e
				how = "takeover"
			}
		}
		// Revision-checked: if the claim changed since we read it (a
		// grace change, another claimant), read it again.
		rev, err = kv.Update(ctx, key, c.value(serverID, inc, 0, false), e.rev)
		if err == nil {
			c.granted(serverID, inc, rev, how)
			if prev != "" && prev != c.self {
				c.tellReplaced(ctx, prev, ownerMsg{epoch: rev, serverID: serverID})
			}
			return relay.ClaimGranted, nil
		}
		if !isRevisionMismatch(err) {
			break
		}
	}
	c.m.claims.WithLabelValues("unavailable").Inc()
	return 0, relay.ErrClusterUnavailable
}

// ownerEnds tells whether another instance's claim e can still be served:
// ownerGone when its incarnation ended, or when it was judged dead and
// this call (or another instance) revoked it; ownerLive otherwise. A dead
// session is always revoked at the store before its claims are taken, so
// an owner that refreshed meanwhile keeps them.
func (c *Cluster) ownerEnds(ctx context.Context, kv jetstream.KeyValue, e claimEntry) (liveness, error) {
	st, rev, err := c.ownerState(ctx, kv, e.Owner, e.Inc)
	if err != nil || st != ownerDead {
		return st, err
	}
	if c.revokeSession(ctx, kv, e.Owner, e.Inc, rev) == nil {
		return ownerGone, nil
	}
	// Lost the revocation: another instance's won (gone), or the owner
	// refreshed (live). The store says which.
	st, _, err = c.ownerFromStore(ctx, kv, e.Owner, e.Inc)
	return st, err
}

// granted records a new lease and tells everyone: the former owner drops
// its slot and every instance closes phones that joined under an older
// claim. This instance's own proxies of an older claim go the same way.
func (c *Cluster) granted(serverID, inc string, epoch uint64, how string) {
	c.m.claims.WithLabelValues(how).Inc()
	c.mu.Lock()
	c.leases[serverID] = &lease{epoch: epoch, rev: epoch, inc: inc}
	c.mu.Unlock()
	_ = c.nc.Publish(c.sub.ownerOut(), encodeOwner(ownerMsg{epoch: epoch, serverID: serverID}))
	c.rl.Superseded(serverID, c.self, epoch)
}

// tellReplacedTimeout bounds the wait for a replaced owner's answer: the
// binary's 101 waits for it (inside the claim's own bound), and an owner
// that does not answer within it is cut off or stopped, the case
// docs/cluster.md's limit 4 (a stale grace slot) states.
const tellReplacedTimeout = time.Second

// tellReplaced tells the instance whose slot a grant just replaced, and
// waits (at most tellReplacedTimeout) until it has dropped that slot,
// before the new binary gets its 101. The broadcast alone leaves a window,
// as long as that instance takes to read it, in which a phone dialling it
// after the 101 joins the replaced slot and is then evicted 4404, where one
// relay would have joined it to the new binary (protocol §7). The request
// carries the broadcast's payload and is handled as the broadcast is
// (ownerChanged, idempotent, ordered by epoch); an instance that does not
// know the request (an older version) has no responder and is not waited
// for.
func (c *Cluster) tellReplaced(ctx context.Context, owner string, o ownerMsg) {
	ctx, cancel := context.WithTimeout(ctx, tellReplacedTimeout)
	defer cancel()
	_, _ = c.nc.RequestWithContext(ctx, c.sub.to(owner, kindReplaced), encodeOwner(o))
}

// SetGrace implements relay.Backplane: the claim records it at once, so
// that a claim elsewhere may reclaim the slot without asking. A write that
// cannot be made now (NATS away) is made by the next session tick.
func (c *Cluster) SetGrace(serverID string, grace bool) {
	c.mu.Lock()
	l := c.leases[serverID]
	if l == nil || (l.grace == grace && !l.dirty) {
		c.mu.Unlock()
		return
	}
	l.grace, l.dirty = grace, true
	c.mu.Unlock()
	if !c.nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if kv, err := c.bucket(ctx); err == nil {
		c.writeGrace(ctx, kv, serverID)
	}
}

// writeGrace writes a lease's grace flag (revision-checked). A claim that
// changed under it is read again: still this lease (a re-assertion raced
// it) is written again; replaced elsewhere is lost.
func (c *Cluster) writeGrace(ctx context.Context, kv jetstream.KeyValue, id string) {
	for attempt := 0; attempt < 3; attempt++ {
		c.mu.Lock()
		l := c.leases[id]
		if l == nil || !l.dirty {
			c.mu.Unlock()
			return
		}
		epoch, rev, inc, grace := l.epoch, l.rev, l.inc, l.grace
		c.mu.Unlock()
		newRev, err := kv.Update(ctx, keyFor(id), c.value(id, inc, epoch, grace), rev)
		if err == nil {
			c.mu.Lock()
			if l := c.leases[id]; l != nil && l.epoch == epoch {
				l.rev = newRev
				l.dirty = l.grace != grace
			}
			c.mu.Unlock()
			continue
		}
		if !isRevisionMismatch(err) {
			return // retried by the next tick
		}
		e, found, err := c.get(ctx, kv, id)
		if err != nil {
			return
		}
		c.mu.Lock()
		l = c.leases[id]
		switch {
		case l == nil || l.epoch != epoch:
			c.mu.Unlock()
			return // released or replaced here meanwhile
		case found && e.Owner == c.self && e.Epoch == epoch:
			l.rev, l.inc = e.rev, e.Inc
			c.mu.Unlock()
			continue
		}
		c.mu.Unlock()
		if found {
			c.lost(id, epoch, e.Owner, e.Epoch)
		} else {
			c.lost(id, epoch, "", ^uint64(0))
		}
		return
	}
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
		return // an ended incarnation's claim: taken or swept later
	}
	_ = remove(ctx, kv, keyFor(serverID), l.rev)
}

// flushLeases writes what the claims of this instance lack: grace changes
// made while NATS was away, and, after a revocation, the new incarnation
// (revalidate). It runs every session tick and costs nothing when neither
// is pending.
func (c *Cluster) flushLeases(ctx context.Context, kv jetstream.KeyValue) {
	inc := c.ownInc()
	c.mu.Lock()
	var dirty, stale []string
	if c.pendingLeases {
		c.pendingLeases = false
		for id, l := range c.leases {
			switch {
			case l.inc != inc:
				stale = append(stale, id)
			case l.dirty:
				dirty = append(dirty, id)
			}
		}
	}
	c.mu.Unlock()
	for _, id := range dirty {
		c.writeGrace(ctx, kv, id)
	}
	if len(stale) > 0 {
		c.revalidate(ctx, kv, inc, stale)
	}
	c.mu.Lock()
	for _, l := range c.leases {
		if l.inc != inc || l.dirty {
			c.pendingLeases = true // some write failed: next tick
			break
		}
	}
	c.mu.Unlock()
}

// revalidate re-asserts this instance's claims under its new incarnation
// inc after its session was revoked: each still naming this instance and
// its epoch is rewritten (revision-checked) or, swept meanwhile, created
// again; one taken by another instance is lost (its binary 1011, its
// phones 4404). revalidateWidth claims at a time.
func (c *Cluster) revalidate(ctx context.Context, kv jetstream.KeyValue, inc string, ids []string) {
	work := make(chan string)
	var wg sync.WaitGroup
	for w := 0; w < revalidateWidth; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				c.reassert(ctx, kv, inc, id)
			}
		}()
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
}

// revalidateWidth bounds the store requests of a re-validation in flight.
const revalidateWidth = 16

// reassert moves one claim to incarnation inc.
func (c *Cluster) reassert(ctx context.Context, kv jetstream.KeyValue, inc, id string) {
	for attempt := 0; attempt < 4; attempt++ {
		c.mu.Lock()
		l := c.leases[id]
		if l == nil || l.inc == inc {
			c.mu.Unlock()
			return
		}
		epoch, grace := l.epoch, l.grace
		c.mu.Unlock()
		e, found, err := c.get(ctx, kv, id)
		if err != nil && !errors.Is(err, ErrWire) {
			return // next tick
		}
		var rev uint64
		switch {
		case !found || err != nil:
			rev, err = kv.Create(ctx, keyFor(id), c.value(id, inc, epoch, grace))
		case e.Owner == c.self && e.Epoch == epoch && e.Inc == inc:
			rev = e.rev
		case e.Owner == c.self && e.Epoch == epoch:
			rev, err = kv.Update(ctx, keyFor(id), c.value(id, inc, epoch, grace), e.rev)
		default:
			c.lost(id, epoch, e.Owner, e.Epoch)
			return
		}
		if err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) || isRevisionMismatch(err) {
				continue // changed meanwhile: read it again
			}
			return
		}
		c.mu.Lock()
		if l := c.leases[id]; l != nil && l.epoch == epoch {
			l.inc, l.rev = inc, rev
			l.dirty = l.grace != grace
		}
		c.mu.Unlock()
		c.m.claims.WithLabelValues("reasserted").Inc()
		return
	}
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
