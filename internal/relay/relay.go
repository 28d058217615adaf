// Package relay is the routing core: it accepts binaries and phones as
// WebSockets, keeps the in-memory registry of server-ids, and forwards opaque
// JSON frames between them. It never reads inner frames, never authenticates
// phones and persists nothing.
package relay

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pyrycode/relay/internal/metrics"
)

// Deps are the relay's collaborators.
type Deps struct {
	Log     *slog.Logger     // nil discards
	Metrics *metrics.Metrics // nil creates a private set
	// RemoteAddr returns the client address to log for a request (the
	// admission layer's resolved client IP). Nil uses r.RemoteAddr.
	RemoteAddr func(*http.Request) string
	// Waker takes binaries' push wakes (internal/push). Nil drops them,
	// counted as push_unconfigured.
	Waker Waker
	// OnReject, if set, is called once per upgrade request the core refuses
	// (after counting it), with the reason and the request, so the caller
	// can log who was refused. It must be fast and safe for concurrent use.
	OnReject func(RejectReason, *http.Request)
}

// Waker takes a binary's push wake off its read loop. Wake must return at
// once, whatever happens to the wake (send it on another goroutine, or drop
// and count it): the loop that calls it is the one routing every frame of
// the binary to its phones. token is a secret; the Waker owns its hygiene.
type Waker interface {
	Wake(serverID, platform, token string)
}

// Relay routes frames between binaries and their phones.
type Relay struct {
	opts       Options
	log        *slog.Logger
	m          *metrics.Metrics
	reg        *registry
	budget     *byteBudget
	hb         *heartbeats // the one ping scheduler for every connection
	writers    *writerPool // the phones' outbox writers
	remoteAddr func(*http.Request) string
	onReject   func(RejectReason, *http.Request)
	waker      Waker
	// Per-frame counters, resolved once: a label lookup per frame is
	// avoidable work on the hot path.
	routedToBinary, routedToPhone prometheus.Counter

	mu       sync.Mutex
	conns    map[*wsEnd]struct{} // every accepted connection, for shutdown
	draining bool
	wg       sync.WaitGroup // running handlers

	// Cluster mode (remote.go); bp is nil on a single instance.
	bp      Backplane
	self    string
	proxMu  sync.Mutex
	proxies map[proxyKey]*phoneConn

	// gates runs each server-id's claims one at a time (claimgate.go).
	gates claimGates

	// hookStubPassedStop, set only by tests before any traffic, runs in a
	// stub's dispatch between its stop check and its write: it holds a
	// frame at the point where a lost stub's notice could overtake it.
	hookStubPassedStop func()
}

// New returns a relay with validated options.
func New(opts Options, d Deps) (*Relay, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	rl := &Relay{opts: opts, log: d.Log, m: d.Metrics, remoteAddr: d.RemoteAddr, onReject: d.OnReject, waker: d.Waker, conns: make(map[*wsEnd]struct{}),
		writers: newWriterPool()}
	if rl.log == nil {
		rl.log = slog.New(slog.NewJSONHandler(io.Discard, nil))
	}
	if rl.m == nil {
		rl.m = metrics.New()
	}
	if rl.remoteAddr == nil {
		rl.remoteAddr = func(r *http.Request) string { return r.RemoteAddr }
	}
	rl.routedToBinary = rl.m.FramesRouted.WithLabelValues("to_binary")
	rl.routedToPhone = rl.m.FramesRouted.WithLabelValues("to_phone")
	for _, role := range []string{"binary", "phone"} {
		for _, code := range closeCodes {
			rl.m.Closes.WithLabelValues(role, strconv.Itoa(int(code)))
		}
		rl.m.Closes.WithLabelValues(role, "peer")
		rl.m.Closes.WithLabelValues(role, "directive")
	}
	for _, reason := range AllDropReasons {
		rl.m.FramesDropped.WithLabelValues(string(reason))
	}
	for _, reason := range AllRejectReasons {
		rl.m.Rejected.WithLabelValues(string(reason))
	}
	rl.budget = &byteBudget{limit: opts.MaxQueuedBytes}
	rl.hb = newHeartbeats(opts.PingInterval, opts.PongTimeout, opts.CloseTimeout)
	rl.m.SetQueuedBytesSource(rl.budget.used.Load)
	rl.reg = newRegistry(opts.GracePeriod, opts.MaxPhones, nil, func(ps []*phoneConn) {
		for _, p := range ps {
			if p.link != nil { // a remote phone: its home closes it
				rl.stubEvicted(p, int(CodeNoBinary))
				continue
			}
			p.end(closeCause{code: CodeNoBinary, reason: reasonNoBinary})
		}
	})
	rl.reg.onRemove = rl.slotRemoved
	rl.reg.onChange = func(s RegistryStats) {
		rl.m.Binaries.Set(float64(s.Binaries))
		rl.m.Phones.Set(float64(s.Phones))
		rl.m.GraceSlots.Set(float64(s.Grace))
	}
	return rl, nil
}

