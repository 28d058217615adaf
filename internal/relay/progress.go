package relay

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// progressChunk is how much the peer must take within one WriteTimeout.
// A write fails when WriteTimeout passes without the peer taking this much,
// so the timeout measures a stall, not a message's length over a slow
// link: a 256 KiB frame to a 200 kbit/s daemon takes 10 s and is still a
// live daemon.
const progressChunk = 16 << 10

// deadlineSlack is how stale, as a fraction of WriteTimeout, a write
// deadline may be before it is set again: a write's deadline is then
// between WriteTimeout and WriteTimeout + WriteTimeout/deadlineSlack after
// it starts, never sooner, and a busy socket sets it a few times a second
// rather than once per write (each setting takes the poller's timer lock).
const deadlineSlack = 16

// ackedProgressMin is how many of our bytes the peer must acknowledge in
// one liveness check to count as reading. More than the control frames a
// check can involve (a ping, a pong, a close: 3 x 131 bytes plus TLS
// records): a peer whose process is dead still has a kernel that
// acknowledges those into its receive buffer.
const ackedProgressMin = 1 << 10

// progressConn is the socket under a WebSocket (the library reads and
// writes through it). A write fails when WriteTimeout passes without the
// peer taking progressChunk bytes, and the bytes moved each way are
// counted, so a liveness check can tell a peer that is slow but alive (it
// sends, or it takes what we send) from one that has stopped, whose pong
// may just be queued behind frames on a slow link.
//
// On a plain TCP socket a write goes to the kernel whole, as the library
// alone would write it, and a deadline that passes after the peer took at
// least progressChunk is renewed; under TLS (whose connection is unusable
// after a timed-out write) or any other wrapper, the write is cut into
// progressChunk pieces with a deadline each (TLS writes records of that
// size anyway).
//
// A write that times out otherwise leaves the connection unusable, which
// is fine: the relay closes it.
type progressConn struct {
	net.Conn
	timeout time.Duration
	tcp     *net.TCPConn // under TLS/PROXY wrappers; nil if none
	plain   bool         // Conn is the *net.TCPConn itself
	// renewAt is when the write deadline must be set again (zero: now).
	// Writes are serialised by the library's write lock.
	renewAt time.Time
	read    atomic.Int64 // bytes read from the peer
	written atomic.Int64 // bytes the socket took from us
	// knownAcked is the most written bytes the kernel has reported
	// acknowledged (mark).
	knownAcked atomic.Int64
}

func newProgressConn(c net.Conn, writeTimeout time.Duration) *progressConn {
	_, plain := c.(*net.TCPConn)
	return &progressConn{Conn: c, timeout: writeTimeout, tcp: tcpConn(c), plain: plain}
}

func (c *progressConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *progressConn) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		chunk := p
		if !c.plain {
			chunk = p[:min(len(p), progressChunk)]
		}
		if now := time.Now(); !now.Before(c.renewAt) {
			slack := c.timeout / deadlineSlack
			_ = c.Conn.SetWriteDeadline(now.Add(c.timeout + slack))
			c.renewAt = now.Add(slack)
		}
		n, err := c.Conn.Write(chunk)
		total += n
		c.written.Add(int64(n))
		p = p[n:]
		if err != nil {
			if c.plain && n >= progressChunk && errors.Is(err, os.ErrDeadlineExceeded) {
				c.renewAt = time.Time{} // slow, not stalled: a new deadline for the rest
				continue
			}
			return total, err
		}
	}
	return total, nil
}

// progressMark is a snapshot of what the peer has done so far.
type progressMark struct {
	read, acked int64
}

// markSlack is how many bytes written since the kernel last reported them
// acknowledged mark may take as acknowledged without asking it again: an
// idle connection's last pings and pongs. Taking them so can only
// understate the progress since the mark (by at most this), never
// overstate it, so a peer must move at most this much more to count as
// alive, never less; and an idle connection's ping costs no system call
// (SIOCOUTQ) and no garbage for it, but every markSlack/10 or so pings.
const markSlack = 256

// mark snapshots the counters. acked is the bytes the peer's TCP has
// acknowledged (written minus the kernel's unacknowledged queue; above TLS
// this is approximate, which the threshold absorbs), or all the bytes
// written when at most markSlack of them were written since the kernel
// last counted. Without the kernel's count it falls back to the bytes the
// kernel took.
func (c *progressConn) mark() progressMark {
	if c == nil {
		return progressMark{}
	}
	m := progressMark{read: c.read.Load(), acked: c.written.Load()}
	if m.acked-c.knownAcked.Load() <= markSlack {
		return m
	}
	return c.ask(m)
}

// ask completes m with the kernel's count of unacknowledged bytes.
func (c *progressConn) ask(m progressMark) progressMark {
	if q, ok := unsentBytes(c.tcp); ok {
		m.acked -= q
		for { // knownAcked only grows
			k := c.knownAcked.Load()
			if m.acked <= k || c.knownAcked.CompareAndSwap(k, m.acked) {
				break
			}
		}
	}
	return m
}

// since reports whether the peer showed life after m: it sent us bytes, or
// acknowledged more than ackedProgressMin of ours. The count now is always
// the kernel's, so that progress is never overstated.
func (c *progressConn) since(m progressMark) bool {
	if c == nil {
		return false
	}
	now := c.ask(progressMark{read: c.read.Load(), acked: c.written.Load()})
	return now.read > m.read || now.acked-m.acked > ackedProgressMin
}
