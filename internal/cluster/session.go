package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Sessions: each instance keeps one liveness key in the claims bucket,
//
//	key:   "i." + instance id
//	value: {"v":2,"instance":"<id>","inc":"<incarnation>"}
//
// and rewrites it every lease/3 with a revision-checked Update (the value
// stays, the revision moves). The incarnation is a random nonce, new at
// every start and after every revocation. A claim names its owner's
// incarnation and is valid only while that session lives, so an instance's
// upkeep is one write per lease/3 whatever it owns (claims.go).
//
// Liveness is judged by each instance on its own clock, never by
// comparing clocks across hosts. Every instance watches "i.*" and notes
// for each peer when it received the peer's latest revision (seenAt). A
// peer is dead when one of this instance's own session writes, sent more
// than one lease after seenAt, has come back through the same watch with
// no newer revision of the peer before it: the stream is ordered, so the
// peer stored nothing for more than a lease of real time (its store
// happened before we received it; ours after we sent it), and it refreshes
// every lease/3. A watch that stalls (our own link is down) delivers none
// of our writes and so judges nobody.
//
// A dead session is revoked at the store before any of its claims is
// taken: a revision-checked Delete of its key at the revision judged
// stale. If the owner refreshed meanwhile, the delete fails and the owner
// is live after all. A revoked owner learns it at its next refresh (or
// from the watch, when its link returns) and re-validates its claims
// under a new incarnation (claims.go, reestablish). A revoked
// incarnation never comes back, so a claim naming one is stale for good;
// the instance whose revocation won sweeps such claims once, a few leases
// later (sweep.go).

// sessionPrefix starts every session key; claim keys start with "s".
const sessionPrefix = "i."

func sessionKey(id string) string { return sessionPrefix + id }

// sessionValue is a session key's value.
type sessionValue struct {
	V        int    `json:"v"`
	Instance string `json:"instance"`
	Inc      string `json:"inc"`
}

func newInc() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func encodeSession(id, inc string) []byte {
	b, _ := json.Marshal(sessionValue{V: 2, Instance: id, Inc: inc})
	return b
}

// decodeSession parses the value of key; ok is false for anything this
// code did not write for that instance.
func decodeSession(key string, b []byte) (sessionValue, bool) {
	var v sessionValue
	if err := json.Unmarshal(b, &v); err != nil || v.V != 2 || sessionPrefix+v.Instance != key || !ValidToken(v.Instance) || v.Inc == "" {
		return sessionValue{}, false
	}
	return v, true
}

// peerSession is what the watch showed of another instance's session.
type peerSession struct {
	inc    string
	rev    uint64
	seenAt time.Time // local time its latest revision was received
	dead   bool      // judged dead; revocation pending or lost to a refresh
	gen    uint64    // the watch run that showed it
}

// liveness is a claim's owner's state as this instance sees it.
type liveness int

const (
	ownerLive liveness = iota // the claim's incarnation is its owner's live session
	ownerDead                 // judged dead, not yet revoked: revoke before taking
	ownerGone                 // the incarnation ended (revoked, released, restarted)
)

// sessions is this instance's session and its view of the others'.
type sessions struct {
	mu   sync.Mutex
	inc  string // own incarnation; "" while none is established
	rev  uint64 // own key's last revision written
	sent map[uint64]time.Time
	// lastSent is when the latest own write was sent. unacked are the send
	// times, oldest first, of own writes whose revision is not known (in
	// flight, or their reply lost): the watch may deliver such a write
	// first, and it is given the oldest of them, never a later time than
	// its own.
	lastSent time.Time
	unacked  []time.Time
	// asOf is the send time of the latest own write the watch delivered:
	// the watch has shown everything stored before it.
	asOf time.Time
	// advanced is closed (and replaced) whenever asOf moves.
	advanced chan struct{}
	peers    map[string]*peerSession
	// gen numbers the runs of the watch (watchSessions).
	gen      uint64
	revoking map[string]bool
	// lost is set by the watch when our own key was deleted (revoked).
	lost bool
	// refreshMu serialises writes of the own key (ticks and syncs).
	refreshMu sync.Mutex
}

func newSessions() *sessions {
	return &sessions{sent: map[uint64]time.Time{}, advanced: make(chan struct{}), peers: map[string]*peerSession{}, revoking: map[string]bool{}}
}

// ownInc is this instance's current incarnation ("" when none).
func (c *Cluster) ownInc() string {
	c.ses.mu.Lock()
	defer c.ses.mu.Unlock()
	return c.ses.inc
}

