package relay

import (
	"sync"
	"sync/atomic"
)

// drainer is work for a pooled writer: a phone's outbox, drained until it
// is empty.
type drainer interface{ drain() }

// writerPool runs the phones' outbox writers on goroutines that park
// between bursts instead of exiting. A goroutine started per burst paid a
// spawn, a stack growth on its first write (the write path runs deeper than
// a new goroutine's stack) and an exit, several times what handing the work
// to a parked writer costs, and on the binary-to-phone path a burst is a few
// frames. At most maxIdleWriters park, relay-wide: an idle phone still holds
// no goroutine, and an idle relay no more than that many.
type writerPool struct {
	work chan drainer // unbuffered: a hand-off succeeds only to a parked writer
	idle atomic.Int32 // writers parked
	live atomic.Int32 // writers running or parked
	stop chan struct{}
	once sync.Once
}

// maxIdleWriters bounds the parked writers (8 KiB of stack each).
const maxIdleWriters = 32

func newWriterPool() *writerPool {
	return &writerPool{work: make(chan drainer), stop: make(chan struct{})}
}

// start hands d to a parked writer, or starts one. It never blocks, so it
// may be called under the outbox's lock.
func (wp *writerPool) start(d drainer) {
	select {
	case wp.work <- d:
	default:
		wp.live.Add(1)
		go wp.writer(d)
	}
}

// writer drains d, then parks for the next hand-off unless enough writers
// are parked already.
func (wp *writerPool) writer(d drainer) {
	defer wp.live.Add(-1)
	for {
		d.drain()
		if wp.idle.Add(1) > maxIdleWriters {
			wp.idle.Add(-1)
			return
		}
		select {
		case d = <-wp.work:
			wp.idle.Add(-1)
		case <-wp.stop:
			wp.idle.Add(-1)
			return
		}
	}
}

// close ends the parked writers (Shutdown); a writer busy draining ends
// when it is done. Work started afterwards still runs, on a writer that
// then exits.
func (wp *writerPool) close() { wp.once.Do(func() { close(wp.stop) }) }
