package relay

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// One scheduler pings every connection: an idle connection costs no
// goroutine of its own (a goroutine per connection was 8 KiB or more of
// stack each, and woke a ticker per connection), every live peer is still
// pinged each interval, and nothing stays scheduled once they leave.
func TestHeartbeat_OneSchedulerForAllConnections_NoGoroutinePerConnection(t *testing.T) {
	const n = 40
	h := newHarness(t, func(o *Options) {
		o.PingInterval = 100 * time.Millisecond
		o.PongTimeout = time.Second
	})
	settle := func() int {
		n := runtime.NumGoroutine()
		for range 20 { // wait out transient goroutines (pings in flight, dials)
			time.Sleep(20 * time.Millisecond)
			n = min(n, runtime.NumGoroutine())
		}
		return n
	}
	before := settle()
	var pinged [n]atomic.Int32
	var conns []*websocket.Conn
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, _, err := websocket.Dial(ctx, h.ws+"/v1/server", &websocket.DialOptions{
			HTTPHeader: binaryHeaders("hb-" + string(rune('a'+i%26)) + string(rune('a'+i/26))),
			OnPingReceived: func(context.Context, []byte) bool {
				pinged[i].Add(1)
				return true
			},
		})
		cancel()
		require.NoError(t, err)
		conns = append(conns, c)
		go func() { _, _, _ = c.Read(context.Background()) }() // a live binary reads, so it answers pings
	}
	h.eventually(func() bool { return h.rl.Stats().Binaries == n }, "binaries never claimed")
	// A binary counts as claimed just before its run schedules its pings.
	h.eventually(func() bool { return h.rl.hb.pending() == n }, "every connection is scheduled: %d of %d", h.rl.hb.pending(), n)

	// Per binary: the server's handler goroutine and this test's reader.
	// A heartbeat goroutine per connection would add n more.
	grown := settle() - before
	require.LessOrEqual(t, grown, 2*n+n/4, "goroutines grew by %d for %d idle binaries", grown, n)

	h.eventually(func() bool {
		for i := range pinged {
			if pinged[i].Load() < 3 {
				return false
			}
		}
		return true
	}, "not every binary was pinged three times")
	require.Equal(t, n, h.rl.Stats().Binaries, "live binaries answered and stayed")

	for _, c := range conns {
		_ = c.Close(websocket.StatusNormalClosure, "")
	}
	h.eventually(func() bool { return h.rl.hb.pending() == 0 }, "connections left in the schedule: %d", h.rl.hb.pending())
}

// The schedule is a heap: pings come out in due order, a removed entry
// never comes back, and the timer stops when the schedule empties.
func TestHeartbeats_DueOrderAndRemoval(t *testing.T) {
	hb := newHeartbeats(time.Hour, time.Second, 0)
	base := time.Now()
	var es []*hbEntry
	for _, off := range []int{5, 1, 4, 2, 3} {
		e := &hbEntry{index: -1}
		hb.mu.Lock()
		hb.live++
		hb.schedule(e, base.Add(time.Duration(off)*time.Minute))
		hb.mu.Unlock()
		es = append(es, e)
	}
	hb.remove(es[3]) // due at +2
	hb.mu.Lock()
	due := hb.popDue(base.Add(4 * time.Minute))
	hb.mu.Unlock()
	var got []time.Duration
	for _, e := range due {
		got = append(got, e.due.Sub(base))
	}
	require.Equal(t, []time.Duration{time.Minute, 3 * time.Minute, 4 * time.Minute}, got)
	hb.mu.Lock()
	hb.schedule(es[3], base) // removed for good: not queued again
	hb.mu.Unlock()
	require.Equal(t, 1, hb.q.Len())
	hb.remove(es[0])
	require.Equal(t, 0, hb.q.Len())
	require.True(t, hb.armedFor.IsZero(), "timer still armed with nothing scheduled")
}

// Scheduling cost per ping at 10,000 connections: pop the due entry and
// queue it again one interval later (what each ping costs the scheduler,
// network aside).
func BenchmarkHeartbeatScheduler(b *testing.B) {
	hb := newHeartbeats(30*time.Second, time.Second, 0)
	now := time.Now()
	hb.mu.Lock()
	for i := range 10000 {
		hb.schedule(&hbEntry{index: -1}, now.Add(time.Duration(i)*3*time.Millisecond))
	}
	hb.mu.Unlock()
	b.ReportAllocs()
	for b.Loop() {
		hb.mu.Lock()
		e := hb.q[0]
		hb.popDue(e.due)
		hb.schedule(e, e.due.Add(hb.interval))
		hb.mu.Unlock()
	}
	b.StopTimer()
	hb.mu.Lock()
	hb.timer.Stop()
	hb.mu.Unlock()
}

