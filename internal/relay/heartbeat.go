package relay

import (
	"container/heap"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// heartbeats is the relay's one ping scheduler. Every connection is an
// entry in a min-heap ordered by when its next ping is due, and one timer
// is armed for the earliest; nothing runs per connection between pings. A
// due ping runs in a short-lived goroutine that lives only until the pong
// (or PongTimeout), so 10,000 idle connections cost no goroutine, stack or
// ticker each, and their pings are spread over the interval by when each
// connection joined instead of firing together.
//
// When the timer fires, the pings due within batchWindow of it go too
// (at most 1/batchDivisor of the interval early, and at most
// maxBatchWindow), and share one deadline: 10,000 connections at the
// default 30 s wake the relay about ten times a second rather than 333,
// and every wake-up costs a scheduler round and the runtime's monitor a
// millisecond of polling. A batch's pings are all in flight at once, one
// goroutine and stack each, so the window is kept short: a wider one
// (interval/32, nearly a second) left a burst of ping stacks on the heap
// after connections that joined together, 2 KiB per connection at 10,000.
// The earliest ping of a batch goes exactly when due, and each is
// answered within PongTimeout of its batch's start.
//
// With no connection registered the timer is stopped and no goroutine
// exists, so a relay in a synctest bubble can go durably idle.
type heartbeats struct {
	interval, timeout time.Duration
	// settle is how long a missed pong waits before it is judged (see
	// ping): the relay's own --close-timeout.
	settle time.Duration
	// batchWindow is how early a ping may go to share a wake-up.
	batchWindow time.Duration

	mu    sync.Mutex
	q     hbQueue
	timer *time.Timer // made on first use
	// armedFor is when the timer fires (zero: stopped).
	armedFor time.Time
	// live counts entries added and not yet removed: queued, or with a
	// ping in flight.
	live int
}

// batchDivisor and maxBatchWindow bound how early a ping may go:
// interval/batchDivisor, and never more than maxBatchWindow.
const (
	batchDivisor   = 32
	maxBatchWindow = 100 * time.Millisecond
)

// hbEntry is one connection's place in the schedule.
type hbEntry struct {
	ws *websocket.Conn
	// pc counts the bytes the peer moves (nil: nothing counted). A peer
	// that moves bytes while its pong is late is alive: on a slow link a
	// ping queues behind the frames in flight (the library gives its write
	// at most 5 s), and a phone's pong queues behind its own frames while
	// the relay is busy forwarding them, so a late pong there proves
	// nothing (issue 13 item 1).
	pc     *progressConn
	ended  <-chan struct{}
	onDead func() // called once when a pong does not come within timeout
	due    time.Time
	index  int  // in the heap; -1 while not queued
	gone   bool // removed: never queued again
}

func newHeartbeats(interval, timeout, settle time.Duration) *heartbeats {
	return &heartbeats{interval: interval, timeout: timeout, settle: settle, batchWindow: min(interval/batchDivisor, maxBatchWindow)}
}

// add schedules ws's first ping one interval from now. pc may be nil.
func (h *heartbeats) add(ws *websocket.Conn, pc *progressConn, ended <-chan struct{}, onDead func()) *hbEntry {
	e := &hbEntry{ws: ws, pc: pc, ended: ended, onDead: onDead, index: -1}
	h.mu.Lock()
	h.live++
	h.schedule(e, time.Now().Add(h.interval))
	h.mu.Unlock()
	return e
}

// remove takes e out of the schedule for good (its connection ended). A
// ping in flight finishes but does not requeue it.
func (h *heartbeats) remove(e *hbEntry) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !e.gone {
		e.gone = true
		h.live--
	}
	if e.index >= 0 {
		heap.Remove(&h.q, e.index)
	}
	if h.q.Len() == 0 && h.timer != nil {
		h.timer.Stop()
		h.armedFor = time.Time{}
	}
}

