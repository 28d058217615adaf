package relay

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// slowBinary is a live daemon on a slow downlink: a 4 KiB receive buffer
// and one message taken every 100 ms. It answers pings (the library does so
// inside Read), so it is slow, never dead.
type slowBinary struct {
	c    *websocket.Conn
	got  atomic.Int64
	from sync.Map // conn_id -> struct{}: phones whose frames arrived
	end  chan error
}

// smallBufferClient dials with a 4 KiB socket buffer (opt is SO_RCVBUF or
// SO_SNDBUF), so that the kernel, not the test, sets a slow pace.
func smallBufferClient(opt int) *http.Client {
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, 4096)
		})
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

func (h *harness) dialSlowBinary(id string, every time.Duration) *slowBinary {
	h.t.Helper()
	hc := smallBufferClient(syscall.SO_RCVBUF)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	before := h.rl.Stats().Binaries
	c, _, err := websocket.Dial(ctx, h.ws+"/v1/server", &websocket.DialOptions{HTTPHeader: binaryHeaders(id), HTTPClient: hc})
	require.NoError(h.t, err)
	c.SetReadLimit(1 << 22)
	h.t.Cleanup(func() { _ = c.CloseNow() })
	b := &slowBinary{c: c, end: make(chan error, 1)}
	go func() {
		for {
			_, msg, err := c.Read(context.Background())
			if err != nil {
				b.end <- err
				return
			}
			b.got.Add(1)
			if i := strings.Index(string(msg), `"conn_id":"`); i >= 0 && len(msg) >= i+11+23 {
				b.from.Store(string(msg[i+11:i+11+23]), struct{}{})
			}
			time.Sleep(every)
		}
	}()
	h.eventually(func() bool { return h.rl.Stats().Binaries > before }, "slow binary never claimed")
	return b
}

func (b *slowBinary) senders() int {
	n := 0
	b.from.Range(func(any, any) bool { n++; return true })
	return n
}

// floodFromPhones makes n phones each send frames of size bytes as fast as
// the relay takes them until stop is closed.
func (h *harness) floodFromPhones(id string, n, size int, stop <-chan struct{}) []*peer {
	h.t.Helper()
	frame := []byte(`{"pad":"` + strings.Repeat("p", size-10) + `"}`)
	var phones []*peer
	for range n {
		// A small send buffer keeps each client's writes short, so its
		// library's pongs never wait long behind them.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, _, err := websocket.Dial(ctx, h.ws+"/v1/client", &websocket.DialOptions{HTTPHeader: phoneHeaders(id), HTTPClient: smallBufferClient(syscall.SO_SNDBUF)})
		cancel()
		require.NoError(h.t, err)
		h.t.Cleanup(func() { _ = c.CloseNow() })
		p := &peer{t: h.t, c: c, msgs: make(chan []byte, 4096), end: make(chan error, 1)}
		go p.readLoop()
		phones = append(phones, p)
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				// A patient client: the relay may hold its frame while
				// it waits for the binary.
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := p.c.Write(ctx, websocket.MessageText, frame)
				cancel()
				if err != nil && ctx.Err() == nil {
					return
				}
			}
		}()
	}
	return phones
}

// Issue 13 item 1: with --write-timeout 1s and a live binary that reads
// slowly, sixteen phones sending 15 KiB frames used to get the binary closed
// 1011 within 2 s, because each send's clock ran while it queued behind the
// other phones' writes. The write timeout now measures one write that makes
// no progress: the phones are slowed or lose frames, the binary stays, and
// neither the heartbeat nor a conflict probe declares it dead.
func TestSlowBinary_ManyPhones_BinaryStaysUp(t *testing.T) {
	h := newHarness(t, func(o *Options) {
		o.WriteTimeout = time.Second
		o.PingInterval = 200 * time.Millisecond
		o.PongTimeout = 2 * time.Second
		o.ProbeTimeout = 500 * time.Millisecond
	})
	bin := h.dialSlowBinary(sid, 100*time.Millisecond)
	stop := make(chan struct{})
	defer close(stop)
	phones := h.floodFromPhones(sid, 16, 15<<10, stop)

	// Two seconds of load was enough to close it before the fix.
	select {
	case err := <-bin.end:
		t.Fatalf("slow but live binary closed under phone load: %v (close %d)", err, websocket.CloseStatus(err))
	case <-time.After(2500 * time.Millisecond):
	}

	// A conflicting claim probes the incumbent while it is loaded: it is
	// alive (it takes bytes), so the newcomer is refused.
	rival := h.connect("/v1/server", binaryHeaders(sid), true)
	rival.closed(CodeConflict)

	select {
	case err := <-bin.end:
		t.Fatalf("slow binary closed after the probe: %v (close %d)", err, websocket.CloseStatus(err))
	default:
	}
	require.Equal(t, 1, h.claims(), "the slot changed hands")
	require.Greater(t, bin.got.Load(), int64(10), "the binary was not fed")
	require.Greater(t, bin.senders(), 1, "only one phone was carried")
	// Phones that leave now produce close notices, which queue for the
	// binary like frames (phone.go) and must not close it either.
	for _, p := range phones[:4] {
		_ = p.c.CloseNow()
	}
	select {
	case err := <-bin.end:
		t.Fatalf("slow binary closed by close notices: %v (close %d)", err, websocket.CloseStatus(err))
	case <-time.After(time.Second):
	}
	for i, p := range phones[4:] {
		select {
		case err := <-p.end:
			t.Fatalf("phone %d closed: %v", i, err)
		default:
		}
	}
}

