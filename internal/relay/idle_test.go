package relay

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// settledGoroutines is the fewest goroutines seen over a short wait, so
// transient ones (a ping in flight, a dial's leftovers) do not count.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for range 20 {
		time.Sleep(20 * time.Millisecond)
		n = min(n, runtime.NumGoroutine())
	}
	return n
}

// A phone's writer runs only while its outbox has frames: idle phones hold
// no parked writer goroutine (8 KiB of stack or more each, most of the gap
// to the forwarder's memory per idle connection), a burst takes one from
// the relay's pool that delivers in order and parks again when the queue is
// empty. The pool keeps at most maxIdleWriters parked, however many phones
// there are (n > maxIdleWriters here).
func TestPhoneWriter_RunsOnlyWhileFramesAreQueued(t *testing.T) {
	const n = maxIdleWriters + 8
	h := newHarness(t, func(o *Options) { o.MaxPhones = n })
	bin := h.dialBinary(sid)
	before := settledGoroutines()
	phones := make([]*peer, n)
	ids := make([]string, n)
	for i := range phones {
		phones[i], ids[i] = h.dialPhone(sid, bin)
	}
	// Per phone: the server's handler goroutine and this test's reader.
	// A parked writer per phone would add n more.
	idle := settledGoroutines()
	require.LessOrEqual(t, idle-before, 2*n+n/4, "goroutines grew by %d for %d idle phones", idle-before, n)

	for round := range 20 {
		for i := range phones {
			bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"seq":%d}}`, ids[i], round))
		}
	}
	for i := range phones {
		for round := range 20 {
			require.JSONEq(t, fmt.Sprintf(`{"seq":%d}`, round), phones[i].next())
		}
	}
	after := settledGoroutines()
	require.LessOrEqual(t, after, idle+maxIdleWriters, "writers still parked after their queues drained")
	require.Zero(t, h.rl.QueuedBytes())
}
