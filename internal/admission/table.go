package admission

import (
	"net/netip"
	"time"

	"golang.org/x/time/rate"
)

// Memory bound. One tracked address costs, on amd64:
//
//	entry struct         64 B  (key 24, *Limiter 8, open 8, lastSeen 8, prev/next 16)
//	rate.Limiter         80 B  (mutex, limit, burst, tokens, two time.Time)
//	map slot           ~40–80 B (24 B key + 8 B value + control byte, at the
//	                            swiss table's load factor and growth slack)
//	                   ≈ 250 B, measured by TestTable_MemoryPerEntry_Bounded
//
// so the table never holds more than MaxTrackedIPs × ~250 B: 16 MiB at the
// default 65536. Nothing else in this package grows with the number of
// distinct addresses.
//
// Eviction. An entry is pinned (not in the idle list, never evicted) while
// it has open connections: its open count is what enforces MaxConnsPerIP.
// Pinned entries number at most MaxConns < MaxTrackedIPs, so when the table
// is full the idle list is never empty. Idle entries are kept in LRU order;
// an idle entry is evictable when its bucket is full (indistinguishable from
// a new entry, so dropping it forgives nothing) or it has been idle IdleTTL.
// Inserting into a full table drops an evictable entry from the LRU end if
// one is found within evictScan entries, else the LRU idle entry regardless
// (a forced eviction, counted in Stats). A forced eviction forgives that
// address part of its drained bucket; an attacker needs more than
// MaxTrackedIPs recently active addresses to cause one, and with that many
// addresses fresh buckets already give it as much. The alternative, refusing
// new addresses while the table is full, would let the same attacker lock
// every new client out.

const (
	// evictScan bounds the work of finding an evictable entry on insert.
	evictScan = 8
	// sweepPerAdmit idle LRU entries are checked (and dropped if evictable)
	// on every admission, so the table shrinks after a burst without a
	// background goroutine.
	sweepPerAdmit = 2
)

type entry struct {
	key      netip.Addr
	lim      *rate.Limiter
	open     int
	lastSeen int64 // Unix nanoseconds of the last admit or release

	// prev and next link the idle list; both nil while pinned.
	prev, next *entry
}

// table is the per-IP state. Not safe for concurrent use: the Controller's
// mutex guards it.
type table struct {
	m     map[netip.Addr]*entry
	idle  entry // sentinel of the circular idle list; idle.next is most recent
	max   int
	rate  rate.Limit
	burst int
	ttl   int64 // IdleTTL in nanoseconds

	forcedEvictions uint64
}

func newTable(max int, r rate.Limit, burst int, ttl time.Duration) *table {
	t := &table{m: make(map[netip.Addr]*entry), max: max, rate: r, burst: burst, ttl: int64(ttl)}
	t.idle.prev, t.idle.next = &t.idle, &t.idle
	return t
}

// get returns key's entry, creating it (with a full bucket) if needed.
// It returns nil only if the table is full and every entry is pinned.
func (t *table) get(key netip.Addr, now time.Time) *entry {
	if e := t.m[key]; e != nil {
		return e
	}
	if len(t.m) >= t.max && !t.evictOne(now) {
		return nil
	}
	e := &entry{key: key, lim: rate.NewLimiter(t.rate, t.burst), lastSeen: now.UnixNano()}
	t.m[key] = e
	t.pushIdle(e)
	return e
}

// touch records activity and moves an idle entry to the recent end.
func (t *table) touch(e *entry, now time.Time) {
	e.lastSeen = now.UnixNano()
	if e.prev != nil {
		t.unlinkIdle(e)
		t.pushIdle(e)
	}
}

// pin marks one more open connection on e.
func (t *table) pin(e *entry) {
	if e.open == 0 {
		t.unlinkIdle(e)
	}
	e.open++
}

// unpin marks one connection on e finished.
func (t *table) unpin(e *entry, now time.Time) {
	e.open--
	e.lastSeen = now.UnixNano()
	if e.open == 0 {
		t.pushIdle(e)
	}
}

func (t *table) evictable(e *entry, now time.Time) bool {
	if e.open > 0 {
		return false
	}
	if t.rate == rate.Inf || now.UnixNano()-e.lastSeen >= t.ttl {
		return true
	}
	return e.lim.TokensAt(now) >= float64(t.burst)
}

// sweep drops up to n evictable entries from the LRU end, skipping keep.
func (t *table) sweep(n int, now time.Time, keep *entry) {
	for e := t.idle.prev; n > 0 && e != &t.idle; n-- {
		prev := e.prev
		if e != keep && t.evictable(e, now) {
			t.remove(e)
		}
		e = prev
	}
}

// evictOne makes room for one entry; see the comment at the top.
func (t *table) evictOne(now time.Time) bool {
	e := t.idle.prev
	for i := 0; i < evictScan && e != &t.idle; i++ {
		if t.evictable(e, now) {
			t.remove(e)
			return true
		}
		e = e.prev
	}
	if lru := t.idle.prev; lru != &t.idle {
		t.remove(lru)
		t.forcedEvictions++
		return true
	}
	return false
}

func (t *table) remove(e *entry) {
	t.unlinkIdle(e)
	delete(t.m, e.key)
}

func (t *table) pushIdle(e *entry) {
	e.prev, e.next = &t.idle, t.idle.next
	t.idle.next.prev = e
	t.idle.next = e
}

func (t *table) unlinkIdle(e *entry) {
	if e.prev == nil {
		return
	}
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
}

func (t *table) len() int { return len(t.m) }
