package relay

import (
	"errors"
	"sync"
	"time"
)

// Registry sentinels: a phone that cannot join answers with a close code.
var (
	// ErrNoBinary: no binary holds the server-id and none is in grace (4404).
	ErrNoBinary = errors.New("relay: no binary holds that server-id")
	// ErrTooManyPhones: the server-id already has MaxPhones phones (4429).
	ErrTooManyPhones = errors.New("relay: too many phones for that server-id")
)

// slot is one server-id's routing state. binary is nil during grace.
type slot struct {
	id     string
	binary *binaryConn
	phones map[string]*phoneConn
	// graceStop cancels the pending grace expiry; graceSeq identifies it so
	// a timer that fires after a reclaim (a stale timer) changes nothing.
	graceStop func() bool
	graceSeq  uint64
}

// timerFunc schedules f after d and returns a stop function
// (time.AfterFunc's contract). Tests substitute a manual clock.
type timerFunc func(d time.Duration, f func()) (stop func() bool)

func realTimer(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// registry maps server-ids to slots. One mutex guards all of it: every
// operation is a few map accesses, and a single lock makes the claim, grace
// and cleanup races easy to reason about.
type registry struct {
	grace     time.Duration
	maxPhones int
	after     timerFunc
	// onEvict closes phones removed by a reclaim, takeover or grace expiry
	// (4404, no close notice). Called without the lock held.
	onEvict func([]*phoneConn)
	// onChange reports new sizes (metrics gauges); may be nil.
	onChange func(RegistryStats)
	// onRemove is told that a grace expiry removed a slot (cluster mode
	// gives up the claim); may be nil. Called without the lock held.
	onRemove func(serverID string)

	mu    sync.Mutex
	slots map[string]*slot
	// phones lists every phone in any slot (phoneConn.idx is its place),
	// so the relay-wide shedding scan walks one slice instead of every
	// slot's map: about 80x less time under the lock at 10k slots
	// (BenchmarkLargestBacklog).
	phones []*phoneConn
	stats  RegistryStats
	closed bool // shutting down: refuse new claims and joins
}

// RegistryStats are the registry's current sizes, as /healthz reports them.
type RegistryStats struct {
	Binaries int `json:"binaries"` // slots held by a live binary
	Phones   int `json:"phones"`   // phones in any slot
	Grace    int `json:"grace"`    // slots in their grace period
}

func newRegistry(grace time.Duration, maxPhones int, after timerFunc, onEvict func([]*phoneConn)) *registry {
	if after == nil {
		after = realTimer
	}
	return &registry{grace: grace, maxPhones: maxPhones, after: after, onEvict: onEvict, slots: make(map[string]*slot)}
}

// claimResult is the outcome of one claim attempt.
type claimResult struct {
	ok        bool        // b now holds the slot
	incumbent *binaryConn // when !ok: the live binary to probe
}

// claim gives b the slot when it is free or in grace. A reclaim during grace
// evicts the slot's phones: they must handshake with the new binary.
func (r *registry) claim(b *binaryConn) claimResult {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return claimResult{}
	}
	s := r.slots[b.serverID]
	if s == nil {
		s = &slot{id: b.serverID, phones: make(map[string]*phoneConn)}
		r.slots[b.serverID] = s
		r.install(s, b)
		r.mu.Unlock()
		return claimResult{ok: true}
	}
	if s.binary != nil {
		inc := s.binary
		r.mu.Unlock()
		return claimResult{incumbent: inc}
	}
	// Reclaim during grace.
	if s.graceStop != nil {
		s.graceStop()
		s.graceStop = nil
	}
	s.graceSeq++
	r.stats.Grace--
	evicted := r.evictPhones(s)
	r.install(s, b)
	r.mu.Unlock()
	r.evicted(evicted)
	return claimResult{ok: true}
}

// takeover replaces a dead incumbent with b. It fails (and b must claim
// again) if the slot changed while the incumbent was being probed.
func (r *registry) takeover(b, incumbent *binaryConn) bool {
	r.mu.Lock()
	s := r.slots[b.serverID]
	if r.closed || s == nil || s.binary != incumbent {
		r.mu.Unlock()
		return false
	}
	incumbent.holding.Store(false)
	r.stats.Binaries--
	evicted := r.evictPhones(s)
	r.install(s, b)
	r.mu.Unlock()
	r.evicted(evicted)
	return true
}

// install makes b the slot's binary. Caller holds r.mu.
func (r *registry) install(s *slot, b *binaryConn) {
	s.binary = b
	b.holding.Store(true)
	r.stats.Binaries++
	r.changed()
}

// evictPhones empties the slot's phone map. Caller holds r.mu.
func (r *registry) evictPhones(s *slot) []*phoneConn {
	if len(s.phones) == 0 {
		return nil
	}
	out := make([]*phoneConn, 0, len(s.phones))
	for _, p := range s.phones {
		out = append(out, p)
		r.unlist(p)
	}
	r.stats.Phones -= len(s.phones)
	s.phones = make(map[string]*phoneConn)
	return out
}

func (r *registry) evicted(ps []*phoneConn) {
	if len(ps) > 0 && r.onEvict != nil {
		r.onEvict(ps)
	}
}

// release is called when b's connection ends. Only the connection that
// still holds the slot changes anything; the slot then enters grace.
func (r *registry) release(b *binaryConn) (grace bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.slots[b.serverID]
	if s == nil || s.binary != b {
		return false // replaced by a takeover, or never installed
	}
	b.holding.Store(false)
	s.binary = nil
	r.stats.Binaries--
	r.stats.Grace++
	s.graceSeq++
	seq := s.graceSeq
	if !r.closed { // shutting down: every phone is being closed anyway
		s.graceStop = r.after(r.grace, func() { r.expire(s, seq) })
	}
	r.changed()
	return true
}

