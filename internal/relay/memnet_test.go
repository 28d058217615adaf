package relay

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// memListener is an in-memory net.Listener: each dial is a memConn pair
// whose server end Accept returns. It exists for tests under
// testing/synctest, where a goroutine blocked on a real socket is not
// "durably blocked", so the bubble's fake clock would never advance. memConn
// blocks only on channels and its deadlines are timers, which the bubble
// controls; so the relay's heartbeat, read deadline, probe and grace run on
// fake time, and a test of a 30 s timeout takes microseconds and cannot be
// late under load.
type memListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
	// wrap, if set, wraps the relay's end of each new connection.
	wrap func(net.Conn) net.Conn
}

func newMemListener() *memListener {
	return &memListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *memListener) Addr() net.Addr { return memAddr{} }

// dial connects a new client to the listener.
func (l *memListener) dial(ctx context.Context) (net.Conn, error) {
	client, server := memPipe(memPipeBuffer)
	if l.wrap != nil {
		server = l.wrap(server)
	}
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, errors.New("memListener closed")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type memAddr struct{}

func (memAddr) Network() string { return "mem" }
func (memAddr) String() string  { return "relay.test:80" }

// newMemHarness is newHarness over memListener, for tests run inside a
// synctest bubble (call it from the bubble). Everything it starts stops in
// its cleanups, which run inside the bubble too.
func newMemHarness(t *testing.T, mutate func(*Options)) *harness {
	t.Helper()
	return newMemHarnessWrap(t, mutate, nil)
}

// newMemHarnessWrap is newMemHarness with wrap around the relay's end of
// every connection.
func newMemHarnessWrap(t *testing.T, mutate func(*Options), wrap func(net.Conn) net.Conn) *harness {
	t.Helper()
	return newMemHarnessWith(t, mutate, wrap, nil)
}

// newMemHarnessWith is newMemHarnessWrap with bp as the relay's backplane
// (cluster mode, this instance called "owner") when it is not nil.
func newMemHarnessWith(t *testing.T, mutate func(*Options), wrap func(net.Conn) net.Conn, bp Backplane) *harness {
	t.Helper()
	o := fastOptions()
	if mutate != nil {
		mutate(&o)
	}
	logs := &logBuffer{}
	rl, err := New(o, Deps{Log: slog.New(slog.NewJSONHandler(logs, nil))})
	require.NoError(t, err)
	if bp != nil {
		rl.SetBackplane(bp, "owner")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/server", rl.ServeBinary)
	mux.HandleFunc("/v1/client", rl.ServePhone)
	ln := newMemListener()
	ln.wrap = wrap
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return ln.dial(ctx) }}
	h := &harness{t: t, rl: rl, ws: "ws://relay.test", client: &http.Client{Transport: tr},
		dial: func() (net.Conn, error) { return ln.dial(context.Background()) }, addr: "relay.test", logs: logs}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rl.Shutdown(ctx)
		_ = srv.Close()
		<-served
		tr.CloseIdleConnections()
	})
	return h
}

// memPipeBuffer is what one direction of a memConn holds before a write
// blocks, standing in for the kernel's socket buffers. net.Pipe holds
// nothing: a write blocks until the peer reads, so two peers writing to each
// other at once (a ping crossing a close frame) deadlock where TCP would not.
const memPipeBuffer = 64 << 10

// memPipe returns the two ends of a buffered in-memory connection.
func memPipe(buffer int) (net.Conn, net.Conn) {
	ab, ba := newMemBuf(buffer), newMemBuf(buffer)
	a := &memConn{in: ba, out: ab, done: make(chan struct{})}
	b := &memConn{in: ab, out: ba, done: make(chan struct{})}
	a.readDL.init()
	a.writeDL.init()
	b.readDL.init()
	b.writeDL.init()
	return a, b
}

