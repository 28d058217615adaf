package relay

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// binaryConn is one daemon's connection.
type binaryConn struct {
	*wsEnd
	rl       *Relay
	serverID string
	version  string // sanitised
	ua       string // sanitised
	remote   string
	// turn serialises writes to the binary in arrival order (a channel's
	// waiting senders are served first come, first served), so the time a
	// write spends queued is measured apart from the write.
	turn chan struct{}
	// holding is true while this connection holds its server-id's slot. The
	// registry sets it under its lock; phone read loops read it lock-free.
	holding atomic.Bool
	// unlock ends the claim's turn at its server-id's gate (claimgate.go),
	// taken before the 101; early is the cluster's answer when the claim
	// was put to the store before the 101 (nil otherwise).
	unlock func()
	early  *earlyClaim

	rd msgReader
}

// initIO sets up the reused reader; setUp calls it before any I/O.
func (b *binaryConn) initIO() {
	opts := &b.rl.opts
	b.rd = msgReader{ws: b.ws, limit: opts.MaxMessageBytes, timeout: opts.ReadTimeout, onTimeout: func() {
		b.end(closeCause{code: CodeInternal, reason: reasonReadTimeout})
	}}
}

func (b *binaryConn) logAttrs(event string) []any {
	return []any{"event", event, "role", "binary", "server_id", b.serverID, "version", b.version, "user_agent", b.ua, "remote", b.remote}
}

// setUp claims the slot and returns the loop that serves the binary until
// its connection ends, or nil when the claim was refused (the connection
// has ended).
func (b *binaryConn) setUp() (loop func()) {
	rl := b.rl
	b.initIO()
	claimed := b.claim()
	b.unlock()
	if !claimed {
		<-b.gone
		rl.countClose("binary", b.cause)
		return nil
	}
	rl.m.Upgrades.WithLabelValues("binary").Inc()
	rl.log.Info("binary claimed server-id", b.logAttrs("binary_claimed")...)
	hb := rl.hb.add(b.ws, b.pc, b.ended, func() {
		b.end(closeCause{code: CodeInternal, reason: reasonHeartbeat})
	})
	return func() { b.serve(hb) }
}

// serve reads from the binary until its connection ends, then releases its
// slot.
func (b *binaryConn) serve(hb *hbEntry) {
	rl := b.rl
	b.readLoop()
	rl.hb.remove(hb)

	// Grace starts, unless a takeover replaced us already.
	if rl.reg.release(b) && rl.bp != nil {
		rl.bp.SetGrace(b.serverID, true)
	}
	<-b.gone
	rl.log.Info("binary closed", append(b.logAttrs("binary_closed"), b.cause.logAttrs()...)...)
	rl.countClose("binary", b.cause)
}

// claim takes the server-id's slot; the caller holds the server-id's gate.
// A live incumbent (it answers a ping within ProbeTimeout) keeps it and b
// is closed 4409; a dead one is closed 1011 and replaced. In cluster mode
// the store decides too (clusterClaim).
func (b *binaryConn) claim() bool {
	if b.rl.bp != nil {
		return b.clusterClaim()
	}
	return b.localClaim()
}

// localClaim is claim against this instance's registry. The loop repeats
// only if the slot changed during a probe, which needs the incumbent to
// leave meanwhile: bounded.
func (b *binaryConn) localClaim() bool {
	rl := b.rl
	for attempt := 0; attempt < 3; attempt++ {
		res := rl.reg.claim(b)
		if res.ok {
			return true
		}
		inc := res.incumbent
		if inc == nil { // shutting down
			b.end(closeCause{code: CodeGoingAway, reason: reasonShutdown})
			return false
		}
		if inc.alive(rl.opts.ProbeTimeout) {
			rl.log.Info("claim refused: server-id held by a live binary", append(b.logAttrs("binary_conflict"), "close_code", int(CodeConflict))...)
			b.end(closeCause{code: CodeConflict, reason: reasonConflict})
			return false
		}
		if rl.reg.takeover(b, inc) {
			inc.end(closeCause{code: CodeInternal, reason: reasonReplaced})
			rl.log.Info("dead binary replaced", b.logAttrs("binary_takeover")...)
			return true
		}
	}
	b.end(closeCause{code: CodeConflict, reason: reasonConflict})
	return false
}

// readLoop routes envelopes until the connection ends. Per-frame errors drop
// that frame and never close the binary (protocol §5).
func (b *binaryConn) readLoop() {
	rl := b.rl
	for {
		typ, data, err := b.rd.read()
		if err != nil {
			b.end(peerCause(err))
			return
		}
		if typ != websocket.MessageText {
			rl.countDrop(DropMalformedEnvelope)
			continue
		}
		env, ok := scanBinaryEnvelope(data)
		if !ok {
			rl.countDrop(DropMalformedEnvelope)
			continue
		}
		if env.kind == kindPushWake {
			rl.wake(b.serverID, env.owned())
			continue
		}
		p := rl.reg.lookupPhone(b, env.connID)
		if p == nil {
			rl.countDrop(DropUnknownConnID)
			continue
		}
		p.deliver(env.frame, env.closeCode)
	}
}

// send writes one phone envelope to the binary. Phones take turns, in
// arrival order; the wait for a turn is the phone's own and lasts at most
// WriteTimeout, after which its frame is dropped (DropBinaryBusy) and the
// phone carries on: a phone the binary cannot carry in time is slowed or
// loses its frame, never gets the binary closed. The write itself closes
// the binary 1011 only when WriteTimeout passes without it taking a byte
// (progressConn). It reports whether the write succeeded.
func (b *binaryConn) send(msg []byte) bool {
	return b.write(msg, b.rl.opts.WriteTimeout)
}

// sendNotice writes a close notice. It waits for its turn as long as the
// binary lives: there is at most one notice per phone, and a lost one would
// leave the daemon holding a session for a phone that is gone.
func (b *binaryConn) sendNotice(msg []byte) bool {
	return b.write(msg, 0)
}

// write takes a turn (waiting at most wait, or without bound if wait is 0)
// and writes msg. The library's own write lock then only ever waits behind
// a ping or close frame, and it is given no deadline: a library deadline
// closes the connection, and would count time spent waiting.
func (b *binaryConn) write(msg []byte, wait time.Duration) bool {
	select {
	case b.turn <- struct{}{}:
	default:
		var expired <-chan time.Time
		if wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			expired = t.C
		}
		select {
		case b.turn <- struct{}{}:
		case <-b.ended:
			return false
		case <-expired:
			b.rl.countDrop(DropBinaryBusy)
			return false
		}
	}
	err := b.ws.Write(context.Background(), websocket.MessageText, msg)
	<-b.turn
	if err != nil {
		b.writeFailed(err, closeCause{code: CodeInternal, reason: writeFailure(err)})
		return false
	}
	return true
}