// Issue 13, also-check: when the library closes the socket itself (a ping
// whose write outlived its 5 s), the read loop's error must not be recorded
// as the peer's 1001: it is a write failure, and the binary's close notice
// and the closes metric must say so.
func TestPeerCause_OwnSocketClosed_IsWriteFailureNot1001(t *testing.T) {
	c := peerCause(fmt.Errorf("failed to get reader: %w", net.ErrClosed))
	require.Equal(t, CodeInternal, c.code)
	require.False(t, c.byPeer, "recorded as the peer's doing")
	require.True(t, c.notify)
	// A peer that vanished is still 1001.
	require.Equal(t, CodeGoingAway, peerCause(io.EOF).code)
}

// tcpPair returns both ends of a loopback TCP connection; the reading end
// has a 4 KiB receive buffer and the writing end a 4 KiB send buffer.
func tcpPair(t *testing.T) (w, r net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	r, err = d.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	w = <-acc
	require.NotNil(t, w)
	require.NoError(t, w.(*net.TCPConn).SetWriteBuffer(4096))
	t.Cleanup(func() { _ = w.Close(); _ = r.Close() })
	return w, r
}

// wrappedConn hides the *net.TCPConn under it, as TLS or PROXY does.
type wrappedConn struct{ net.Conn }

// The write timeout bounds a stall, not a write: 256 KiB to a reader that
// drains its 4 KiB buffer every 25 ms (16 KiB in a fifth of the timeout,
// the whole write in three times it) succeeds; the same write to a reader
// that stopped fails after about the timeout. Both on a plain TCP socket
// (written whole, the peer's acknowledged bytes counted as progress) and
// under a wrapper that hides the socket (written in progressChunk pieces,
// a piece taken counted). The timeout is 500 ms so that the
// margins hold when the process waits a few hundred milliseconds for a
// CPU (a loaded 2-core machine).
func TestProgressConn_SlowReaderOutlastsTimeout_StalledReaderFails(t *testing.T) {
	for _, wrap := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "wrapped"}[wrap], func(t *testing.T) {
			testProgressConnSlowAndStalled(t, wrap)
		})
	}
}

func testProgressConnSlowAndStalled(t *testing.T, wrap bool) {
	w, r := tcpPair(t)
	if wrap {
		w = wrappedConn{w}
	}
	const timeout = 500 * time.Millisecond
	pc := newProgressConn(w, timeout)
	require.Equal(t, wrap, pc.piece == progressChunk)
	go func() {
		buf := make([]byte, 8<<10)
		for {
			if _, err := r.Read(buf); err != nil {
				return
			}
			time.Sleep(25 * time.Millisecond)
		}
	}()
	msg := make([]byte, 256<<10)
	start := time.Now()
	n, err := pc.Write(msg)
	require.NoError(t, err)
	require.Equal(t, len(msg), n)
	require.Greater(t, time.Since(start), 2*timeout, "the reader was not slow enough to prove anything")

	w2, _ := tcpPair(t) // nobody reads
	if wrap {
		w2 = wrappedConn{w2}
	}
	pc2 := newProgressConn(w2, timeout)
	done := make(chan error, 1)
	go func() { _, err := pc2.Write(msg); done <- err }()
	select {
	case err = <-done:
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	case <-time.After(3 * time.Second):
		_ = w2.Close() // unblocks the write
		<-done
		t.Fatal("a write to a reader that stopped did not time out")
	}
}