// Stats returns the registry's sizes (for /healthz).
func (rl *Relay) Stats() RegistryStats { return rl.reg.Stats() }

// Draining reports whether Shutdown has begun.
func (rl *Relay) Draining() bool {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return rl.draining
}

// QueuedBytes returns the bytes queued for phones relay-wide.
func (rl *Relay) QueuedBytes() int64 { return rl.budget.used.Load() }

// acceptOptions: no compression (no decompression bombs, no CRIME-style
// length leaks, constant memory per connection). The Origin check is off
// because browsers cannot set the x-pyrycode-* headers on a WebSocket, so a
// cross-site page cannot complete either upgrade anyway.
var acceptOptions = &websocket.AcceptOptions{
	InsecureSkipVerify: true,
	CompressionMode:    websocket.CompressionDisabled,
}

// accept upgrades the request. From here on the relay's own per-message
// read timeout, write timeout and heartbeat govern the socket, so the HTTP
// server's read and write deadlines are cleared first. net/http (Go 1.26+)
// also clears them on hijack; doing it here keeps the guarantee if the
// server in front ever changes (TestUpgradedConnection_OutlivesHTTPServerTimeouts).
func (rl *Relay) accept(w http.ResponseWriter, r *http.Request) *wsEnd {
	clearDeadlines(w)
	hc := &hijackCapture{ResponseWriter: w, writeTimeout: rl.opts.WriteTimeout}
	ws, err := websocket.Accept(hc, r, acceptOptions)
	if err != nil {
		rl.countReject(RejectBadUpgrade, r)
		return nil // the library answered; the server's body filter keeps it generic
	}
	ws.SetReadLimit(rl.opts.MaxMessageBytes)
	limitSendBuffer(hc.conn, rl.opts.SocketSendBuffer)
	e := newWSEnd(ws, hc.conn, rl.opts.CloseTimeout)
	e.pc = hc.pc
	return e
}

func clearDeadlines(w http.ResponseWriter) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
}

// hijackCapture keeps the raw connection the WebSocket library hijacks, so
// the relay can drop it when a close handshake stalls, and puts a
// progressConn under the library's writes: the relay's write timeout is
// then a per-chunk stall bound enforced on the socket, and the library is
// never handed a write deadline (its deadline closes the connection, and
// would count the time a write waits for its turn).
type hijackCapture struct {
	http.ResponseWriter
	writeTimeout time.Duration
	conn         net.Conn
	pc           *progressConn
}

func (h *hijackCapture) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	h.conn = c
	if err != nil {
		return c, brw, err
	}
	// The 101 response is already flushed; anything still buffered goes
	// out first so the reset below loses nothing.
	if err := brw.Writer.Flush(); err != nil {
		return c, brw, err
	}
	h.pc = newProgressConn(c, h.writeTimeout)
	brw.Writer.Reset(h.pc)
	return h.pc, brw, nil
}

