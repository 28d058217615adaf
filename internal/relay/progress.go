package relay

import (
	"net"
	"sync/atomic"
	"time"
)

// progressChunk is the most one write to the socket may carry under one
// deadline. A write fails when WriteTimeout passes without the peer taking
// this much, so the timeout measures a stall, not a message's length over
// a slow link: a 256 KiB frame to a 200 kbit/s daemon takes 10 s and is
// still a live daemon.
const progressChunk = 16 << 10

// ackedProgressMin is how many of our bytes the peer must acknowledge in
// one liveness check to count as reading. More than the control frames a
// check can involve (a ping, a pong, a close: 3 x 131 bytes plus TLS
// records): a peer whose process is dead still has a kernel that
// acknowledges those into its receive buffer.
const ackedProgressMin = 1 << 10

// progressConn is the socket under a WebSocket (the library reads and
// writes through it). Each chunk of a write gets its own WriteTimeout
// deadline, and the bytes moved each way are counted, so a liveness check
// can tell a peer that is slow but alive (it sends, or it takes what we
// send) from one that has stopped, whose pong may just be queued behind
// frames on a slow link.
//
// A timed-out write leaves the connection unusable (a TLS connection's
// state is corrupt after one), which is fine: the relay closes it.
type progressConn struct {
	net.Conn
	timeout time.Duration
	tcp     *net.TCPConn // under TLS/PROXY wrappers; nil if none
	read    atomic.Int64 // bytes read from the peer
	written atomic.Int64 // bytes the socket took from us
}

func newProgressConn(c net.Conn, writeTimeout time.Duration) *progressConn {
	return &progressConn{Conn: c, timeout: writeTimeout, tcp: tcpConn(c)}
}

func (c *progressConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *progressConn) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), progressChunk)]
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
		n, err := c.Conn.Write(chunk)
		total += n
		c.written.Add(int64(n))
		if err != nil {
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}

// progressMark is a snapshot of what the peer has done so far.
type progressMark struct {
	read, acked int64
}

// mark snapshots the counters. acked is the bytes the peer's TCP has
// acknowledged (written minus the kernel's unacknowledged queue; above TLS
// this is approximate, which the threshold absorbs). Without the kernel's
// count it falls back to the bytes the kernel took.
func (c *progressConn) mark() progressMark {
	if c == nil {
		return progressMark{}
	}
	m := progressMark{read: c.read.Load(), acked: c.written.Load()}
	if q, ok := unsentBytes(c.tcp); ok {
		m.acked -= q
	}
	return m
}

// since reports whether the peer showed life after m: it sent us bytes, or
// acknowledged more than ackedProgressMin of ours.
func (c *progressConn) since(m progressMark) bool {
	now := c.mark()
	return now.read > m.read || now.acked-m.acked > ackedProgressMin
}