// expire ends a grace period: the slot and its phones are removed, unless
// the slot was reclaimed since (seq no longer matches) or already removed.
// The slot is compared by identity: a newer slot for the same server-id
// restarts graceSeq, so a stale timer could otherwise match it.
func (r *registry) expire(s *slot, seq uint64) {
	r.mu.Lock()
	if r.slots[s.id] != s || s.binary != nil || s.graceSeq != seq {
		r.mu.Unlock()
		return
	}
	delete(r.slots, s.id)
	r.stats.Grace--
	evicted := r.evictPhones(s)
	r.changed()
	r.mu.Unlock()
	r.evicted(evicted)
	if r.onRemove != nil {
		r.onRemove(s.id)
	}
}

// join adds p to its server-id's slot (held or in grace) and mints its
// conn_id. p.joinedUnder is the binary holding the slot now (nil in grace).
func (r *registry) join(p *phoneConn) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.slots[p.serverID]
	if r.closed || s == nil {
		return ErrNoBinary
	}
	if len(s.phones) >= r.maxPhones {
		return ErrTooManyPhones
	}
	id := newConnID()
	for s.phones[id] != nil {
		id = newConnID()
	}
	p.connID = id
	p.slot = s
	p.joinedUnder = s.binary
	s.phones[id] = p
	p.idx = len(r.phones)
	r.phones = append(r.phones, p)
	r.stats.Phones++
	r.changed()
	return nil
}

// leave removes p if it is still in its slot and returns the binary that
// should get a close notice: the one p joined under, if it still holds the
// slot.
func (r *registry) leave(p *phoneConn) (notify *binaryConn) {
	_, notify = r.remove(p)
	return notify
}

// remove is leave that also reports whether p was still in its slot.
func (r *registry) remove(p *phoneConn) (removed bool, notify *binaryConn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := p.slot
	if s == nil || s.phones[p.connID] != p {
		return false, nil // evicted already, or never joined
	}
	delete(s.phones, p.connID)
	r.unlist(p)
	r.stats.Phones--
	r.changed()
	if r.slots[s.id] == s && s.binary != nil && s.binary == p.joinedUnder {
		return true, s.binary
	}
	return true, nil
}

// lookupPhone finds connID among the phones of the slot b holds. A binary
// that no longer holds its slot reaches nobody; a conn_id of another
// server-id is simply not in b's slot.
func (r *registry) lookupPhone(b *binaryConn, connID []byte) *phoneConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.slots[b.serverID]
	if s == nil || s.binary != b {
		return nil
	}
	return s.phones[string(connID)] // no allocation: the conversion only keys the lookup
}

// has reports whether serverID has a slot here (held or in grace).
func (r *registry) has(serverID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.slots[serverID] != nil
}

// holder returns the binary holding serverID's slot (nil in grace) and
// whether there is a slot at all.
func (r *registry) holder(serverID string) (*binaryConn, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.slots[serverID]
	if s == nil {
		return nil, false
	}
	return s.binary, true
}

// drop removes serverID's slot because its claim moved to another
// instance: the binary (if any) must be closed by the caller, the phones
// are returned for eviction.
func (r *registry) drop(serverID string) (b *binaryConn, phones []*phoneConn, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.slots[serverID]
	if s == nil {
		return nil, nil, false
	}
	if s.graceStop != nil {
		s.graceStop()
		s.graceStop = nil
	}
	s.graceSeq++
	if s.binary != nil {
		b = s.binary
		b.holding.Store(false)
		r.stats.Binaries--
		s.binary = nil
	} else {
		r.stats.Grace--
	}
	phones = r.evictPhones(s)
	delete(r.slots, serverID)
	r.changed()
	return b, phones, true
}

// findStub returns the remote phone connID of serverID's slot, or nil.
func (r *registry) findStub(serverID, connID string) *phoneConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.slots[serverID]
	if s == nil {
		return nil
	}
	if p := s.phones[connID]; p != nil && p.link != nil {
		return p
	}
	return nil
}

// stubs lists every remote phone in every slot.
func (r *registry) stubs() []*phoneConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*phoneConn
	for _, s := range r.slots {
		for _, p := range s.phones {
			if p.link != nil {
				out = append(out, p)
			}
		}
	}
	return out
}

// largestBacklog returns the phone with the most releasable bytes (queued
// and in flight) that is not already ending, or nil. An ending phone's
// bytes are being released by its own close; picking it again would free
// nothing and close a bystander instead.
func (r *registry) largestBacklog() *phoneConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	var max *phoneConn
	var maxBytes int64
	for _, p := range r.phones {
		// A remote phone's stub is charged to the same budget (the frames
		// it has waiting for its binary) and is shed the same way.
		if b := p.out.backlog.Load(); b > maxBytes && !p.ending() {
			max, maxBytes = p, b
		}
	}
	return max
}

// unlist removes p from r.phones (swap with the last). Caller holds r.mu.
func (r *registry) unlist(p *phoneConn) {
	last := r.phones[len(r.phones)-1]
	r.phones[p.idx] = last
	last.idx = p.idx
	r.phones[len(r.phones)-1] = nil
	r.phones = r.phones[:len(r.phones)-1]
}

// close refuses further claims and joins (shutdown) and stops grace timers.
func (r *registry) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for _, s := range r.slots {
		if s.graceStop != nil {
			s.graceStop()
		}
	}
}

// Stats returns the current sizes.
func (r *registry) Stats() RegistryStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

func (r *registry) changed() {
	if r.onChange != nil {
		r.onChange(r.stats)
	}
}