// Pings due within the batch window (interval/batchDivisor, at most
// maxBatchWindow) of the earliest share its wake-up: the earliest goes
// exactly when due, the others up to that much early, and a connection due
// later than the window waits for its own time. (On the bubble's clock:
// each ping's instant is exact.)
func TestHeartbeat_PingsDueWithinTheWindowShareAWakeUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newMemHarness(t, defaultTimers)
		window := h.rl.hb.batchWindow
		require.Equal(t, maxBatchWindow, window, "the default interval's window is the cap")
		start := time.Now()
		var mu sync.Mutex
		pinged := map[string][]time.Duration{}
		dial := func(id string) {
			c, _, err := websocket.Dial(context.Background(), h.ws+"/v1/server", &websocket.DialOptions{
				HTTPHeader: binaryHeaders(id), HTTPClient: h.client,
				OnPingReceived: func(context.Context, []byte) bool {
					mu.Lock()
					pinged[id] = append(pinged[id], time.Since(start))
					mu.Unlock()
					return true
				},
			})
			require.NoError(t, err)
			t.Cleanup(func() { _ = c.CloseNow() })
			go func() { _, _, _ = c.Read(context.Background()) }()
			synctest.Wait()
		}
		dial("first")
		time.Sleep(window / 2)
		dial("within") // due window/2 after first
		time.Sleep(window)
		dial("after") // due 1.5 windows after first
		time.Sleep(DefaultPingInterval)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		require.Equal(t, []time.Duration{DefaultPingInterval}, pinged["first"], "the earliest ping goes exactly when due")
		require.Equal(t, []time.Duration{DefaultPingInterval}, pinged["within"], "a ping due within the window goes with it")
		require.Equal(t, []time.Duration{DefaultPingInterval + window/2 + window}, pinged["after"], "a ping due after the window waits for its time")
	})
}

// pongResponder answers every ping on a raw client socket with a pong,
// allocating nothing, so that a benchmark counts the server side alone.
func pongResponder(c net.Conn) {
	var hdr [2]byte
	var payload [125]byte
	var out [2 + 4 + 125]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int(hdr[1] & 0x7f) // server frames are unmasked; control payloads are short
		if _, err := io.ReadFull(c, payload[:n]); err != nil {
			return
		}
		if hdr[0]&0x0f != 0x9 { // not a ping
			continue
		}
		out[0], out[1] = 0x8a, 0x80|byte(n) // a masked pong with a zero key
		out[2], out[3], out[4], out[5] = 0, 0, 0, 0
		copy(out[6:], payload[:n])
		if _, err := c.Write(out[:6+n]); err != nil {
			return
		}
	}
}

// One ping round trip on an accepted (server-side) connection, as the
// relay's heartbeat sends it, to a client that answers without allocating:
// the library's own cost (coder/websocket's Ping with a deadline context,
// and with none: its write of a control frame still sets a 5 s timer and a
// context.AfterFunc, its handling of the pong another, plus the pong
// channel and the payload string) against the relay's heartbeats.ping (the
// progress mark, the batch's shared deadline, the reschedule). -benchmem
// shows the garbage each ping leaves: what an idle relay's heap grows by
// between collections.
func BenchmarkPing(b *testing.B) {
	accepted := make(chan *websocket.Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, acceptOptions)
		if err != nil {
			return
		}
		accepted <- c
		_, _, _ = c.Read(context.Background()) // a read loop handles the pongs
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	fmt.Fprintf(raw, "GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", addr)
	br := bufio.NewReader(raw)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		b.Fatal(err, resp)
	}
	if br.Buffered() > 0 {
		b.Fatal("bytes after the 101")
	}
	go pongResponder(raw)
	ws := <-accepted
	b.Run("library_deadline", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if err := ws.Ping(ctx); err != nil {
				b.Fatal(err)
			}
			cancel()
		}
	})
	b.Run("library_no_deadline", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := ws.Ping(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("relay_heartbeat", func(b *testing.B) {
		hb := newHeartbeats(time.Hour, time.Minute, 0)
		e := &hbEntry{ws: ws, ended: make(chan struct{}), onDead: func() { b.Fatal("declared dead") }, index: -1}
		hb.mu.Lock()
		hb.live++
		hb.mu.Unlock()
		batch := &hbBatch{}
		batch.ctx, batch.cancel = context.WithTimeout(context.Background(), time.Hour)
		defer batch.cancel()
		batch.left.Store(1 << 30)
		b.ReportAllocs()
		for b.Loop() {
			hb.ping(e, batch)
			hb.mu.Lock()
			hb.popDue(time.Now().Add(2 * time.Hour)) // take e out again
			hb.mu.Unlock()
		}
		hb.remove(e)
	})
}

// What a liveness check's progress mark costs (heartbeats.ping and
// wsEnd.alive take one per check, and one more when the pong is late): on
// a TCP socket, the kernel's count of acknowledged bytes (TCP_INFO, a
// system call); without one (here a pipe), two atomic loads. Compare with
// BenchmarkPing's round trip, which each mark goes with.
func BenchmarkProgressMark(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(b, err)
	defer c.Close()
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	for _, tc := range []struct {
		name string
		conn net.Conn
	}{{"tcp_info", c}, {"no_tcp", p1}} {
		pc := newProgressConn(tc.conn, time.Minute)
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if m := pc.mark(); m.kernel != (tc.name == "tcp_info") {
					b.Fatalf("mark %+v", m)
				}
			}
		})
	}
}