func (h *hijackCapture) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// badRequest answers 400 with an empty body: no hint of which header failed.
func (rl *Relay) badRequest(w http.ResponseWriter, r *http.Request) {
	rl.countReject(RejectBadHeaders, r)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusBadRequest)
}

// ServeBinary handles GET /v1/server (and its /v2/server alias).
func (rl *Relay) ServeBinary(w http.ResponseWriter, r *http.Request) {
	h, err := ParseBinaryHeaders(r.Header)
	if err != nil {
		rl.badRequest(w, r)
		return
	}
	// The claim holds its server-id's gate from before the 101 until the
	// slot is installed or the claim refused: a phone that arrives once the
	// binary has its 101 finds the slot, or waits for the claim's outcome.
	// In cluster mode a server-id with no slot here is claimed in the store
	// (another instance probed if need be) before the 101 too, so phones on
	// other instances find it held.
	clearDeadlines(w) // the claim may wait for its turn and the store
	unlock := sync.OnceFunc(rl.gates.lock(h.ServerID))
	defer unlock()
	var early *earlyClaim
	if rl.bp != nil {
		early = rl.claimEarly(h.ServerID)
	}
	ran := false
	rl.serve(w, r, func(e *wsEnd, remote string) func() func() {
		b := &binaryConn{wsEnd: e, rl: rl, turn: make(chan struct{}, 1), serverID: h.ServerID, version: h.Version, ua: h.UserAgent, remote: remote,
			unlock: unlock, early: early}
		return func() func() { ran = true; return b.setUp() }
	})
	if !ran && early != nil && early.err == nil && early.out == ClaimGranted {
		rl.bp.Release(h.ServerID) // no WebSocket after all: the claim goes
	}
}

// ServePhone handles GET /v1/client (and its /v2/client alias).
func (rl *Relay) ServePhone(w http.ResponseWriter, r *http.Request) {
	h, err := ParsePhoneHeaders(r.Header)
	if err != nil {
		rl.badRequest(w, r)
		return
	}
	rl.serve(w, r, func(e *wsEnd, remote string) func() func() {
		p := &phoneConn{wsEnd: e, rl: rl, serverID: h.ServerID, device: h.DeviceName, remote: remote,
			out: newOutbox(rl.opts.PhoneQueueBytes, rl.budget)}
		if rl.opts.ForwardV1Token {
			p.token = h.Token
		}
		return p.setUp
	})
}

// serve upgrades a request whose headers passed, builds its connection with
// newConn, sets it up (claim or join) and serves it for the connection's
// lifetime (the handler, and the admission slot it holds, lasts exactly as
// long as the socket). setUp returns the connection's loop, or nil when the
// connection ended during set-up (refused).
//
// The upgrade and the set-up run on a short-lived goroutine (onFreshStack):
// net/http's hijack (a 3 KiB frame) and the set-up's logging, under the
// server's middlewares, run deeper than 8 KiB, and a handler goroutine that
// went there would keep a 16 KiB stack for the connection's lifetime (the
// garbage collector only shrinks a stack of which under a quarter is in use,
// and a parked read loop uses more). The handler goroutine, which waits on
// the socket, so keeps the stack of the loop alone: 8 KiB less per idle
// connection (docs/performance.md).
func (rl *Relay) serve(w http.ResponseWriter, r *http.Request, newConn func(e *wsEnd, remote string) (setUp func() (loop func()))) {
	remote := rl.remoteAddr(r)
	var e *wsEnd
	var loop func()
	tracked := false
	onFreshStack(func() {
		if e = rl.accept(w, r); e == nil {
			return
		}
		setUp := newConn(e, remote)
		if tracked = rl.track(e); tracked {
			loop = setUp()
		}
	})
	if !tracked {
		return
	}
	defer rl.untrack(e)
	if loop != nil {
		loop()
	}
}

