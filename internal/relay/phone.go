package relay

import (
	"context"
	"sync"

	"github.com/coder/websocket"
)

// phoneConn is one phone's connection. Its read loop runs in the HTTP
// handler's goroutine; its writer drains its outbox in another.
type phoneConn struct {
	*wsEnd
	rl       *Relay
	serverID string
	connID   string // set by registry.join
	device   string // sanitised
	remote   string
	// token is kept only when ForwardV1Token is on, and only until the
	// first envelope carries it.
	token string

	slot        *slot       // set by registry.join
	idx         int         // place in registry.phones; guarded by its lock
	joinedUnder *binaryConn // binary holding the slot at join; nil in grace
	out         *outbox

	rd      msgReader
	writers sync.WaitGroup // the outbox's writer, while one runs
	// Cluster mode (remote.go): route is set when this socket's slot is on
	// another instance; link is set when this is a stub in a slot here for
	// a phone whose socket is on another instance (it has no wsEnd).
	route *proxyRoute
	link  *stubLink
}

// initIO sets up the reused reader; setUp calls it before any I/O.
func (p *phoneConn) initIO() {
	opts := &p.rl.opts
	p.rd = msgReader{ws: p.ws, limit: opts.MaxMessageBytes, timeout: opts.ReadTimeout, onTimeout: func() {
		p.end(closeCause{code: CodeInternal, reason: reasonReadTimeout, notify: true})
	}}
}

func (p *phoneConn) logAttrs(event string) []any {
	return []any{"event", event, "role", "phone", "server_id", p.serverID, "conn_id", p.connID, "device", p.device, "remote", p.remote}
}

// setUp joins an accepted phone and returns the loop that serves it until
// its connection ends, or nil when it was refused (the connection has
// ended).
func (p *phoneConn) setUp() (loop func()) {
	rl := p.rl
	p.initIO()
	// A writer runs only while the outbox has items (outbox.start), taken
	// from the relay's pool; every Add happens under the outbox's lock
	// before stop seals it, so the Wait in serve sees them all.
	p.out.start = func() {
		p.writers.Add(1)
		rl.writers.start(p)
	}
	if code, reason := p.join(); code != 0 {
		p.end(closeCause{code: code, reason: reason})
		rl.log.Info("phone refused", append(p.logAttrs("phone_refused"), "close_code", int(code))...)
		<-p.gone
		rl.countClose("phone", p.cause)
		return nil
	}
	rl.m.Upgrades.WithLabelValues("phone").Inc()
	rl.log.Info("phone joined", p.logAttrs("phone_joined")...)

	hb := rl.hb.add(p.ws, p.pc, p.ended, func() {
		p.end(closeCause{code: CodeInternal, reason: reasonHeartbeat, notify: true})
	})
	return func() { p.serve(hb) }
}

// serve reads the phone's frames until its connection ends, then waits for
// its writer and leaves.
func (p *phoneConn) serve(hb *hbEntry) {
	rl := p.rl
	p.readLoop()
	rl.hb.remove(hb)

	p.out.stop()
	p.writers.Wait()
	<-p.gone // the socket is closed before the handler (and its admission slot) is released
	if p.route != nil {
		p.leaveRemote()
	} else if p.cause.notify {
		if b := rl.reg.leave(p); b != nil {
			b.sendNotice(appendCloseNotice(nil, p.connID, int(p.cause.code)))
		}
	} else {
		rl.reg.leave(p)
	}
	rl.log.Info("phone closed", append(p.logAttrs("phone_closed"), p.cause.logAttrs()...)...)
	rl.countClose("phone", p.cause)
}

// join admits p into its server-id's slot here or, in cluster mode, through
// the slot's owner on another instance. It returns 0 or the refusal.
func (p *phoneConn) join() (websocket.StatusCode, string) {
	if p.rl.bp == nil {
		return joinCode(p.rl.joinLocal(p))
	}
	err := p.rl.joinHere(p)
	if err == ErrNoBinary { // cluster: the store says who owns it (joinRemote)
		switch code, reason := p.joinRemote(); code {
		case 0:
			return 0, ""
		case int(CodeTooManyPhones):
			return CodeTooManyPhones, reasonTooMany
		case CodeTryAgain:
			return CodeTryAgain, reason
		}
		return CodeNoBinary, reasonNoBinary
	}
	return joinCode(err)
}

// joinCode is the refusal for a local join's error.
func joinCode(err error) (websocket.StatusCode, string) {
	switch err {
	case nil:
		return 0, ""
	case ErrTooManyPhones:
		return CodeTooManyPhones, reasonTooMany
	}
	return CodeNoBinary, reasonNoBinary
}

// readLoop reads phone frames until the connection ends, forwarding each
// valid one to the binary the phone joined under.
func (p *phoneConn) readLoop() {
	rl := p.rl
	var buf []byte
	for {
		typ, data, err := p.rd.read()
		if err != nil {
			p.end(peerCause(err))
			return
		}
		if typ != websocket.MessageText {
			p.end(closeCause{code: CodeUnsupported, reason: reasonBinaryFrame, notify: true})
			return
		}
		if !validPhoneFrame(data) {
			p.end(closeCause{code: CodeInvalidPayload, reason: reasonBadFrame, notify: true})
			return
		}
		if p.route != nil {
			if !p.forwardUp(data) {
				return
			}
			continue
		}
		b := p.joinedUnder
		if b == nil || !b.holding.Load() {
			rl.countDrop(DropNoBinary)
			continue
		}
		var sent bool
		if p.token == "" && len(data) > keptEnvelope {
			// A large envelope is built in a pooled buffer, returned once
			// written, so a phone that once sent a large message does not
			// hold a buffer that size for the rest of its life, charged
			// to nothing.
			pb := getFrameBuffer(stubEnvelopeLen(p.connID, data))
			*pb = appendPhoneEnvelope(*pb, p.connID, "", data)
			sent = b.send(*pb)
			putFrameBuffer(pb)
		} else {
			buf = appendPhoneEnvelope(buf[:0], p.connID, p.token, data)
			sent = b.send(buf)
			if cap(buf) > 2*keptEnvelope {
				buf = nil // a large first frame with its token: not kept either
			}
		}
		if sent {
			p.token = "" // the legacy token rides on the first envelope only
			rl.routedToBinary.Inc()
		}
	}
}

