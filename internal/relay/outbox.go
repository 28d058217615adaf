package relay

import (
	"sync"
	"sync/atomic"
)

// byteBudget is the relay-wide ceiling on bytes queued for phones
// (Options.MaxQueuedBytes). A nil or zero-limit budget admits everything.
type byteBudget struct {
	limit int64
	used  atomic.Int64
}

func (b *byteBudget) acquire(n int64) bool {
	if b == nil {
		return true
	}
	for { // compare-and-swap, so the total never exceeds the limit, even briefly
		cur := b.used.Load()
		if b.limit > 0 && cur+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

func (b *byteBudget) release(n int64) {
	if b == nil || n == 0 {
		return
	}
	b.used.Add(-n)
}

// outItem is one queued action for a phone: a frame, a close, or both
// (frame first). closeCode 0 means no close.
type outItem struct {
	frame     []byte
	closeCode int
	// buf is frame's pooled buffer (getFrameBuffer), returned once the
	// frame is written; nil for a frame that did not come from the pool.
	buf *[]byte
}

// itemOverhead is charged per queued item on top of its frame bytes: the
// item itself, the frame's allocation header and the queue slice's share.
// Without it a binary sending `{}` frames to a stalled phone would be
// charged 2 bytes for each ~40-100 bytes of heap, and the byte caps would
// no longer bound memory.
const itemOverhead = 64

// cost is what an item counts against the phone's cap and the relay budget.
// A pooled frame buffer is at most an eighth (or 16 bytes) above the
// frame's length (framebuf.go), as an allocation of the frame's length
// would be.
func (it outItem) cost() int64 { return int64(len(it.frame)) + itemOverhead }

// outbox is one phone's bounded FIFO of outbound frames, drained by the
// phone's own writer goroutine. Pushing never blocks, so a stalled phone can
// never stall its binary's read loop or the other phones.
type outbox struct {
	limit  int64
	budget *byteBudget

	mu    sync.Mutex
	items []outItem // queued: items[head:]
	head  int
	bytes int64
	// inflight is the charge of the item the writer holds (between next
	// and done); 0 when none, or once shed released it early.
	inflight int64
	// backlog mirrors bytes for lock-free reads by the relay-wide shedding
	// scan (which must not take every phone's lock). It is all releasable:
	// shed frees the in-flight charge too.
	backlog atomic.Int64
	sealed  bool // a close is queued or the phone is ending: accept nothing more
	// start starts a writer goroutine (called with mu held) when an item is
	// queued and none is running; the writer drains until the queue is
	// empty and exits. An idle phone so holds no parked writer (a goroutine
	// stack of 8 KiB or more each, idle RSS), and a busy one keeps its
	// writer for as long as items keep coming. nil: nothing is started
	// (tests that drain by hand).
	start   func()
	running bool
}

// keptQueueItems is the largest queue array a drained outbox keeps.
const keptQueueItems = 64

func newOutbox(limit int64, budget *byteBudget) *outbox {
	return &outbox{limit: limit, budget: budget}
}

// push queues it. It returns "" on success, or why it refused: the phone's
// own cap, the relay-wide ceiling, or an outbox already sealed by a close.
func (o *outbox) push(it outItem) DropReason {
	n := it.cost()
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case o.sealed:
		return DropPhoneClosing
	case o.bytes+n > o.limit:
		return DropPhoneBacklog
	case !o.budget.acquire(n):
		return DropRelayBacklog
	}
	if o.head > 0 && len(o.items) == cap(o.items) {
		// Full, with taken items in front: slide the queue down rather than
		// grow, so a queue that never drains does not grow without bound.
		n := copy(o.items, o.items[o.head:])
		clear(o.items[n:])
		o.items, o.head = o.items[:n], 0
	}
	o.items = append(o.items, it)
	o.bytes += n
	o.backlog.Store(o.bytes)
	if it.closeCode != 0 {
		o.sealed = true
	}
	if !o.running && o.start != nil {
		o.running = true
		o.start()
	}
	return ""
}

// writeNext takes the next item (ok false when none is queued: the writer
// then exits, and the next push starts another), hands its frame, if it has one, to write, and then releases the item's
// charge, whatever write returned and whether or not there was a frame: a
// close-only directive is charged itemOverhead like any item, and releasing
// only items with a frame leaked that charge from the relay-wide budget
// forever (TM-DOS-8, TestQueueBudget_CloseOnlyDirectives_ReturnToZero). The
// charge is held while the frame is written, so the caps bound what is in
// flight too. It returns the item's close code (0 for none).
func (o *outbox) writeNext(write func(frame []byte) error) (closeCode int, ok bool, err error) {
	it, ok := o.next()
	if !ok {
		return 0, false, nil
	}
	defer o.done(it)
	if it.frame != nil {
		err = write(it.frame)
	}
	return it.closeCode, true, err
}

// next takes the queue's head, or reports an empty (or stopped) queue and
// marks the writer gone. The caller must release the item with done;
// writeNext is the only caller.
func (o *outbox) next() (outItem, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.head == len(o.items) {
		o.running = false
		return outItem{}, false
	}
	it := o.items[o.head]
	o.items[o.head] = outItem{}
	o.head++
	if o.head == len(o.items) {
		// Drained: reuse the array from its start (no allocation per
		// frame in steady state), unless a burst grew it past
		// keptQueueItems, which an idle phone should not hold on to.
		o.items, o.head = o.items[:0], 0
		if cap(o.items) > keptQueueItems {
			o.items = nil
		}
	}
	o.inflight = it.cost()
	return it, true
}

// done releases the accounting of the item returned by next, unless shed
// released it already.
func (o *outbox) done(it outItem) {
	if it.buf != nil {
		putFrameBuffer(it.buf) // written: the library kept no reference
	}
	o.mu.Lock()
	n := o.inflight
	o.inflight = 0
	o.bytes -= n
	o.backlog.Store(o.bytes)
	o.mu.Unlock()
	o.budget.release(n)
}

// stop seals the outbox and discards what is queued; a running writer
// finds the queue empty and exits. Safe to call more than once.
func (o *outbox) stop() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sealed = true
	var n int64
	for _, it := range o.items[o.head:] {
		n += it.cost()
	}
	o.items, o.head = nil, 0
	o.bytes -= n
	o.backlog.Store(o.bytes)
	o.budget.release(n)
}

// shed is stop for a phone closed to make room under the relay-wide
// ceiling: it also releases the in-flight item's charge at once, so the
// room exists now rather than when the blocked write fails (the caller
// drops the socket so that it does). It returns the bytes released, whether
// one was in flight, and the close code of a queued close directive (0 if
// none), which the caller honours instead of its own 1011.
func (o *outbox) shed() (released int64, inflight bool, directive int) {
	o.mu.Lock()
	for _, it := range o.items[o.head:] {
		released += it.cost()
		if it.closeCode != 0 {
			directive = it.closeCode
		}
	}
	inflight = o.inflight > 0
	released += o.inflight
	o.inflight = 0
	o.items, o.head = nil, 0
	o.bytes -= released
	o.backlog.Store(o.bytes)
	o.sealed = true
	o.mu.Unlock()
	o.budget.release(released)
	return released, inflight, directive
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