// errNoSession: the instance has no session yet (NATS not reached since
// start, or re-establishing after a revocation): it claims nothing.
var errNoSession = errors.New("cluster: no session")

// establish creates this instance's session with a new incarnation. At
// start (first) a key left by a predecessor with this id is revoked: the
// start's duplicate check found nobody answering as this id, so its
// incarnation is dead. Later, a key held by another incarnation is a
// duplicate instance's, which the caller reports.
func (c *Cluster) establish(ctx context.Context, kv jetstream.KeyValue, first bool) (prev string, err error) {
	key := sessionKey(c.self)
	inc := newInc()
	adopt := func(rev uint64, sent time.Time) {
		c.ses.mu.Lock()
		c.ses.inc, c.ses.rev, c.ses.lost = inc, rev, false
		c.ses.unacked = nil
		if !sent.IsZero() {
			c.ses.sent[rev] = sent
		}
		c.ses.mu.Unlock()
	}
	for attempt := 0; attempt < 3; attempt++ {
		sent := time.Now()
		rev, err := kv.Create(ctx, key, encodeSession(c.self, inc))
		if err == nil {
			adopt(rev, sent)
			return prev, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return prev, err
		}
		ent, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue
		}
		if err != nil {
			return prev, err
		}
		v, _ := decodeSession(key, ent.Value())
		if v.Inc == inc {
			adopt(ent.Revision(), time.Time{}) // our create, whose reply was lost
			return prev, nil
		}
		if !first {
			return prev, ErrDuplicateInstance
		}
		prev = v.Inc
		if err := remove(ctx, kv, key, ent.Revision()); err != nil && !isRevisionMismatch(err) {
			return prev, err
		}
		c.log.Info("session of a previous run of this instance revoked", "event", "cluster_session_revoked", "peer", c.self)
	}
	return prev, errNoSession
}

// refreshSession rewrites the own key (revision-checked). errSessionLost:
// the key was revoked or replaced.
func (c *Cluster) refreshSession(ctx context.Context, kv jetstream.KeyValue) error {
	c.ses.refreshMu.Lock()
	defer c.ses.refreshMu.Unlock()
	return c.refreshSessionLocked(ctx, kv)
}

// refreshSessionLocked is refreshSession with refreshMu held.
func (c *Cluster) refreshSessionLocked(ctx context.Context, kv jetstream.KeyValue) error {
	c.ses.mu.Lock()
	inc, rev := c.ses.inc, c.ses.rev
	c.ses.mu.Unlock()
	if inc == "" {
		return errNoSession
	}
	sent := time.Now()
	c.ses.mu.Lock()
	c.ses.lastSent = sent
	if len(c.ses.unacked) < 8 {
		c.ses.unacked = append(c.ses.unacked, sent)
	}
	c.ses.mu.Unlock()
	newRev, err := kv.Update(ctx, sessionKey(c.self), encodeSession(c.self, inc), rev)
	if err == nil {
		c.ses.mu.Lock()
		c.ses.unacked = slices.DeleteFunc(c.ses.unacked, func(t time.Time) bool { return t.Equal(sent) })
		c.ses.mu.Unlock()
	}
	if err != nil {
		if !isRevisionMismatch(err) && !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
			return err
		}
		// Revoked, or an earlier write of ours went through although its
		// reply was lost (a timeout under load): the key says which.
		ent, gerr := kv.Get(ctx, sessionKey(c.self))
		switch {
		case errors.Is(gerr, jetstream.ErrKeyNotFound) || errors.Is(gerr, jetstream.ErrKeyDeleted):
			return errSessionLost
		case gerr != nil:
			return gerr
		}
		if v, ok := decodeSession(ent.Key(), ent.Value()); !ok || v.Inc != inc {
			return errSessionLost
		}
		newRev = ent.Revision()
		// Not this write's revision: its send time is not known, so it
		// does not advance the watch's clock (sent stays unrecorded).
		sent = time.Time{}
	}
	c.ses.mu.Lock()
	if c.ses.inc == inc {
		c.ses.rev = newRev
		if !sent.IsZero() {
			c.ses.sent[newRev] = sent
		}
	}
	c.ses.mu.Unlock()
	return nil
}

// errSessionLost: this instance's session was revoked (or replaced by a
// duplicate): its claims must be re-validated.
var errSessionLost = errors.New("cluster: session revoked")

