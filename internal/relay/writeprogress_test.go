package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// pacedConn is a reader's socket that takes pacedRead bytes every
// pacedEvery until stopped, then nothing: its kernel acknowledges what it
// reads, in the small steps its small receive buffer sets.
type pacedConn struct {
	net.Conn
	stopped atomic.Bool
	got     atomic.Int64
	quit    chan struct{} // closed at the test's end: a stopped reader returns
}

const (
	pacedRead  = 4 << 10
	pacedEvery = 40 * time.Millisecond // 100 KiB/s: six progressChunks a second
)

func (c *pacedConn) Read(p []byte) (int, error) {
	for c.stopped.Load() { // the socket stays open; nothing is taken
		select {
		case <-c.quit:
			return 0, net.ErrClosed
		case <-time.After(pacedEvery):
		}
	}
	time.Sleep(pacedEvery)
	n, err := c.Conn.Read(p[:min(len(p), pacedRead)])
	c.got.Add(int64(n))
	return n, err
}

// pacedRelay serves a relay with options o, logging to logs, over plain
// TCP or TLS; it returns the relay, its ws:// or wss:// URL and a transport
// that trusts it.
func pacedRelay(t *testing.T, o Options, logs *logBuffer, useTLS bool) (*Relay, string, *http.Transport) {
	t.Helper()
	rl, err := New(o, Deps{Log: slog.New(slog.NewJSONHandler(logs, nil))})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/server", rl.ServeBinary)
	mux.HandleFunc("/v1/client", rl.ServePhone)
	srv := httptest.NewUnstartedServer(mux)
	scheme := "ws://"
	tr := &http.Transport{}
	if useTLS {
		srv.StartTLS()
		scheme = "wss://"
		tr.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	} else {
		srv.Start()
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rl.Shutdown(ctx)
		srv.Close()
	})
	return rl, scheme + srv.Listener.Addr().String(), tr
}

// dialPacedBinary connects a binary for sid whose socket has an 8 KiB
// receive buffer (the kernel's acknowledgements come a few KiB at a time)
// and is read at pacedRead per pacedEvery until stopped.
func dialPacedBinary(t *testing.T, url string, tr *http.Transport) (*websocket.Conn, *pacedConn) {
	t.Helper()
	var paced *pacedConn
	binTr := tr.Clone()
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<10) })
	}}
	binTr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		paced = &pacedConn{Conn: c, quit: make(chan struct{})}
		return paced, nil
	}
	bin, _, err := websocket.Dial(context.Background(), url+"/v1/server", &websocket.DialOptions{HTTPHeader: binaryHeaders(sid), HTTPClient: &http.Client{Transport: binTr}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = bin.CloseNow() })
	t.Cleanup(func() { close(paced.quit) }) // first: CloseNow waits for the reader
	bin.SetReadLimit(1 << 20)
	return bin, paced
}

// The write timeout counts what the peer acknowledges, not what the
// kernel lets a blocked write hand it. Linux wakes a blocked writer only
// once a third of the send buffer is free (about 170 KiB with a 256 KiB
// --socket-send-buffer, which it doubles), so a daemon reading 100 KiB/s
// (six progressChunks per second, each acknowledged in a few KiB: a
// starved test process still reads well over one) left the relay's write
// blocked for longer than a 1 s --write-timeout and was closed 1011
// "write timeout" within two seconds of load, on plain TCP as under TLS.
// Now it stays up for four write timeouts of load; once it stops reading,
// it is closed 1011 "write timeout" no sooner than the timeout after its
// last counted progress (what it took before it stopped, less than a
// progressChunk, counts toward the stall) and within the timeout and a
// sixteenth (checkDivisor) of it, plus the time the buffers take to fill
// and the load's latency.
func TestWriteTimeout_SlowReaderAcknowledgingProgressStays_StalledOneClosed(t *testing.T) {
	for _, tls := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "tls"}[tls], func(t *testing.T) {
			testWriteTimeoutCountsAcks(t, tls)
		})
	}
}

