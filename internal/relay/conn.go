package relay

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Close codes the relay sends (protocol §6).
const (
	CodeGoingAway      = websocket.StatusGoingAway               // 1001: shutdown; default notice code
	CodeUnsupported    = websocket.StatusUnsupportedData         // 1003: binary-opcode phone message
	CodeInvalidPayload = websocket.StatusInvalidFramePayloadData // 1007: a phone message that is not one JSON object
	CodeTooBig         = websocket.StatusMessageTooBig           // 1009
	CodeInternal       = websocket.StatusInternalError           // 1011: heartbeat, takeover, backlog, write failure
	CodeNoBinary       = websocket.StatusCode(4404)              // no binary for that server-id; eviction
	CodeConflict       = websocket.StatusCode(4409)              // server-id claimed by a live binary
	CodeTooManyPhones  = websocket.StatusCode(4429)              // phone cap reached
)

// closeCodes are every code the relay itself closes with: with "peer" and
// "directive" they are relay_connection_closes_total's cause labels
// (countClose), pre-registered at 0 for both roles so that the series
// exist, and a dashboard panel has data, before the first close.
var closeCodes = []websocket.StatusCode{
	CodeGoingAway, CodeUnsupported, CodeInvalidPayload, CodeTooBig, CodeInternal,
	CodeTryAgain, CodeNoBinary, CodeConflict, CodeTooManyPhones,
}

// Close reasons are fixed phrases: never a server-id, header value or error
// text (protocol §6).
const (
	reasonShutdown    = "relay shutting down"
	reasonHeartbeat   = "heartbeat timeout"
	reasonReadTimeout = "read timeout"
	reasonBacklog     = "backlog full"
	reasonWriteFailed = "write failed"
	reasonWriteStall  = "write timeout"
	reasonReplaced    = "replaced by a new binary"
	reasonNoBinary    = "no binary for this server"
	reasonConflict    = "server already claimed"
	reasonTooMany     = "too many phones"
	reasonBadFrame    = "invalid frame"
	reasonBinaryFrame = "text frames only"
)

// closeLabels name, for the close log line, the causes an operator asks
// about most ("why was my phone closed 1011?"): which timer fired, or which
// write failed. A closed set; other causes carry their close code only.
var closeLabels = map[string]string{
	reasonHeartbeat:   "pong_timeout",
	reasonReadTimeout: "read_timeout",
	reasonWriteStall:  "write_timeout",
	reasonWriteFailed: "write_failed",
	reasonBacklog:     "backlog_full",
	reasonReplaced:    "replaced",
}

// logAttrs is the close code and, when it has one, the cause's label.
func (c closeCause) logAttrs() []any {
	a := []any{"close_code", int(c.code)}
	if l := closeLabels[c.reason]; l != "" {
		a = append(a, "reason", l)
	}
	return a
}

// writeFailure is the reason for a write that failed: a write deadline
// that passed (the peer stopped taking bytes) or any other error.
func writeFailure(err error) string {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return reasonWriteStall
	}
	return reasonWriteFailed
}

// closeCause records why a connection ended. The first cause wins: a
// connection is closed once, and its close notice (phones) carries that code.
type closeCause struct {
	code   websocket.StatusCode
	reason string
	// byPeer: the other side closed or vanished; nothing to send.
	byPeer bool
	// sent: the WebSocket library already sent the close frame (1009).
	sent bool
	// notify: a phone close that its binary should hear about.
	notify bool
	// directive: the binary chose the code (a close directive).
	directive bool
	// evicted: a remote phone's owner dropped it (LinkEvict); the owner
	// sends the notice, if one is due.
	evicted bool
}

// wsEnd is the close state shared by both connection kinds.
type wsEnd struct {
	ws *websocket.Conn
	// raw is the hijacked socket under ws. Closing it is the only way to
	// bound the library's close handshake (up to 5 s + 5 s) for a peer that
	// will never answer: one that stopped reading or stopped ponging.
	raw net.Conn
	// pc counts the bytes the peer moves (nil when the socket could not be
	// wrapped): a peer that sends or takes bytes is alive even if a ping's
	// answer is stuck behind frames.
	pc           *progressConn
	closeTimeout time.Duration
	once         sync.Once
	cause        closeCause
	// ended is closed when the first cause is recorded; goroutines tied to
	// the connection (the phone's writer, a ping in flight) stop on it.
	ended chan struct{}
	// gone is closed once the socket is closed (handshake done or timed out).
	gone chan struct{}
}

func newWSEnd(ws *websocket.Conn, raw net.Conn, closeTimeout time.Duration) *wsEnd {
	return &wsEnd{ws: ws, raw: raw, closeTimeout: closeTimeout, ended: make(chan struct{}), gone: make(chan struct{})}
}