// keptEnvelope is the largest frame whose envelope a phone's read loop
// builds in a buffer it keeps: most frames are small, and a kept buffer
// costs nothing per message, but stays as long as the phone.
const keptEnvelope = 4 << 10

// drain is the pooled writer's work: the outbox until it is empty.
func (p *phoneConn) drain() {
	defer p.writers.Done()
	p.writeLoop()
}

// writeLoop drains the outbox: frames in order, then a directive's close.
func (p *phoneConn) writeLoop() {
	for {
		closeCode, ok, err := p.out.writeNext(p.writeFrame)
		if !ok {
			return
		}
		if err != nil {
			// The phone's own close, racing this write, wins: its binary
			// gets the phone's code, not "write failed" (wsEnd.writeFailed).
			p.writeFailed(err, closeCause{code: CodeInternal, reason: writeFailure(err), notify: true})
			return
		}
		if closeCode != 0 {
			// A directive close: the binary asked for it, so no notice.
			p.end(closeCause{code: websocket.StatusCode(closeCode), directive: true})
			return
		}
	}
}

// writeFrame writes one frame. No library deadline: the socket's
// (progressConn) fails the write when the phone takes nothing for
// WriteTimeout.
func (p *phoneConn) writeFrame(frame []byte) error {
	if err := p.ws.Write(context.Background(), websocket.MessageText, frame); err != nil {
		return err
	}
	p.rl.routedToPhone.Inc()
	return nil
}

// deliver queues a binary's envelope for this phone. A full backlog closes
// the phone 1011 (its binary hears about it through a close notice). At the
// relay-wide ceiling the phone furthest behind is closed first, so a tenant
// that parks its phones just under the ceiling cannot get another tenant's
// phone closed by the next frame that happens to cross it.
//
// frame may alias the binary's read buffer: it is copied before it is queued.
func (p *phoneConn) deliver(frame []byte, closeCode int) {
	if p.link != nil { // a remote phone: its home queues it
		p.deliverDown(frame, closeCode)
		return
	}
	it := outItem{closeCode: closeCode}
	if frame != nil {
		// A pooled copy of the frame's size class: the writer returns it
		// after the write, so steady traffic allocates no frame buffers (a
		// refused or discarded item's buffer is left to the garbage
		// collector).
		it.buf = getFrameBuffer(len(frame))
		*it.buf = append(*it.buf, frame...)
		it.frame = *it.buf
	}
	reason := p.pushShedding(it)
	switch reason {
	case "":
		return
	case DropPhoneBacklog, DropRelayBacklog:
		p.closeForBacklog(reason)
	}
	p.rl.countDrop(reason)
}

// pushShedding queues it on p's outbox. At the relay-wide ceiling it sheds
// other phones (local, stubs or proxies) until the item fits or no phone
// has more releasable bytes than p; each shed phone is ending and skipped
// from then on, so this ends. It returns push's reason for a refusal.
func (p *phoneConn) pushShedding(it outItem) DropReason {
	reason := p.out.push(it)
	for reason == DropRelayBacklog && p.rl.shedLargestBacklog(p) {
		reason = p.out.push(it)
	}
	return reason
}

// shedForRelayBacklog closes p to make room under the relay-wide ceiling:
// its queue and in-flight charge are released at once, and its socket is
// dropped if a write was in flight (that write is what held the charge). A
// queued close directive is honoured (its code, no notice): the binary
// asked for that close, and a 1011 notice would tell it otherwise. It
// reports whether any bytes were released.
func (p *phoneConn) shedForRelayBacklog() bool {
	released, inflight, directive := p.out.shed()
	if p.link != nil {
		// A remote phone's stub: its home closes the phone 1011 and its
		// binary gets the notice, as for a local phone shed here.
		p.rl.loseStub(p, LossQueue, int(CodeInternal))
		return released > 0
	}
	cause := closeCause{code: CodeInternal, reason: reasonBacklog, notify: true}
	if directive != 0 {
		cause = closeCause{code: websocket.StatusCode(directive), directive: true}
	}
	if p.end(cause) {
		p.rl.log.Warn("phone shed at the relay-wide ceiling", append(p.logAttrs("phone_backlog_full"), "reason", string(DropRelayBacklog))...)
	}
	if inflight {
		p.dropSocket()
	}
	return released > 0
}

// ending reports whether p is closing: its connection ended or, for a
// stub, its link did. An ending phone's bytes are already being released.
func (p *phoneConn) ending() bool {
	if p.link != nil {
		return isClosed(p.link.stop)
	}
	return isClosed(p.ended)
}

// closeForBacklog discards the phone's queue and closes it 1011.
func (p *phoneConn) closeForBacklog(reason DropReason) {
	p.out.stop()
	if p.end(closeCause{code: CodeInternal, reason: reasonBacklog, notify: true}) {
		p.rl.log.Warn("phone backlog full", append(p.logAttrs("phone_backlog_full"), "reason", string(reason))...)
	}
}