// memBuf is one direction of a memPipe. Its lock is a channel, not a
// sync.Mutex, and waiters wait on the changed channel, so every wait is
// durably blocking in a synctest bubble.
type memBuf struct {
	lock    chan struct{}
	data    []byte
	limit   int
	eof     bool          // the writing end closed
	gone    bool          // the reading end closed
	changed chan struct{} // closed (and replaced) on every change
}

func newMemBuf(limit int) *memBuf {
	return &memBuf{lock: make(chan struct{}, 1), limit: limit, changed: make(chan struct{})}
}

func (b *memBuf) acquire() { b.lock <- struct{}{} }
func (b *memBuf) release() { <-b.lock }

// signal wakes every waiter; call with the lock held.
func (b *memBuf) signal() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// memDeadline is a deadline as a channel that is closed when it passes.
type memDeadline struct {
	lock  chan struct{}
	timer *time.Timer
	ch    chan struct{}
}

func (d *memDeadline) init() {
	d.lock = make(chan struct{}, 1)
	d.ch = make(chan struct{})
}

func (d *memDeadline) set(t time.Time) {
	d.lock <- struct{}{}
	defer func() { <-d.lock }()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	select {
	case <-d.ch:
		d.ch = make(chan struct{}) // passed earlier: re-arm
	default:
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.ch)
		return
	}
	ch := d.ch
	d.timer = time.AfterFunc(dur, func() {
		d.lock <- struct{}{}
		defer func() { <-d.lock }()
		if d.ch == ch {
			select {
			case <-ch:
			default:
				close(ch)
			}
		}
	})
}

func (d *memDeadline) wait() <-chan struct{} {
	d.lock <- struct{}{}
	defer func() { <-d.lock }()
	return d.ch
}

// memConn is one end of a memPipe.
type memConn struct {
	in, out         *memBuf
	readDL, writeDL memDeadline
	closeOnce       sync.Once
	done            chan struct{}
}

func (c *memConn) Read(p []byte) (int, error) {
	for {
		select {
		case <-c.done:
			return 0, net.ErrClosed
		case <-c.readDL.wait():
			return 0, os.ErrDeadlineExceeded
		default:
		}
		c.in.acquire()
		if len(c.in.data) > 0 {
			n := copy(p, c.in.data)
			c.in.data = c.in.data[n:]
			c.in.signal()
			c.in.release()
			return n, nil
		}
		if c.in.eof {
			c.in.release()
			return 0, io.EOF
		}
		changed := c.in.changed
		c.in.release()
		select {
		case <-changed:
		case <-c.done:
		case <-c.readDL.wait():
		}
	}
}

func (c *memConn) Write(p []byte) (int, error) {
	written := 0
	for {
		select {
		case <-c.done:
			return written, net.ErrClosed
		case <-c.writeDL.wait():
			return written, os.ErrDeadlineExceeded
		default:
		}
		c.out.acquire()
		if c.out.gone {
			c.out.release()
			return written, io.ErrClosedPipe
		}
		if n := min(len(p)-written, c.out.limit-len(c.out.data)); n > 0 {
			c.out.data = append(c.out.data, p[written:written+n]...)
			written += n
			c.out.signal()
		}
		if written == len(p) {
			c.out.release()
			return written, nil
		}
		changed := c.out.changed
		c.out.release()
		select {
		case <-changed:
		case <-c.done:
		case <-c.writeDL.wait():
		}
	}
}

func (c *memConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.out.acquire()
		c.out.eof = true
		c.out.signal()
		c.out.release()
		c.in.acquire()
		c.in.gone = true
		c.in.data = nil
		c.in.signal()
		c.in.release()
	})
	return nil
}

func (c *memConn) LocalAddr() net.Addr  { return memAddr{} }
func (c *memConn) RemoteAddr() net.Addr { return memAddr{} }

func (c *memConn) SetDeadline(t time.Time) error {
	c.readDL.set(t)
	c.writeDL.set(t)
	return nil
}

func (c *memConn) SetReadDeadline(t time.Time) error  { c.readDL.set(t); return nil }
func (c *memConn) SetWriteDeadline(t time.Time) error { c.writeDL.set(t); return nil }