func testWriteTimeoutCountsAcks(t *testing.T, useTLS bool) {
	const writeTimeout = time.Second
	o := fastOptions()
	o.WriteTimeout = writeTimeout
	o.SocketSendBuffer = 2 * DefaultSendBuffer // the kernel's wake-up step is the point
	logs := &logBuffer{}
	rl, url, tr := pacedRelay(t, o, logs, useTLS)
	ctx := context.Background()

	// The binary: an 8 KiB receive buffer (the kernel's acknowledgements
	// come a few KiB at a time) read at a steady 100 KiB/s.
	bin, paced := dialPacedBinary(t, url, tr)
	ended := make(chan error, 1)
	go func() {
		for {
			if _, _, err := bin.Read(ctx); err != nil {
				ended <- err
				return
			}
		}
	}()

	// Two phones keep the binary's writes blocked with 15 KiB frames.
	stop := make(chan struct{})
	defer close(stop)
	frame := []byte(`{"pad":"` + strings.Repeat("p", 15<<10-10) + `"}`)
	for range 2 {
		c, _, err := websocket.Dial(ctx, url+"/v1/client", &websocket.DialOptions{HTTPHeader: phoneHeaders(sid), HTTPClient: &http.Client{Transport: tr}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.CloseNow() })
		go func() { _, _, _ = c.Read(ctx) }()
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c.Write(ctx, websocket.MessageText, frame) != nil {
					return
				}
			}
		}()
	}

	start := time.Now()
	for time.Since(start) < 4*writeTimeout {
		if c := binaryCloses(logs); len(c) > 0 {
			t.Fatalf("a binary that took %d KiB in %v was closed: %v", paced.got.Load()>>10, time.Since(start).Round(time.Millisecond), c[0])
		}
		select {
		case err := <-ended:
			t.Fatalf("a binary that took %d KiB in %v was closed (close %d)", paced.got.Load()>>10, time.Since(start).Round(time.Millisecond), websocket.CloseStatus(err))
		case <-time.After(20 * time.Millisecond):
		}
	}
	// It was slow: phones' frames waited a whole write timeout for a turn
	// (a write to it was blocked that long)...
	require.Positive(t, testutil.ToFloat64(rl.m.FramesDropped.WithLabelValues(string(DropBinaryBusy))), "the binary was never slower than its load")
	// ...and alive: it took well over a progressChunk per write timeout.
	took, loaded := paced.got.Load(), time.Since(start)
	require.Greater(t, took*int64(writeTimeout)/int64(loaded), int64(2*progressChunk), "the reader took too little to prove anything")
	// What it took since the last progressChunk counted counts toward the
	// stall: up to a progressChunk's time at its pace.
	uncounted := time.Duration(progressChunk * int64(loaded) / took)

	// Stalled: it takes nothing from now on.
	paced.stopped.Store(true)
	stalled := time.Now()
	var closed []map[string]any
	require.Eventually(t, func() bool { closed = binaryCloses(logs); return len(closed) > 0 }, 5*writeTimeout, 10*time.Millisecond, "a binary that stopped reading was never closed")
	closedAfter := time.Since(stalled)
	t.Logf("took %d KiB in %v of load; closed %v after it stopped", took>>10, loaded.Round(time.Millisecond), closedAfter.Round(time.Millisecond))
	require.Equal(t, float64(CodeInternal), closed[0]["close_code"], "close code: %v", closed[0])
	require.Equal(t, "write_timeout", closed[0]["reason"], "close cause: %v", closed[0])
	require.GreaterOrEqual(t, closedAfter, writeTimeout-uncounted, "closed before a write could have waited the timeout")
	// The buffers fill within a few hundred milliseconds at this load, the
	// close is at most writeTimeout/checkDivisor late, and the log line
	// waits for CloseTimeout (200 ms): 2 s leaves the rest for a loaded CPU.
	require.Less(t, closedAfter, 2*writeTimeout+o.CloseTimeout, "a stalled binary outlived the write timeout's bound")
}

// binaryCloses returns the relay's "binary closed" log lines.
func binaryCloses(logs *logBuffer) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["event"] == "binary_closed" {
			out = append(out, m)
		}
	}
	return out
}

// The heartbeat's liveness rule (a late pong is forgiven when the peer
// moved bytes meanwhile) counts what the peer acknowledged, also while one
// long write to it is in flight. On plain TCP a message goes to the kernel
// in one write, and the bytes it hands over were counted only when it
// returned: a daemon reading a 400 KiB frame at 100 KiB/s showed no
// progress to a ping queued behind that write, and was closed 1011
// "pong_timeout" a pong timeout into it, while alive and reading. Now the
// binary gets the whole frame and stays up; under TLS (16 KiB pieces) it
// always did.
func TestHeartbeat_SlowReaderBehindOneLongWrite_StaysUp(t *testing.T) {
	for _, tls := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "tls"}[tls], func(t *testing.T) {
			testHeartbeatBehindLongWrite(t, tls)
		})
	}
}

func testHeartbeatBehindLongWrite(t *testing.T, useTLS bool) {
	o := fastOptions()
	o.PingInterval = 200 * time.Millisecond
	o.PongTimeout = time.Second // a starved test reader still acknowledges 1 KiB in it
	o.WriteTimeout = 2 * time.Second
	o.MaxMessageBytes = 512 << 10
	o.PhoneQueueBytes = 1 << 20
	logs := &logBuffer{}
	_, url, tr := pacedRelay(t, o, logs, useTLS)
	ctx := context.Background()

	// The binary reads at a steady 100 KiB/s through an 8 KiB receive
	// buffer, and answers pings as it reads.
	bin, paced := dialPacedBinary(t, url, tr)
	got := make(chan int, 1)
	ended := make(chan error, 1)
	go func() {
		for {
			_, msg, err := bin.Read(ctx)
			if err != nil {
				ended <- err
				return
			}
			got <- len(msg)
		}
	}()

	phone, _, err := websocket.Dial(ctx, url+"/v1/client", &websocket.DialOptions{HTTPHeader: phoneHeaders(sid), HTTPClient: &http.Client{Transport: tr}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = phone.CloseNow() })
	phone.SetReadLimit(1 << 20)
	go func() { _, _, _ = phone.Read(ctx) }()
	frame := []byte(`{"pad":"` + strings.Repeat("p", 400<<10) + `"}`)
	start := time.Now()
	require.NoError(t, phone.Write(ctx, websocket.MessageText, frame))
	select {
	case n := <-got:
		require.Greater(t, n, len(frame), "the binary's envelope carries the whole frame")
		t.Logf("%d KiB at %d KiB/s: %v, pinged every %v, pong timeout %v", n>>10, pacedRead*int(time.Second/pacedEvery)>>10,
			time.Since(start).Round(time.Millisecond), o.PingInterval, o.PongTimeout)
	case err := <-ended:
		t.Fatalf("a binary reading at 100 KiB/s was closed %d after %v: %v (logged: %v)", websocket.CloseStatus(err),
			time.Since(start).Round(time.Millisecond), err, binaryCloses(logs))
	case <-time.After(20 * time.Second):
		t.Fatal("the frame never arrived")
	}
	require.GreaterOrEqual(t, paced.got.Load(), int64(len(frame)), "the frame came through the paced socket")
	require.Greater(t, time.Since(start), 2*o.PongTimeout, "the write was too short to have a ping wait behind it")
	require.Empty(t, binaryCloses(logs))
}
