package relay

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// blockingDrain is a drainer that waits for release.
type blockingDrain struct {
	release chan struct{}
	wg      *sync.WaitGroup
}

func (d blockingDrain) drain() { <-d.release; d.wg.Done() }

// The pool runs concurrent work on as many writers as it needs, keeps at
// most maxIdleWriters of them parked afterwards, hands later work to parked
// writers instead of starting goroutines, and ends them all on close.
func TestWriterPool_ReusesParkedWritersBoundedAndEndsOnClose(t *testing.T) {
	wp := newWriterPool()
	eventually := func(cond func() bool, msg string) {
		t.Helper()
		require.Eventually(t, cond, 5*time.Second, time.Millisecond, "%s: %d writers, %d parked", msg, wp.live.Load(), wp.idle.Load())
	}
	const burst = 3 * maxIdleWriters
	release := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(burst)
	for range burst {
		wp.start(blockingDrain{release: release, wg: &wg})
	}
	require.EqualValues(t, burst, wp.live.Load(), "concurrent work must not wait for a writer")
	close(release)
	wg.Wait()
	eventually(func() bool { return wp.live.Load() == maxIdleWriters && wp.idle.Load() == maxIdleWriters },
		"after the burst, only maxIdleWriters stay, parked")

	// Work that fits the parked writers starts no goroutine.
	again := make(chan struct{})
	wg.Add(maxIdleWriters)
	for range maxIdleWriters {
		wp.start(blockingDrain{release: again, wg: &wg})
	}
	require.EqualValues(t, maxIdleWriters, wp.live.Load(), "work went to new goroutines, not to parked writers")
	close(again)
	wg.Wait()
	eventually(func() bool { return wp.idle.Load() == maxIdleWriters }, "parked again")

	wp.close()
	eventually(func() bool { return wp.live.Load() == 0 }, "after close")
}