// dialStalledPhone joins a phone that never reads, with a 4 KiB receive
// buffer, and returns its conn_id (read from bin's hello envelope).
func (h *harness) dialStalledPhone(id string, bin *peer) string {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, h.ws+"/v1/client", &websocket.DialOptions{HTTPHeader: phoneHeaders(id), HTTPClient: smallBufferClient(syscall.SO_RCVBUF)})
	require.NoError(h.t, err)
	h.t.Cleanup(func() { _ = c.CloseNow() })
	require.NoError(h.t, c.Write(ctx, websocket.MessageText, []byte(`{"type":"hello"}`)))
	return bin.envelope().ConnID
}

// stuckInFlight sends frames of frameBytes to a stalled phone until one is
// stuck mid-write with nothing queued behind it: the relay-wide queue then
// holds exactly that frame's charge more than before.
func (h *harness) stuckInFlight(bin *peer, connID string, frameBytes int) {
	h.t.Helper()
	frame := fmt.Sprintf(`{"pad":%q}`, strings.Repeat("s", frameBytes-10))
	cost := int64(len(frame)) + itemOverhead
	before := stableQueued(h.t, h)
	for range 64 {
		bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":%s}`, connID, frame))
		// A reading sibling round trip is not needed: stableQueued waits
		// for the writer to take the frame and block or finish.
		time.Sleep(20 * time.Millisecond)
		if got := stableQueued(h.t, h) - before; got == cost {
			return
		} else if got != 0 {
			h.t.Fatalf("queue grew by %d, want 0 or %d", got, cost)
		}
	}
	h.t.Fatal("the stalled phone's kernel buffers never filled")
}

// Issue 13 item 2: at the relay-wide ceiling, shedding must free bytes. A
// tenant whose stalled phones each hold one frame mid-write (nothing
// queued) used to be picked, nothing was freed (the in-flight charge stayed
// until the write failed), the single retry failed, and another tenant's
// idle, reading phone was closed 1011 "backlog full". Now the victim is
// chosen by releasable bytes, its in-flight charge is released at once (its
// socket dropped), and shedding goes on until the frame fits.
func TestRelayWideShedding_InFlightOnlyVictims_BystanderKeepsFrame(t *testing.T) {
	const frameBytes = 15 << 10
	const stalledPhones = 4
	cost := int64(frameBytes + itemOverhead)
	h := newHarness(t, func(o *Options) {
		o.MaxQueuedBytes = 64 << 10 // the four in-flight frames and less than 4 KiB more
		o.PhoneQueueBytes = 64 << 10
		o.WriteTimeout = time.Hour
	})
	attacker := h.dialBinary("attacker")
	var stalled []string
	for range stalledPhones {
		stalled = append(stalled, h.dialStalledPhone("attacker", attacker))
	}
	for _, id := range stalled {
		h.stuckInFlight(attacker, id, frameBytes)
	}
	require.Equal(t, stalledPhones*cost, h.rl.QueuedBytes(), "each stalled phone holds one frame in flight")

	victimBin := h.dialBinary("victim")
	victim, victimID := h.dialPhone("victim", victimBin)
	// 4 KiB more crosses the 64 KiB ceiling.
	victimBin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"pad":%q}}`, victimID, strings.Repeat("v", 4<<10)))
	require.Contains(t, victim.next(), `"pad":"vvvv`, "the bystander's frame must be delivered")
	env := attacker.envelope()
	require.Contains(t, stalled, env.ConnID, "an attacker phone is the one shed")
	require.Equal(t, 1011, env.CloseCode)
	require.Equal(t, 1.0, dropCount(h, DropRelayBacklog), "one shed phone frees enough: no more tenants' phones closed than needed")
	// The next frames fit too: the shed phone's charge is gone, not held
	// until its write fails, and it is not picked again.
	for i := range 3 {
		victimBin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"n":%d,"pad":%q}}`, victimID, i, strings.Repeat("w", 4<<10)))
		require.Contains(t, victim.next(), fmt.Sprintf(`"n":%d`, i))
	}
	victim.silent(100 * time.Millisecond)
	require.LessOrEqual(t, h.rl.QueuedBytes(), int64(64<<10))
	require.Zero(t, dropCount(h, DropPhoneBacklog))

	// Every charge returns to zero once the stalled phones are gone: the
	// early release and the failed write's done never both count.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, h.rl.Shutdown(ctx))
	require.Equal(t, int64(0), h.rl.QueuedBytes())
}

// Issue 13, also-check: a phone shed at the ceiling while its binary's close
// directive is queued is closed as the binary asked, without a 1011 close
// notice the binary never asked for.
func TestRelayWideShedding_QueuedDirectiveHonoured_NoNotice(t *testing.T) {
	const frameBytes = 15 << 10
	h := newHarness(t, func(o *Options) {
		o.MaxQueuedBytes = 64 << 10
		o.PhoneQueueBytes = 64 << 10
		o.WriteTimeout = time.Hour
	})
	attacker := h.dialBinary("attacker")
	var stalled []string
	for range 4 {
		stalled = append(stalled, h.dialStalledPhone("attacker", attacker))
	}
	for _, id := range stalled {
		h.stuckInFlight(attacker, id, frameBytes)
	}
	for _, id := range stalled {
		// A close directive queues behind each stuck frame.
		attacker.send(fmt.Sprintf(`{"conn_id":%q,"close_code":4401,"frame":null}`, id))
	}
	h.eventually(func() bool { return h.rl.QueuedBytes() == 4*(frameBytes+2*itemOverhead) }, "directives not queued: %d", h.rl.QueuedBytes())
	victimBin := h.dialBinary("victim")
	victim, victimID := h.dialPhone("victim", victimBin)
	victimBin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"pad":%q}}`, victimID, strings.Repeat("v", 4<<10)))
	require.Contains(t, victim.next(), `"pad":"vvvv`)
	require.Equal(t, 1.0, dropCount(h, DropRelayBacklog), "one phone shed")
	attacker.silent(300 * time.Millisecond) // no close notice for a directive close
	h.eventually(func() bool {
		return testutil.ToFloat64(h.rl.m.Closes.WithLabelValues("phone", "directive")) == 1
	}, "the shed phone was not closed as a directive close")
}