func isRevisionMismatch(err error) bool {
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// watchSessions follows every session key until the watcher ends (its
// subscription closed), quit, or stop. Each run is a generation: its
// initial values replace what an earlier run showed, so a session deleted
// while this instance was away is forgotten.
func (c *Cluster) watchSessions(kv jetstream.KeyValue, quit <-chan struct{}) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := kv.Watch(ctx, sessionPrefix+"*")
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	c.ses.mu.Lock()
	c.ses.gen++
	gen := c.ses.gen
	c.ses.mu.Unlock()
	for {
		select {
		case <-c.stop:
			return nil
		case <-quit:
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("cluster: session watch ended")
			}
			c.sessionSeen(gen, e)
		}
	}
}

// sessionSeen applies one entry of watch generation gen (nil: its initial
// values are in).
func (c *Cluster) sessionSeen(gen uint64, e jetstream.KeyValueEntry) {
	now := time.Now()
	s := c.ses
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen != s.gen {
		return // a replaced watcher's last words
	}
	if e == nil {
		for id, p := range s.peers {
			if p.gen != gen {
				delete(s.peers, id) // ended while this instance was not watching
				go c.ownerEnded(id)
			}
		}
		return
	}
	id := strings.TrimPrefix(e.Key(), sessionPrefix)
	put := e.Operation() == jetstream.KeyValuePut
	if id == c.self {
		switch {
		case !put:
			// Our session revoked: a removal after our latest write. An
			// older one is our own start removing a predecessor's key.
			if s.inc != "" && e.Revision() > s.rev {
				s.lost = true
				c.kickRefresh()
			}
		default:
			if v, ok := decodeSession(e.Key(), e.Value()); !ok || v.Inc != s.inc {
				return // a duplicate's write: our next refresh fails (dupLoop reports it)
			}
			sent, ok := s.sent[e.Revision()]
			if !ok && len(s.unacked) > 0 && e.Revision() > s.rev {
				// Our write, back before its Update returned (or whose
				// reply was lost): the oldest such send time is safe.
				sent, ok = s.unacked[0], true
				s.unacked = s.unacked[1:]
			}
			if ok {
				if sent.After(s.asOf) {
					s.asOf = sent
					close(s.advanced)
					s.advanced = make(chan struct{})
				}
				for r := range s.sent {
					if r <= e.Revision() {
						delete(s.sent, r)
					}
				}
				c.judgeLocked()
			}
		}
		return
	}
	if !put {
		if p := s.peers[id]; p != nil {
			delete(s.peers, id)
			go c.ownerEnded(id)
		}
		return
	}
	v, ok := decodeSession(e.Key(), e.Value())
	if !ok {
		return
	}
	s.peers[id] = &peerSession{inc: v.Inc, rev: e.Revision(), seenAt: now, gen: gen}
}

// judgeLocked marks peers silent for more than a lease of the watch's
// time as dead and revokes them. s.mu is held.
func (c *Cluster) judgeLocked() {
	s := c.ses
	for id, p := range s.peers {
		if !p.dead && s.asOf.Sub(p.seenAt) > c.opts.Lease {
			p.dead = true
			if !s.revoking[id] {
				s.revoking[id] = true
				go c.revoke(id, p.inc, p.rev)
			}
		}
	}
}