// schedule queues e for due and re-arms the timer if e is now first.
// Caller holds h.mu.
func (h *heartbeats) schedule(e *hbEntry, due time.Time) {
	if e.gone {
		return
	}
	e.due = due
	heap.Push(&h.q, e)
	h.arm()
}

// arm points the timer at the earliest due entry. Caller holds h.mu.
func (h *heartbeats) arm() {
	if h.q.Len() == 0 {
		return
	}
	first := h.q[0].due
	if !h.armedFor.IsZero() && !first.Before(h.armedFor) {
		return // already armed for this or an earlier instant
	}
	d := time.Until(first)
	if h.timer == nil {
		h.timer = time.AfterFunc(d, h.fire)
	} else {
		h.timer.Reset(d)
	}
	h.armedFor = first
}

// fire starts every ping due now or within batchWindow, under one
// deadline, and re-arms for the next.
func (h *heartbeats) fire() {
	h.mu.Lock()
	h.armedFor = time.Time{}
	now := time.Now()
	due := h.popDue(now.Add(h.batchWindow))
	h.arm()
	h.mu.Unlock()
	if len(due) == 0 {
		return
	}
	b := &hbBatch{}
	b.ctx, b.cancel = context.WithDeadline(context.Background(), now.Add(h.timeout))
	b.left.Store(int32(len(due)))
	for _, e := range due {
		go h.ping(e, b)
	}
}

// hbBatch is the pings of one wake-up: one deadline, released by the last.
type hbBatch struct {
	ctx    context.Context
	cancel context.CancelFunc
	left   atomic.Int32
}

func (b *hbBatch) done() {
	if b.left.Add(-1) == 0 {
		b.cancel()
	}
}

// popDue removes and returns the entries due by now. Caller holds h.mu.
func (h *heartbeats) popDue(now time.Time) []*hbEntry {
	var due []*hbEntry
	for h.q.Len() > 0 && !h.q[0].due.After(now) {
		due = append(due, heap.Pop(&h.q).(*hbEntry))
	}
	return due
}

// ping sends one ping and waits for its pong, until the batch's deadline.
// A live peer is queued again one interval after this ping was due (or
// now, if the pong took longer); a silent one is handed to onDead. A
// connection that ended meanwhile is left alone: its first cause is
// already recorded, and the library's wait returns as soon as the socket
// closes.
//
// A missed pong is judged only after settle more, unless the connection
// ends first: a relay that was itself paused or starved past the deadline
// (a stopped process, a long pause of the host) still has the pong, or the
// peer's own end, unread in its socket, and its read loop needs a moment to
// read it. Judged at once, a live peer behind a late relay was closed 1011
// "heartbeat timeout", and a phone that had dropped its socket meanwhile
// had its binary told 1011 instead of 1001 (chaos run, seed 976928).
func (h *heartbeats) ping(e *hbEntry, b *hbBatch) {
	before := e.pc.mark()
	err := e.ws.Ping(b.ctx)
	b.done()
	// Slow, not dead: it moved bytes while the pong was late.
	alive := err == nil || e.pc.since(before)
	if !alive && !endsWithin(e.ended, h.settle) {
		alive = e.pc.since(before)
	}
	if !alive {
		select {
		case <-e.ended:
		default:
			e.onDead()
		}
		h.remove(e)
		return
	}
	next := e.due.Add(h.interval)
	if now := time.Now(); next.Before(now) {
		next = now
	}
	h.mu.Lock()
	h.schedule(e, next)
	h.mu.Unlock()
}

// pending is how many connections are scheduled or being pinged.
func (h *heartbeats) pending() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.live
}

// hbQueue is a min-heap of entries by due time.
type hbQueue []*hbEntry

func (q hbQueue) Len() int           { return len(q) }
func (q hbQueue) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q hbQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index = i
	q[j].index = j
}
func (q *hbQueue) Push(x any) {
	e := x.(*hbEntry)
	e.index = len(*q)
	*q = append(*q, e)
}
func (q *hbQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	e.index = -1
	return e
}