// shed releases a frame that is mid-write at once (the room must exist when
// the retried push runs, not when the dropped socket's write fails), and
// the writer's later done releases nothing more: the budget never goes
// negative and returns to zero.
func TestOutboxShed_ReleasesInFlightAtOnce_DoneReleasesNothingMore(t *testing.T) {
	budget := &byteBudget{limit: 1 << 20}
	o := newOutbox(1<<20, budget)
	inFlight := outItem{frame: make([]byte, 1000)}
	queued := outItem{frame: make([]byte, 500), closeCode: 4401}
	require.Equal(t, DropReason(""), o.push(inFlight))
	it, ok := o.next()
	require.True(t, ok)
	require.Equal(t, DropReason(""), o.push(queued))
	require.Equal(t, inFlight.cost()+queued.cost(), budget.used.Load())
	require.Equal(t, inFlight.cost()+queued.cost(), o.backlog.Load(), "releasable bytes include the in-flight frame")

	released, wasInFlight, directive := o.shed()
	require.Equal(t, inFlight.cost()+queued.cost(), released)
	require.True(t, wasInFlight)
	require.Equal(t, 4401, directive)
	require.Zero(t, budget.used.Load(), "in-flight charge still held after shed")
	require.Zero(t, o.backlog.Load())

	o.done(it) // the writer's failed write returns
	require.Zero(t, budget.used.Load(), "released twice")
	require.Equal(t, DropPhoneClosing, o.push(outItem{frame: []byte("{}")}))
}

// Issue 13 item 5: the smallest per-phone queue the options accept holds
// one maximum-size message with its per-item charge: the largest legal
// envelope reaches an idle phone instead of closing it 1011.
func TestPhoneQueue_SmallestAcceptedHoldsLargestFrame(t *testing.T) {
	o := fastOptions()
	o.PhoneQueueBytes = o.MaxMessageBytes
	require.ErrorIs(t, o.Validate(), ErrInvalidOptions, "a queue that cannot hold one frame and its charge")
	h := newHarness(t, func(o *Options) { o.PhoneQueueBytes = o.MaxMessageBytes + itemOverhead })
	bin := h.dialBinary(sid)
	p, id := h.dialPhone(sid, bin)
	head := fmt.Sprintf(`{"conn_id":%q,"frame":{"p":"`, id)
	env := head + strings.Repeat("x", int(fastOptions().MaxMessageBytes)-len(head)-3) + `"}}`
	require.Len(t, env, int(fastOptions().MaxMessageBytes))
	bin.send(env)
	require.Contains(t, p.next(), `"p":"xxxx`)
	p.silent(100 * time.Millisecond)
}