// end records c if it is the first cause and closes the socket in the
// background: a relay-made close sends c's code and gives the peer
// closeTimeout to answer, after which the socket is dropped. Callers may
// hold locks or sit on a hot path, so nothing here blocks. It reports
// whether c won.
func (e *wsEnd) end(c closeCause) bool {
	won := false
	e.once.Do(func() {
		won = true
		e.cause = c
		close(e.ended)
		go func() {
			defer close(e.gone)
			drop := time.AfterFunc(e.closeTimeout, e.dropSocket)
			defer drop.Stop()
			if c.byPeer || c.sent {
				_ = e.ws.CloseNow()
				return
			}
			_ = e.ws.Close(c.code, c.reason)
		}()
	})
	return won
}

// writeFailed records a failed write as the connection's end, unless the
// peer's own close wins the race. A write fails when the peer closed under
// it (its close frame, then a reset or its socket's end), and the read
// loop, which is about to read that close, records the peer's code; a
// failure recorded first would send a 1011 notice for a phone that closed
// 1000, or count a binary's own close as a write failure. So a failure that
// is not this relay's own write timeout waits up to closeTimeout for
// another cause before it claims the end. Call it without holding a turn.
func (e *wsEnd) writeFailed(err error, c closeCause) {
	if !errors.Is(err, os.ErrDeadlineExceeded) && endsWithin(e.ended, e.closeTimeout) {
		return
	}
	e.end(c)
}

// endsWithin waits up to d and reports whether ended was closed by then.
// It is the grace a cause the relay found itself (a failed write, a missed
// pong) gives the peer's own end, which the read loop may be about to
// record: the peer's close is the truer cause, and the one its binary
// should hear. d <= 0 does not wait.
func endsWithin(ended <-chan struct{}, d time.Duration) bool {
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ended:
			return true
		case <-t.C:
		}
	}
	select {
	case <-ended:
		return true
	default:
		return false
	}
}

// dropSocket closes the TCP connection without a close handshake.
func (e *wsEnd) dropSocket() {
	if e.raw != nil {
		_ = e.raw.Close()
	}
}

// peerCause turns a read error into the cause of the connection's end.
func peerCause(err error) closeCause {
	if errors.Is(err, websocket.ErrMessageTooBig) {
		return closeCause{code: CodeTooBig, sent: true, notify: true}
	}
	code := websocket.CloseStatus(err)
	if code == -1 && errors.Is(err, net.ErrClosed) {
		// Our side closed the socket before any cause was recorded: only
		// the library does that, when a control frame's write (a ping, at
		// most 5 s) times out. That is a write failure, not the peer's 1001.
		return closeCause{code: CodeInternal, reason: reasonWriteStall, sent: true, notify: true}
	}
	if code == -1 || code == websocket.StatusNoStatusRcvd {
		code = CodeGoingAway // protocol §5: no status, or no close frame at all
	}
	return closeCause{code: code, byPeer: true, notify: true}
}

// msgReader reads whole messages into pooled buffers of the frame buffers'
// size classes (framebuf.go). The read timeout starts when the message's
// first frame header arrives, so an idle connection is left to the
// heartbeat while a slow sender cannot hold a reader and its buffer
// forever; onTimeout closes the connection, which unblocks the read. A
// message's buffer goes back to its pool when the next read begins, before
// it waits: an idle connection holds no buffer, and a busy one reuses the
// same few, at every size up to the largest class.
//
// A read starts with a buffer one byte larger than the last message (the
// library does not tell a message's length before it is read), so a
// stream of like-sized messages is read in one piece, without growing and
// copying; a larger one grows it by doubling, up to what the read limit
// lets through.
//
// One timer serves every message and is re-armed lazily: a message records
// when it began (started), and the timer, once armed, stays armed across
// messages; when it fires it re-arms for what is left of the message in
// progress, closes the connection if that message is over its time, or
// disarms between messages. A message so costs a clock read and two atomic
// stores instead of a timer reset and stop (each takes the timer heap's
// lock), and the deadline is still exactly its start plus timeout.
type msgReader struct {
	ws        *websocket.Conn
	limit     int64 // the connection's read limit (MaxMessageBytes); 0: none
	timeout   time.Duration
	onTimeout func()
	buf       *[]byte // the last message's buffer, until the next read
	last      int     // the last message's length

	started atomic.Int64 // readClock when the message in progress began; 0 between messages
	armed   atomic.Bool  // the timer is set (or its function is running)
	timer   atomic.Pointer[time.Timer]
}