// revoke revokes a peer judged dead, off the watch's goroutine. Losing
// (the peer refreshed, or another instance revoked it first) is fine: the
// watch shows what happened.
func (c *Cluster) revoke(id, inc string, rev uint64) {
	defer func() {
		c.ses.mu.Lock()
		delete(c.ses.revoking, id)
		c.ses.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if kv, err := c.bucket(ctx); err == nil {
		_ = c.revokeSession(ctx, kv, id, inc, rev)
	}
}

// revokeSession deletes a dead peer's session key at the revision judged
// stale; an error means it was not this call that ended the session.
func (c *Cluster) revokeSession(ctx context.Context, kv jetstream.KeyValue, id, inc string, rev uint64) error {
	_ = inc
	if err := remove(ctx, kv, sessionKey(id), rev); err != nil {
		return err
	}
	c.m.sessions.WithLabelValues("revoked").Inc()
	c.log.Warn("instance silent for longer than the lease: its session is revoked and its claims can be taken",
		"event", "cluster_session_revoked", "peer", id)
	c.scheduleSweep()
	return nil
}

// ownerState says whether a claim naming owner's incarnation inc may still
// be served, and for a dead one the revision to revoke at. A session older
// than a lease is judged now: one own write through the watch
// (syncWatch), so a crashed owner's server-ids do not wait for the next
// tick.
func (c *Cluster) ownerState(ctx context.Context, kv jetstream.KeyValue, owner, inc string) (liveness, uint64, error) {
	if owner == c.self {
		if inc != "" && inc == c.ownInc() {
			return ownerLive, 0, nil
		}
		return ownerGone, 0, nil
	}
	for attempt := 0; ; attempt++ {
		c.ses.mu.Lock()
		p := c.ses.peers[owner]
		var st liveness
		var rev uint64
		stale := false
		switch {
		case p == nil || p.inc != inc:
			st = -1 // ask the store
		case p.dead:
			st, rev = ownerDead, p.rev
		default:
			st = ownerLive
			stale = time.Since(p.seenAt) > c.opts.Lease
		}
		c.ses.mu.Unlock()
		switch {
		case st == -1:
			return c.ownerFromStore(ctx, kv, owner, inc)
		case stale && attempt == 0:
			if err := c.syncWatch(ctx, p.seenAt.Add(c.opts.Lease)); err != nil {
				return ownerLive, 0, nil // cannot judge: assume live
			}
			continue
		}
		return st, rev, nil
	}
}

// ownerFromStore reads owner's session key when the watch has not shown
// the incarnation a claim names (it may lag the claim it was read with).
func (c *Cluster) ownerFromStore(ctx context.Context, kv jetstream.KeyValue, owner, inc string) (liveness, uint64, error) {
	ent, err := kv.Get(ctx, sessionKey(owner))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return ownerGone, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	v, ok := decodeSession(ent.Key(), ent.Value())
	if !ok || v.Inc != inc {
		return ownerGone, 0, nil
	}
	// Current in the store, not yet in our watch: live, and watched from
	// now.
	c.ses.mu.Lock()
	if p := c.ses.peers[owner]; p == nil || p.rev < ent.Revision() {
		c.ses.peers[owner] = &peerSession{inc: v.Inc, rev: ent.Revision(), seenAt: time.Now(), gen: c.ses.gen}
	}
	c.ses.mu.Unlock()
	return ownerLive, 0, nil
}

// syncWatch makes sure the watch has delivered an own session write sent
// after `after` (writing one now unless one was sent since), so that every
// peer is judged against the present.
func (c *Cluster) syncWatch(ctx context.Context, after time.Time) error {
	kv, err := c.bucket(ctx)
	if err != nil {
		return err
	}
	c.ses.refreshMu.Lock()
	c.ses.mu.Lock()
	written := c.ses.lastSent.After(after)
	c.ses.mu.Unlock()
	if !written {
		err = c.refreshSessionLocked(ctx, kv)
	}
	c.ses.refreshMu.Unlock()
	if err != nil {
		return err
	}
	t := time.NewTimer(syncWait)
	defer t.Stop()
	for {
		c.ses.mu.Lock()
		caught := c.ses.asOf.After(after)
		ch := c.ses.advanced
		c.ses.mu.Unlock()
		if caught {
			return nil
		}
		select {
		case <-ch:
		case <-t.C:
			return errWatchBehind
		case <-ctx.Done():
			return ctx.Err()
		case <-c.stop:
			return errNoSession
		}
	}
}

// syncWait bounds syncWatch's wait for its write to come back: a watch
// that takes longer (being restarted after a reconnect) judges nobody, and
// the claim or join goes on as if the owner lived.
const syncWait = time.Second

var errWatchBehind = errors.New("cluster: session watch behind")

// sessionLoop keeps this instance's session: it creates it once NATS is
// reachable, rewrites it every lease/3 (on its own goroutine, so nothing
// slower can delay a refresh past the lease), keeps the watch of every
// session running, and re-establishes the session when it was revoked.
func (c *Cluster) sessionLoop() {
	defer c.loopsDone.Done()
	t := time.NewTicker(c.opts.Lease / 3)
	defer t.Stop()
	first := c.ownInc() == "" // Start may have established it already
	var watching, quit chan struct{}
	for {
		if c.nc.IsConnected() {
			c.ensureBucket()
			ctx, cancel := context.WithTimeout(context.Background(), c.opts.Lease/3)
			if kv, err := c.bucket(ctx); err == nil {
				select {
				case <-c.rewatch:
					// Reconnected: the watch's consumer may be gone with
					// the server, and what it showed is old. A new run
					// shows the present.
					if quit != nil {
						close(quit)
					}
					watching = nil
				default:
				}
				if watching == nil || isClosedChan(watching) {
					watching, quit = make(chan struct{}), make(chan struct{})
					c.watchers.Add(1)
					go func(done, quit chan struct{}) {
						defer c.watchers.Done()
						defer close(done)
						if err := c.watchSessions(kv, quit); err != nil {
							c.log.Debug("session watch ended; restarted", "event", "cluster_watch_restart", "error", err.Error())
						}
					}(watching, quit)
				}
				c.tickSession(ctx, kv, &first)
			}
			cancel()
		}
		select {
		case <-c.stop:
			return
		case <-t.C:
		case <-c.kick:
		}
	}
}

// tickSession creates, refreshes or re-establishes the own session, then
// writes what the claims lack (flushLeases).
func (c *Cluster) tickSession(ctx context.Context, kv jetstream.KeyValue, first *bool) {
	c.ses.mu.Lock()
	inc, lost := c.ses.inc, c.ses.lost
	c.ses.mu.Unlock()
	switch {
	case inc == "":
		prev, err := c.establish(ctx, kv, *first)
		if err != nil {
			if errors.Is(err, ErrDuplicateInstance) {
				c.dropAll()
			}
			c.m.refreshErrors.Inc()
			return
		}
		*first = false
		if prev != "" {
			c.scheduleSweep() // the previous run's claims
		}
	case lost:
		c.sessionLost(ctx, kv)
		return
	default:
		err := c.refreshSession(ctx, kv)
		switch {
		case errors.Is(err, errSessionLost):
			c.sessionLost(ctx, kv)
			return
		case err != nil:
			c.m.refreshErrors.Inc()
			return
		}
	}
	c.flushLeases(ctx, kv)
}

// sessionLost answers the revocation of this instance's session (it was
// silent for longer than the lease, so another instance may have taken
// some of its server-ids): a new incarnation, then every claim it holds is
// re-asserted under it or, taken meanwhile, dropped (claims.go,
// revalidate). Pairs here keep working throughout.
func (c *Cluster) sessionLost(ctx context.Context, kv jetstream.KeyValue) {
	c.m.sessions.WithLabelValues("lost").Inc()
	c.log.Warn("this instance's session was revoked (silent for longer than the lease): its claims are re-asserted, those taken meanwhile dropped",
		"event", "cluster_session_lost")
	c.ses.mu.Lock()
	c.ses.inc, c.ses.lost = "", false
	c.ses.mu.Unlock()
	c.mu.Lock()
	c.pendingLeases = len(c.leases) > 0
	c.mu.Unlock()
	if _, err := c.establish(ctx, kv, false); err != nil {
		if errors.Is(err, ErrDuplicateInstance) {
			c.dropAll()
		}
		return // the next tick establishes it
	}
	c.flushLeases(ctx, kv)
}

// dropAll gives up every slot here: another live instance holds this
// instance's id (a duplicate), so none of its claims can be asserted.
func (c *Cluster) dropAll() {
	c.mu.Lock()
	ids := make([]string, 0, len(c.leases))
	for id, l := range c.leases {
		ids = append(ids, id)
		_ = l
	}
	c.mu.Unlock()
	for _, id := range ids {
		c.mu.Lock()
		l := c.leases[id]
		c.mu.Unlock()
		if l != nil {
			c.lost(id, l.epoch, "", ^uint64(0))
		}
	}
}

// endSession deletes this instance's session key at shutdown, after its
// claims were released: its peers close their proxies of it at once.
func (c *Cluster) endSession() {
	c.ses.mu.Lock()
	inc, rev := c.ses.inc, c.ses.rev
	c.ses.inc = ""
	c.ses.mu.Unlock()
	if inc == "" || !c.nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if kv, err := c.bucket(ctx); err == nil {
		_ = remove(ctx, kv, sessionKey(c.self), rev)
	}
}

func isClosedChan(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// establishAtStart creates the session before the relay serves, when NATS
// is up (as the bucket is), so that the first binaries are not refused
// 1013 while the session loop's first tick is pending.
func (c *Cluster) establishAtStart() {
	if !c.nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	kv, err := c.bucket(ctx)
	if err != nil {
		return
	}
	if prev, err := c.establish(ctx, kv, true); err == nil && prev != "" {
		c.scheduleSweep() // the previous run's claims
	}
}