// onFreshStack runs f on a new goroutine and waits for it. A panic in f is
// raised again in the caller, so the server's recovery still sees it.
func onFreshStack(f func()) {
	var recovered any
	panicked := true
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if panicked {
				recovered = recover()
			}
		}()
		f()
		panicked = false
	}()
	<-done
	if panicked {
		panic(recovered)
	}
}

// track registers an accepted connection for shutdown. While draining, the
// connection is closed 1001 at once.
func (rl *Relay) track(e *wsEnd) bool {
	rl.mu.Lock()
	if rl.draining {
		rl.mu.Unlock()
		e.end(closeCause{code: CodeGoingAway, reason: reasonShutdown})
		<-e.gone
		return false
	}
	rl.conns[e] = struct{}{}
	rl.wg.Add(1)
	rl.mu.Unlock()
	return true
}

func (rl *Relay) untrack(e *wsEnd) {
	rl.mu.Lock()
	delete(rl.conns, e)
	rl.mu.Unlock()
	rl.wg.Done()
}

// Shutdown closes every connection with 1001 and waits for their handlers,
// or until ctx ends, after which remaining sockets are dropped without a
// handshake. New upgrades are refused from the first call.
func (rl *Relay) Shutdown(ctx context.Context) error {
	rl.mu.Lock()
	rl.draining = true
	conns := make([]*wsEnd, 0, len(rl.conns))
	for e := range rl.conns {
		conns = append(conns, e)
	}
	rl.mu.Unlock()
	rl.reg.close()
	rl.writers.close()
	for _, e := range conns {
		e.end(closeCause{code: CodeGoingAway, reason: reasonShutdown})
	}
	done := make(chan struct{})
	go func() { rl.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, e := range conns {
			e.dropSocket()
		}
		return ctx.Err()
	}
}

// shedLargestBacklog closes the phone with the most releasable bytes
// relay-wide (phones already ending are skipped) if it has more than p,
// releasing its queue and in-flight charge. It reports whether it closed
// one; the caller retries its push and calls again until the frame fits.
func (rl *Relay) shedLargestBacklog(p *phoneConn) bool {
	victim := rl.reg.largestBacklog()
	if rl.bp != nil {
		// Cluster mode: phones here whose slot is elsewhere (proxies) are
		// in the registry of their owner, not this one, yet their queues
		// are charged here.
		victim = rl.largestProxyBacklog(victim)
	}
	if victim == nil || victim == p || victim.out.backlog.Load() <= p.out.backlog.Load() {
		return false
	}
	victim.shedForRelayBacklog()
	rl.countDrop(DropRelayBacklog)
	return true
}

// wake hands a push wake to the Waker, or drops it when there is none.
func (rl *Relay) wake(serverID string, env binaryEnvelope) {
	if rl.waker == nil {
		rl.countDrop(DropPushUnconfigured)
		return
	}
	rl.waker.Wake(serverID, env.PushPlatform, env.PushToken)
}

// countDrop counts one frame dropped for reason; the caller drops it.
func (rl *Relay) countDrop(reason DropReason) {
	rl.m.FramesDropped.WithLabelValues(string(reason)).Inc()
}

// countReject counts one upgrade request refused for reason; the caller
// answers it.
func (rl *Relay) countReject(reason RejectReason, r *http.Request) {
	rl.m.Rejected.WithLabelValues(string(reason)).Inc()
	if rl.onReject != nil {
		rl.onReject(reason, r)
	}
}

// countClose counts a connection's end. The label is the relay's own close code,
// "peer", or "directive": a code a peer chose (its own close, or a binary's
// close directive) is attacker input and stays out of labels.
func (rl *Relay) countClose(role string, c closeCause) {
	cause := strconv.Itoa(int(c.code))
	switch {
	case c.byPeer:
		cause = "peer"
	case c.directive:
		cause = "directive"
	}
	rl.m.Closes.WithLabelValues(role, cause).Inc()
}
