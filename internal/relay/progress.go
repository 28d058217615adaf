package relay

import (
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// progressChunk is how much the peer must acknowledge within one
// WriteTimeout while a write to it is blocked. A write fails when
// WriteTimeout passes without the peer's TCP acknowledging this much, so the
// timeout measures a stall, not a message's length over a slow link (a
// 256 KiB frame to a 200 kbit/s daemon takes 10 s and is still a live
// daemon), nor how often the kernel wakes a blocked writer: Linux does so
// only once a third of the send buffer is free (about 85 KiB at the default
// --socket-send-buffer), which a live reader taking 15 KiB/s frees every six
// seconds at best.
const progressChunk = 16 << 10

// checkDivisor sets how often a write in flight is looked at: every
// WriteTimeout/checkDivisor, by a timer that is armed only while writes
// happen. A stalled write so fails between WriteTimeout and WriteTimeout +
// WriteTimeout/checkDivisor (and the timer's latency) after it began or
// after the peer's last counted progress, never sooner.
const checkDivisor = 16

// ackedProgressMin is how many of our bytes the peer must acknowledge in
// one liveness check to count as reading. More than the control frames a
// check can involve (a ping, a pong, a close: 3 x 131 bytes plus TLS
// records): a peer whose process is dead still has a kernel that
// acknowledges those into its receive buffer.
const ackedProgressMin = 1 << 10

// progressConn is the socket under a WebSocket (the library reads and
// writes through it). A write fails when WriteTimeout passes without the
// peer acknowledging progressChunk bytes, and the bytes moved each way are
// counted, so a liveness check can tell a peer that is slow but alive (it
// sends, or it takes what we send) from one that has stopped, whose pong
// may just be queued behind frames on a slow link.
//
// Writes carry no deadline: besides the socket's own call, a write costs
// three atomic adds and a load (no clock read, no timer). While writes happen a timer looks, every
// WriteTimeout/checkDivisor, at the write in flight and at the bytes the
// peer's TCP has acknowledged (TCP_INFO, on the socket under TLS and PROXY
// wrappers alike); when one write has been in flight for WriteTimeout with
// less than progressChunk acknowledged meanwhile, it sets the socket's write
// deadline in the past, which fails that write (and any later one) with
// os.ErrDeadlineExceeded. Under TLS the connection is then unusable, which
// is fine: the relay closes it.
//
// On a plain TCP socket a write goes to the kernel whole, as the library
// alone would write it. Under TLS, PROXY or any other wrapper it goes down
// in progressChunk pieces (TLS writes records of that size anyway, so this
// costs no system call). Where the kernel cannot count acknowledged bytes
// (no TCP socket under the wrappers, not Linux) a piece the socket takes is
// the progress, for the watch and the liveness checks (mark, since) alike,
// and there they lag a write in flight by at most a piece.
type progressConn struct {
	net.Conn
	timeout time.Duration
	tcp     *net.TCPConn // under TLS/PROXY wrappers; nil if none
	// piece is the most one write hands the socket at once.
	piece   int
	read    atomic.Int64 // bytes read from the peer
	written atomic.Int64 // bytes the socket took from us
	// writes counts the starts and ends of writes to the socket: odd while
	// one is in flight. Writes are serialised by the library's write lock.
	writes atomic.Uint64
	watch  writeWatch
}

// writeWatch is progressConn's timer and what it saw last.
type writeWatch struct {
	armed atomic.Bool // the timer is set (or its function is running)
	timer atomic.Pointer[time.Timer]
	mu    sync.Mutex // the timer's function holds it; guards the rest
	seen  uint64     // writes when the write in flight was first seen
	base  int64      // the peer's acknowledged bytes at since
	since time.Time  // when the clock of the write in flight (re)started
}

func newProgressConn(c net.Conn, writeTimeout time.Duration) *progressConn {
	pc := &progressConn{Conn: c, timeout: writeTimeout, tcp: tcpConn(c), piece: progressChunk}
	if _, plain := c.(*net.TCPConn); plain && canCountAcked {
		pc.piece = math.MaxInt
	}
	return pc
}

func (c *progressConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *progressConn) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		c.writes.Add(1)
		if !c.watch.armed.Load() {
			c.arm()
		}
		n, err := c.Conn.Write(p[:min(len(p), c.piece)])
		c.writes.Add(1)
		total += n
		c.written.Add(int64(n))
		p = p[n:]
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// arm sets the timer, unless it is set already.
func (c *progressConn) arm() {
	w := &c.watch
	if !w.armed.CompareAndSwap(false, true) {
		return
	}
	t := w.timer.Load()
	if t == nil {
		t = time.AfterFunc(time.Duration(math.MaxInt64), c.check)
		w.timer.Store(t)
	}
	t.Reset(c.timeout / checkDivisor)
}

// check is the timer's function. With no write in flight it disarms (the
// next write arms it again), so an idle connection has no timer running.
func (c *progressConn) check() {
	w := &c.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	s := c.writes.Load()
	if s%2 == 0 {
		w.armed.Store(false)
		// A write that began after the load saw the timer armed and left
		// it to us: look at it next time, unless it armed the timer itself.
		if c.writes.Load()%2 == 0 || !w.armed.CompareAndSwap(false, true) {
			return
		}
		w.timer.Load().Reset(c.timeout / checkDivisor)
		return
	}
	now := time.Now()
	acked, counted := ackedBytes(c.tcp)
	switch {
	case s != w.seen: // a new write: the one before went (or none was in flight)
		w.seen, w.since, w.base = s, now, acked
	case counted && acked-w.base >= progressChunk: // the peer is reading
		w.since, w.base = now, acked
	case now.Sub(w.since) >= c.timeout:
		// Stalled: fail the write. The timer stays armed, and so stopped.
		_ = c.Conn.SetWriteDeadline(time.Unix(1, 0))
		return
	}
	w.timer.Load().Reset(c.timeout / checkDivisor)
}

// progressMark is a snapshot of what the peer has done so far: the bytes
// read from it, and the bytes of ours its TCP acknowledged (kernel) or,
// where the kernel cannot count them, the bytes the socket took.
type progressMark struct {
	read, acked int64
	kernel      bool
}

// mark snapshots the counters. Where the kernel counts the bytes the
// peer's TCP acknowledged (TCP_INFO, Linux), acked is that count: it only
// grows, and it grows while a write is in flight. The count of bytes the
// socket took does not: a plain TCP write hands the kernel a whole
// message, whose bytes are counted when the write returns, so a daemon
// slowly reading one long message showed no progress to a ping queued
// behind it and was closed as dead
// (TestHeartbeat_SlowReaderBehindOneLongWrite_StaysUp). The kernel's count
// costs a system call per check (BenchmarkProgressMark), a small fraction
// of the ping it goes with.
func (c *progressConn) mark() progressMark {
	if c == nil {
		return progressMark{}
	}
	m := progressMark{read: c.read.Load()}
	if m.acked, m.kernel = ackedBytes(c.tcp); !m.kernel {
		m.acked = c.written.Load()
	}
	return m
}

// since reports whether the peer showed life after m: it sent us bytes, or
// acknowledged more than ackedProgressMin of ours. Counts of different
// kinds are not compared: only reads then count.
func (c *progressConn) since(m progressMark) bool {
	if c == nil {
		return false
	}
	if c.read.Load() > m.read {
		return true
	}
	now := c.mark()
	return now.kernel == m.kernel && now.acked-m.acked > ackedProgressMin
}