// readClockBase anchors readClock on the monotonic clock.
var readClockBase = time.Now()

// readClock is monotonic nanoseconds, never 0.
func readClock() int64 { return int64(time.Since(readClockBase)) + 1 }

// arm sets the timer for a message that began at readClock() (the caller
// stored started), unless it is set already: then it fires at an earlier
// message's deadline and re-arms from there.
func (m *msgReader) arm() {
	if !m.armed.CompareAndSwap(false, true) {
		return
	}
	t := m.timer.Load()
	if t == nil {
		t = time.AfterFunc(time.Duration(math.MaxInt64), m.expire)
		m.timer.Store(t)
	}
	t.Reset(m.timeout)
}

// expire is the timer's function.
func (m *msgReader) expire() {
	for {
		s := m.started.Load()
		if s == 0 {
			m.armed.Store(false)
			// A message that began after the load either saw the timer
			// armed (and did not arm it) or armed it itself after the
			// store: take it on in the first case only.
			if m.started.Load() == 0 || !m.armed.CompareAndSwap(false, true) {
				return
			}
			continue
		}
		if left := m.timeout - time.Duration(readClock()-s); left > 0 {
			m.timer.Load().Reset(left)
			return
		}
		m.onTimeout()
		return
	}
}

// minReadBuffer is the smallest buffer a read starts with.
const minReadBuffer = 1 << 10

// readBuffers holds buffers of minReadBuffer bytes, where most reads
// start: a new one is its slice header and array in one allocation, where
// a size class's is two (under the race detector, which drops a quarter of
// what a pool is given, small messages so stay below an allocation each).
var readBuffers = sync.Pool{New: func() any {
	b := new(struct {
		s []byte
		a [minReadBuffer]byte
	})
	b.s = b.a[:0]
	return &b.s
}}

// getReadBuffer is getFrameBuffer for reads.
func getReadBuffer(n int) *[]byte {
	if n <= minReadBuffer {
		return readBuffers.Get().(*[]byte)
	}
	return getFrameBuffer(n)
}

// putReadBuffer returns a buffer from getReadBuffer for reuse.
func putReadBuffer(b *[]byte) {
	if cap(*b) == minReadBuffer {
		*b = (*b)[:0]
		readBuffers.Put(b)
		return
	}
	putFrameBuffer(b)
}

// read returns the next message. data is valid until the next call.
func (m *msgReader) read() (typ websocket.MessageType, data []byte, err error) {
	if m.buf != nil {
		putReadBuffer(m.buf)
		m.buf = nil
	}
	typ, r, err := m.ws.Reader(context.Background())
	if err != nil {
		return 0, nil, err
	}
	m.started.Store(readClock())
	m.arm()
	m.buf = getReadBuffer(max(m.last+1, minReadBuffer))
	buf := *m.buf
	for {
		if len(buf) == cap(buf) {
			next := getReadBuffer(m.grown(cap(buf)))
			*next = append(*next, buf...)
			putReadBuffer(m.buf)
			m.buf, buf = next, *next
		}
		n, rerr := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			err = rerr
			break
		}
	}
	m.started.Store(0)
	*m.buf = buf
	if err == nil {
		m.last = len(buf)
	}
	return typ, buf, err
}

// grown is the size a full buffer of c bytes grows to: double, but no
// more than the read limit lets through (the library reads up to limit+1
// bytes and fails the read after that), and at least one byte more.
func (m *msgReader) grown(c int) int {
	n := 2 * c
	if m.limit > 0 && int64(n) > m.limit+1 {
		n = int(m.limit + 1)
	}
	return max(n, c+1)
}

// alive reports whether the peer answered a ping within timeout or moved
// bytes meanwhile. ended aborts the wait early.
func (e *wsEnd) alive(timeout time.Duration) bool {
	before := e.pc.mark()
	if ping(e.ws, timeout, e.ended) {
		return true
	}
	return e.pc.since(before)
}

// ping reports whether the peer answered a ping within timeout. ended
// aborts the wait early, without touching the ping: the WebSocket library
// drops the socket when the context of a write it has begun ends, so
// cancelling a ping because the connection ended would cut short the close
// handshake that ended it (the peer would see a bare EOF instead of the
// relay's close code). The ping finishes in its own goroutine instead, at
// its pong, its timeout or the socket's close; a connection already ended
// is not pinged at all.
func ping(ws *websocket.Conn, timeout time.Duration, ended <-chan struct{}) bool {
	select {
	case <-ended:
		return false
	default:
	}
	answered := make(chan bool, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		answered <- ws.Ping(ctx) == nil
	}()
	select {
	case ok := <-answered:
		return ok
	case <-ended:
		return false
	}
}
