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
}

// itemOverhead is charged per queued item on top of its frame bytes: the
// item itself, the frame's allocation header and the queue slice's share.
// Without it a binary sending `{}` frames to a stalled phone would be
// charged 2 bytes for each ~40-100 bytes of heap, and the byte caps would
// no longer bound memory.
const itemOverhead = 64

// cost is what an item counts against the phone's cap and the relay budget.
func (it outItem) cost() int64 { return int64(len(it.frame)) + itemOverhead }

// outbox is one phone's bounded FIFO of outbound frames, drained by the
// phone's own writer goroutine. Pushing never blocks, so a stalled phone can
// never stall its binary's read loop or the other phones.
type outbox struct {
	limit  int64
	budget *byteBudget

	mu    sync.Mutex
	items []outItem
	bytes int64
	// inflight is the charge of the item the writer holds (between next
	// and done); 0 when none, or once shed released it early.
	inflight int64
	// backlog mirrors bytes for lock-free reads by the relay-wide shedding
	// scan (which must not take every phone's lock). It is all releasable:
	// shed frees the in-flight charge too.
	backlog atomic.Int64
	sealed  bool // a close is queued or the phone is ending: accept nothing more
	wake    chan struct{}
	stopped chan struct{}
}

func newOutbox(limit int64, budget *byteBudget) *outbox {
	return &outbox{limit: limit, budget: budget, wake: make(chan struct{}, 1), stopped: make(chan struct{})}
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
	o.items = append(o.items, it)
	o.bytes += n
	o.backlog.Store(o.bytes)
	if it.closeCode != 0 {
		o.sealed = true
	}
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return ""
}

// writeNext blocks until an item is queued (ok false once stop is called),
// hands its frame, if it has one, to write, and then releases the item's
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

// next blocks until an item is queued or stop is called. The caller must
// release the item with done; writeNext is the only caller.
func (o *outbox) next() (outItem, bool) {
	for {
		o.mu.Lock()
		if len(o.items) > 0 {
			it := o.items[0]
			o.items[0] = outItem{}
			o.items = o.items[1:]
			o.inflight = it.cost()
			o.mu.Unlock()
			return it, true
		}
		o.mu.Unlock()
		select {
		case <-o.wake:
		case <-o.stopped:
			return outItem{}, false
		}
	}
}

// done releases the accounting of the item returned by next, unless shed
// released it already.
func (o *outbox) done(outItem) {
	o.mu.Lock()
	n := o.inflight
	o.inflight = 0
	o.bytes -= n
	o.backlog.Store(o.bytes)
	o.mu.Unlock()
	o.budget.release(n)
}

// stop seals the outbox, discards what is queued and wakes the writer.
// Safe to call more than once.
func (o *outbox) stop() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sealed = true
	var n int64
	for _, it := range o.items {
		n += it.cost()
	}
	o.items = nil
	o.bytes -= n
	o.backlog.Store(o.bytes)
	o.budget.release(n)
	if !isClosed(o.stopped) {
		close(o.stopped)
	}
}

// shed is stop for a phone closed to make room under the relay-wide
// ceiling: it also releases the in-flight item's charge at once, so the
// room exists now rather than when the blocked write fails (the caller
// drops the socket so that it does). It returns the bytes released, whether
// one was in flight, and the close code of a queued close directive (0 if
// none), which the caller honours instead of its own 1011.
func (o *outbox) shed() (released int64, inflight bool, directive int) {
	o.mu.Lock()
	for _, it := range o.items {
		released += it.cost()
		if it.closeCode != 0 {
			directive = it.closeCode
		}
	}
	inflight = o.inflight > 0
	released += o.inflight
	o.inflight = 0
	o.items = nil
	o.bytes -= released
	o.backlog.Store(o.bytes)
	o.sealed = true
	if !isClosed(o.stopped) {
		close(o.stopped)
	}
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
