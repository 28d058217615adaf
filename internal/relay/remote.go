package relay

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Cluster mode's half of the routing core: proxies (a phone socket here,
// its binary elsewhere), stubs (a remote phone in a slot here) and the
// entry points the backplane calls. Nothing here runs without a Backplane.

// Close codes and reasons specific to cluster mode (docs/cluster.md).
const (
	// CodeTryAgain (1013) refuses a claim or a remote join while the
	// cluster's coordination cannot be reached; the client retries.
	CodeTryAgain = 1013

	reasonClusterDown = "cluster unavailable"
	reasonOwnerDown   = "owner unreachable"
	reasonLinkLost    = "cluster link lost"
)

// stubLeave is the close code of the item that ends a stub's queue: the
// phone left its home (LinkLeave), behind the frames it sent before. Its
// own code and notice flag are in the stubLink.
const stubLeave = -1

// joinTimeout bounds a remote join round trip (store lookup + the owner's
// answer).
const joinTimeout = 5 * time.Second

// claimSlack is what a cluster claim may take beyond the owner's own probe
// (--probe-timeout): the store's round trips and the probe's. A claim
// decided before the binary's 101 holds the 101 that long at most, so it
// stays short: an owner that has not answered by then is unreachable
// (1013).
const claimSlack = 3 * time.Second

// proxyKey names a proxy: conn_ids are minted by owners, so they are unique
// only together with the owner that minted them.
type proxyKey struct{ owner, connID string }

// proxyRoute is a phone whose socket is here and whose slot is on owner.
type proxyRoute struct {
	owner   string
	epoch   uint64
	created time.Time
	upSeq   uint64 // the phone's read loop only
	// lastDown is the last LinkDown sequence applied; Receive only (one
	// subscription goroutine).
	lastDown uint64
}

// stubLink is a phone in a slot here whose socket is on home. Its frames
// for the binary wait in the stub phoneConn's outbox (as envelopes), which
// is charged to the relay-wide budget like a local phone's: back-pressure
// cannot cross NATS, so these are bytes this instance holds for a phone.
type stubLink struct {
	home    string
	created time.Time
	stop    chan struct{}
	once    sync.Once
	lastUp  uint64 // Receive only
	// leaveCode and leaveNotify are the first LinkLeave's, written once
	// (leaving) by Receive before it queues the stubLeave item; the
	// outbox's lock orders them before the writer reads them.
	leaving     atomic.Bool
	leaveCode   int
	leaveNotify bool
	downMu      sync.Mutex
	downSeq     uint64
	// sendMu is held by the stub's dispatch from its stop check to the end
	// of its write to the binary, and by a lost stub's close notice while
	// it is sent: a frame that passed the check before the stub was lost
	// reaches the binary before the notice, never after it.
	sendMu sync.Mutex
}

func (l *stubLink) close() { l.once.Do(func() { close(l.stop) }) }

// closeLink ends stub p: nothing more is delivered for it, and what it had
// queued for the binary is discarded and its charge released (a frame
// being written releases its own when the write returns). Every path that
// takes a stub out of its slot calls it, so the budget returns to zero.
func (p *phoneConn) closeLink() {
	p.link.close()
	p.out.stop()
}

// SetBackplane turns cluster mode on; self is this instance's id. Call it
// before serving.
func (rl *Relay) SetBackplane(bp Backplane, self string) {
	rl.bp = bp
	rl.self = self
	rl.proxies = make(map[proxyKey]*phoneConn)
	for _, l := range AllLinkLosses {
		rl.m.ClusterLinksLost.WithLabelValues(string(l))
	}
}

// earlyClaim is the cluster's answer to a claim put to the store before
// the binary's 101 (claimEarly).
type earlyClaim struct {
	out ClaimOutcome
	err error
}

// claimEarly decides a claim for serverID in the cluster before the
// binary's 101 when this instance has no slot for it: the store write, and
// the probe of another instance's binary when one is needed (a wait of up
// to --probe-timeout before the 101, where a claim against a local
// incumbent probes after it). So once the binary has its 101, the store
// names this instance, and a phone joining any instance finds the
// server-id held; a probe answered only after the incumbent's claim
// lapsed cannot leave a window in which it is held by nobody. It returns
// nil when this instance has a slot: the local rules decide first
// (clusterClaim). The caller holds the server-id's gate.
func (rl *Relay) claimEarly(serverID string) *earlyClaim {
	if rl.reg.has(serverID) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), rl.opts.ProbeTimeout+claimSlack)
	defer cancel()
	out, err := rl.bp.Acquire(ctx, serverID)
	return &earlyClaim{out: out, err: err}
}

// clusterClaim is claim in cluster mode: the local rules first (a live
// binary here keeps its slot: 4409, and nothing is written), then the
// store (Backplane.Acquire: a revision-checked write, probing the owner
// elsewhere if need be; done before the 101 when there was no slot here,
// claimEarly), then the slot here. Every binary that takes a slot writes
// the store first, so two instances can never both give a server-id to a
// new binary: one of the two writes fails (protocol §7 holds cluster-wide:
// a live incumbent anywhere means 4409). The caller holds the server-id's
// gate.
func (b *binaryConn) clusterClaim() bool {
	rl := b.rl
	var dead *binaryConn // a local incumbent found dead, to replace
	var out ClaimOutcome
	var err error
	if e := b.early; e != nil {
		out, err = e.out, e.err
	} else {
		if inc, held := rl.reg.holder(b.serverID); held && inc != nil {
			if inc.alive(rl.opts.ProbeTimeout) {
				rl.log.Info("claim refused: server-id held by a live binary", append(b.logAttrs("binary_conflict"), "close_code", int(CodeConflict))...)
				b.end(closeCause{code: CodeConflict, reason: reasonConflict})
				return false
			}
			dead = inc
		}
		ctx, cancel := context.WithTimeout(context.Background(), rl.opts.ProbeTimeout+claimSlack)
		out, err = rl.bp.Acquire(ctx, b.serverID)
		cancel()
	}
	switch {
	case errors.Is(err, ErrOwnerUnreachable):
		rl.log.Warn("claim refused: the server-id's owner instance does not answer", append(b.logAttrs("binary_owner_unreachable"), "close_code", CodeTryAgain)...)
		b.end(closeCause{code: CodeTryAgain, reason: reasonOwnerDown})
		return false
	case err != nil:
		rl.log.Warn("claim refused: cluster unavailable", append(b.logAttrs("binary_cluster_unavailable"), "close_code", CodeTryAgain)...)
		b.end(closeCause{code: CodeTryAgain, reason: reasonClusterDown})
		return false
	case out != ClaimGranted:
		rl.log.Info("claim refused: server-id held by a live binary on another instance", append(b.logAttrs("binary_conflict"), "close_code", int(CodeConflict))...)
		b.end(closeCause{code: CodeConflict, reason: reasonConflict})
		return false
	}
	if b.install(dead) {
		rl.bp.SetGrace(b.serverID, false)
		return true
	}
	// Not installed (shutting down): give the claim back, or record that
	// the slot here is still in grace.
	if inc, held := rl.reg.holder(b.serverID); !held {
		rl.bp.Release(b.serverID)
	} else {
		rl.bp.SetGrace(b.serverID, inc == nil)
	}
	return false
}

// install puts b in its slot once the cluster granted its claim: a free
// slot or one in grace is b's at once; dead, the local incumbent found
// dead before the grant, is replaced (1011). Only claims install binaries
// and they hold the gate, so the slot can only have lost its binary since.
func (b *binaryConn) install(dead *binaryConn) bool {
	rl := b.rl
	for attempt := 0; attempt < 3; attempt++ {
		res := rl.reg.claim(b)
		switch {
		case res.ok:
			return true
		case res.incumbent == nil: // shutting down
			b.end(closeCause{code: CodeGoingAway, reason: reasonShutdown})
			return false
		case res.incumbent == dead && rl.reg.takeover(b, dead):
			dead.end(closeCause{code: CodeInternal, reason: reasonReplaced})
			rl.log.Info("dead binary replaced", b.logAttrs("binary_takeover")...)
			return true
		}
	}
	b.end(closeCause{code: CodeConflict, reason: reasonConflict})
	return false
}

// slotRemoved gives up the cluster claim of a slot that ended here (grace
// expired), unless a new slot for the server-id was installed meanwhile.
func (rl *Relay) slotRemoved(serverID string) {
	if rl.bp == nil {
		return
	}
	unlock := rl.gates.lock(serverID)
	defer unlock()
	if !rl.reg.has(serverID) {
		rl.bp.Release(serverID)
	}
}

// joinRemote admits p through its server-id's owner on another instance.
// A refusal with CodeTryAgain comes with its reason.
func (p *phoneConn) joinRemote() (code int, reason string) {
	code, err := p.joinRemoteErr()
	switch {
	case errors.Is(err, ErrOwnerUnreachable):
		return CodeTryAgain, reasonOwnerDown
	case err != nil:
		return CodeTryAgain, reasonClusterDown
	}
	return code, ""
}

func (p *phoneConn) joinRemoteErr() (code int, err error) {
	rl := p.rl
	ctx, cancel := context.WithTimeout(context.Background(), joinTimeout)
	defer cancel()
	out, err := rl.bp.Join(ctx, p.serverID)
	if err != nil {
		return 0, err
	}
	if out.Owner == rl.self {
		// This instance owns it but had no slot when the phone arrived: a
		// claim is being installed. Wait for its outcome.
		rl.gates.wait(ctx, p.serverID)
		switch rl.reg.join(p) {
		case nil:
			return 0, nil
		case ErrTooManyPhones:
			return int(CodeTooManyPhones), nil
		}
		return int(CodeNoBinary), nil
	}
	if out.Code != 0 {
		return out.Code, nil
	}
	p.connID = out.ConnID
	p.route = &proxyRoute{owner: out.Owner, epoch: out.Epoch, created: time.Now()}
	rl.proxMu.Lock()
	rl.proxies[proxyKey{out.Owner, out.ConnID}] = p
	rl.m.ClusterProxies.Set(float64(len(rl.proxies)))
	rl.proxMu.Unlock()
	return 0, nil
}

// joinLocal adds p to its server-id's slot here. When there is none but a
// claim for it is in progress here, it waits (at most joinTimeout) for
// the claim's outcome: a phone that arrives once its binary has its 101
// finds the slot (protocol §7).
func (rl *Relay) joinLocal(p *phoneConn) error {
	err := rl.joinHere(p)
	if err != ErrNoBinary || !rl.gates.pending(p.serverID) {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), joinTimeout)
	defer cancel()
	rl.gates.wait(ctx, p.serverID)
	return rl.reg.join(p)
}

// joinHere adds p to its server-id's slot here, if there is one. A slot in
// grace while a claim is in progress here is about to be taken by that
// claim, whose binary may have its 101 already (a reclaim of a grace slot
// asks the store after the 101): joined to it, p would be evicted 4404 by
// a claim it arrived after (protocol §7: a phone that joins once a binary
// has its 101 finds the new binary's slot; chaos-findings.md 10). So p
// leaves it again and waits (at most joinTimeout) for the claim's outcome.
// The gate is looked at after the join: a claim that takes it later began
// after p joined, and evicts p as the protocol says.
func (rl *Relay) joinHere(p *phoneConn) error {
	err := rl.reg.join(p)
	if err != nil || p.joinedUnder != nil || !rl.gates.pending(p.serverID) {
		return err
	}
	rl.reg.remove(p) // nobody to notify: p joined no binary
	ctx, cancel := context.WithTimeout(context.Background(), joinTimeout)
	defer cancel()
	rl.gates.wait(ctx, p.serverID)
	return rl.reg.join(p)
}

// ClaimPending reports whether a claim of serverID is in progress here: a
// join for it (AdmitRemote) may have to wait for its outcome.
func (rl *Relay) ClaimPending(serverID string) bool { return rl.gates.pending(serverID) }

// forwardUp sends one validated phone frame to its owner. A failed publish
// closes the phone 1011: the frame is lost and the phone must know.
func (p *phoneConn) forwardUp(frame []byte) bool {
	r := p.route
	r.upSeq++
	err := p.rl.bp.Send(r.owner, LinkMessage{Kind: LinkUp, ServerID: p.serverID, ConnID: p.connID, Seq: r.upSeq, Token: p.token, Frame: frame})
	if err != nil {
		p.rl.linkLost(LossPublish, 1)
		p.end(closeCause{code: CodeInternal, reason: reasonLinkLost, notify: true})
		return false
	}
	p.token = ""
	p.rl.routedToBinary.Inc()
	return true
}

// leaveRemote unregisters a proxy whose connection ended and tells its
// owner, which sends the close notice if one is due.
func (p *phoneConn) leaveRemote() {
	rl := p.rl
	// Every end but a directive's or an eviction's is news to the binary,
	// this instance's shutdown (1001) included: its binary lives on. An
	// eviction (the claim moved: reclaim, takeover, grace expiry, or the
	// owner dropped the phone, all reasonNoBinary) gets no notice, as on
	// one instance (protocol §5): the owner may not have dropped the old
	// slot yet when this leave arrives, and its binary would otherwise
	// hear of a phone it is not losing but being replaced for
	// (TestClusterConformance, takeover-dead-incumbent).
	evicted := p.cause.evicted || p.cause.reason == reasonNoBinary
	_ = rl.bp.Send(p.route.owner, LinkMessage{Kind: LinkLeave, ServerID: p.serverID, ConnID: p.connID, Code: int(p.cause.code), Notify: !p.cause.directive && !evicted})
	// Unlisted only once the leave is on its way: the owner's ping (which
	// lists the phones this instance still has, LinkedWith) must never
	// arrive there ahead of the leave and drop the phone before its last
	// frames.
	rl.proxMu.Lock()
	if rl.proxies[proxyKey{p.route.owner, p.connID}] == p {
		delete(rl.proxies, proxyKey{p.route.owner, p.connID})
		rl.m.ClusterProxies.Set(float64(len(rl.proxies)))
	}
	rl.proxMu.Unlock()
}

// AdmitRemote admits a phone whose socket is on instance home into the
// local slot of serverID, as a stub. It returns the minted conn_id, or the
// close code for the phone (CodeNoBinary, CodeTooManyPhones). With no slot
// but a claim in progress here, it waits for the claim's outcome (at most
// joinTimeout): call it off the subscription's goroutine when
// ClaimPending.
func (rl *Relay) AdmitRemote(home, serverID string) (connID string, code int) {
	stub := &phoneConn{rl: rl, serverID: serverID, remote: home,
		out:  newOutbox(rl.opts.PhoneQueueBytes, rl.budget),
		link: &stubLink{home: home, created: time.Now(), stop: make(chan struct{})}}
	// As for a local phone, a writer runs only while frames are queued.
	stub.out.start = func() { go stub.dispatch() }
	if err := rl.joinLocal(stub); err != nil {
		if err == ErrTooManyPhones {
			return "", int(CodeTooManyPhones)
		}
		return "", int(CodeNoBinary)
	}
	return stub.connID, 0
}

// dispatch feeds a stub's queued envelopes to the binary it joined under,
// in order, on the stub's own writer goroutine: a binary that is slow to
// take writes stalls only its own remote phones, never the instance's
// subscription. It ends when the queue is empty or the phone left.
func (p *phoneConn) dispatch() {
	for {
		code, ok, _ := p.out.writeNext(p.toBinary)
		if !ok {
			return
		}
		if code == stubLeave {
			p.stubLeft()
			return
		}
	}
}

// toBinary writes one queued envelope of stub p to its binary. It never
// fails the queue: a frame the binary cannot take is dropped and counted,
// as a local phone's frame would be.
func (p *phoneConn) toBinary(env []byte) error {
	rl := p.rl
	p.link.sendMu.Lock()
	defer p.link.sendMu.Unlock()
	if isClosed(p.link.stop) {
		return nil // removed meanwhile: its binary has (or will have) its notice
	}
	if rl.hookStubPassedStop != nil {
		rl.hookStubPassedStop()
	}
	b := p.joinedUnder
	if b == nil || !b.holding.Load() {
		rl.countDrop(DropNoBinary)
		return nil
	}
	if b.send(env) {
		rl.routedToBinary.Inc()
	}
	return nil
}

// stubLeft removes a stub whose phone left its home, after the frames the
// phone sent before leaving; its binary gets the close notice if one is
// due.
func (p *phoneConn) stubLeft() {
	p.closeLink()
	if b := p.rl.reg.leave(p); b != nil && p.link.leaveNotify {
		p.noticeAfterFrames(b, p.link.leaveCode)
	}
}

// queueUp queues one of stub p's frames (LinkUp) for its binary, charged to
// the phone's cap and the relay-wide budget. At the relay-wide ceiling the
// phone furthest behind relay-wide is shed first, exactly as for a frame
// to a local phone (phoneConn.deliver); if the frame still does not fit,
// the stub is lost (1011 with a close notice) and nobody else is touched.
func (rl *Relay) queueUp(stub *phoneConn, m LinkMessage) {
	var it outItem
	if m.Token == "" {
		// In a pooled buffer of its size class, as a local phone's frame
		// is (framebuf.go): the writer returns it, so steady traffic
		// allocates no envelopes, and it holds at most an eighth more
		// than it is charged.
		it.buf = getFrameBuffer(stubEnvelopeLen(stub.connID, m.Frame))
		*it.buf = appendPhoneEnvelope(*it.buf, stub.connID, "", m.Frame)
		it.frame = *it.buf
	} else {
		// A phone's first frame carries its token, whose escaped length
		// is not known ahead: made to fit, once per phone.
		it.frame = appendPhoneEnvelope(make([]byte, 0, len(m.Frame)+len(stub.connID)+len(m.Token)+48), stub.connID, m.Token, m.Frame)
	}
	reason := stub.pushShedding(it)
	switch reason {
	case "":
		return
	case DropPhoneBacklog, DropRelayBacklog:
		rl.loseStub(stub, LossQueue, int(CodeInternal))
	}
	rl.countDrop(reason) // DropPhoneClosing: the stub is gone already
}

// stubEnvelopeLen is the length of appendPhoneEnvelope(nil, connID, "",
// frame): connID is relay-minted, so quoting it adds just the quotes.
func stubEnvelopeLen(connID string, frame []byte) int {
	return len(`{"conn_id":""`) + len(connID) + len(`,"frame":`) + len(frame) + len(`}`)
}

// queueLeave queues the end of stub p behind its frames. Should even that
// not fit, the frames are discarded (the phone is gone) and the stub ends
// now, off the subscription's goroutine.
func (rl *Relay) queueLeave(stub *phoneConn, m LinkMessage) {
	if !stub.link.leaving.CompareAndSwap(false, true) {
		rl.countDrop(DropPhoneClosing) // a second leave: forged or duplicated
		return
	}
	stub.link.leaveCode, stub.link.leaveNotify = m.Code, m.Notify
	switch reason := stub.out.push(outItem{closeCode: stubLeave}); reason {
	case "", DropPhoneClosing:
		return
	default:
		rl.countDrop(reason)
		go stub.stubLeft()
	}
}

// deliverDown sends a binary's envelope to a stub's home. The lock keeps
// sequence numbers in publish order.
func (p *phoneConn) deliverDown(frame []byte, closeCode int) {
	l := p.link
	l.downMu.Lock()
	l.downSeq++
	err := p.rl.bp.Send(l.home, LinkMessage{Kind: LinkDown, ServerID: p.serverID, ConnID: p.connID, Seq: l.downSeq, Code: closeCode, Frame: frame})
	l.downMu.Unlock()
	if err != nil {
		p.rl.loseStub(p, LossPublish, int(CodeInternal))
	}
}

// loseStub removes a stub whose traffic may have been lost: its binary
// gets a close notice with code, its home is told to close the phone 1011.
func (rl *Relay) loseStub(p *phoneConn, loss LinkLoss, code int) {
	p.closeLink()
	removed, b := rl.reg.remove(p)
	if !removed {
		return
	}
	if loss != "" {
		rl.linkLost(loss, 1)
	}
	if b != nil {
		go p.noticeAfterFrames(b, code)
	}
	_ = rl.bp.Send(p.link.home, LinkMessage{Kind: LinkEvict, ServerID: p.serverID, ConnID: p.connID, Code: int(CodeInternal), Backlog: loss == LossQueue})
}

// stubEvicted tells a stub's home that the owner evicted the phone (a
// reclaim, takeover or grace expiry here): it is closed there with code.
func (rl *Relay) stubEvicted(p *phoneConn, code int) {
	p.closeLink()
	_ = rl.bp.Send(p.link.home, LinkMessage{Kind: LinkEvict, ServerID: p.serverID, ConnID: p.connID, Code: code})
}

// Receive handles one message from instance from. The backplane calls it
// from one goroutine per subscription, so per-phone order is kept; nothing
// here blocks on a socket. m.Frame may alias the backplane's buffer for
// the message: what is kept of it is copied (queueUp's envelope,
// deliver's pooled copy), so the backplane need not copy it first.
func (rl *Relay) Receive(from string, m LinkMessage) {
	switch m.Kind {
	case LinkUp, LinkLeave:
		stub := rl.reg.findStub(m.ServerID, m.ConnID)
		if stub == nil || stub.link.home != from {
			// Not a phone of ours from that instance (gone, or a forgery):
			// its home should close it. 4404 only when the server-id has
			// no slot here; a slot that lost the stub (this instance's
			// NATS link dropped, the link was found broken) lost frames,
			// and its binary lives: 1011, so a NATS blip makes no 4404.
			rl.countDrop(DropUnknownConnID)
			if m.Kind == LinkUp {
				code := CodeNoBinary
				if rl.reg.has(m.ServerID) {
					code = CodeInternal
				}
				_ = rl.bp.Send(from, LinkMessage{Kind: LinkEvict, ServerID: m.ServerID, ConnID: m.ConnID, Code: int(code)})
			}
			return
		}
		if m.Kind == LinkLeave {
			rl.queueLeave(stub, m)
			return
		}
		if m.Seq != stub.link.lastUp+1 {
			rl.loseStub(stub, LossGap, int(CodeInternal))
			return
		}
		stub.link.lastUp = m.Seq
		rl.queueUp(stub, m)
	case LinkDown, LinkEvict:
		rl.proxMu.Lock()
		p := rl.proxies[proxyKey{from, m.ConnID}]
		rl.proxMu.Unlock()
		// The server-id must match too: an owner reaches only phones that
		// joined through it for that server-id.
		if p == nil || p.serverID != m.ServerID {
			rl.countDrop(DropUnknownConnID)
			return
		}
		if m.Kind == LinkEvict {
			p.end(evictCause(m))
			return
		}
		if m.Seq != p.route.lastDown+1 {
			rl.linkLost(LossGap, 1)
			p.end(closeCause{code: CodeInternal, reason: reasonLinkLost, notify: true})
			return
		}
		p.route.lastDown = m.Seq
		p.deliver(m.Frame, m.Code)
	}
}

// evictCause is how a proxy closes on its owner's LinkEvict: only the
// codes an owner sends, each with the reason one relay gives it (4404 "no
// binary", 1011 "backlog full" for a full queue, else "cluster link
// lost"), and no close notice (the owner has dealt with its binary).
func evictCause(m LinkMessage) closeCause {
	switch {
	case m.Code != int(CodeInternal):
		return closeCause{code: CodeNoBinary, reason: reasonNoBinary, evicted: true}
	case m.Backlog:
		return closeCause{code: CodeInternal, reason: reasonBacklog, evicted: true}
	}
	return closeCause{code: CodeInternal, reason: reasonLinkLost, evicted: true}
}

// Probe answers another instance's conflicting claim for serverID: is the
// binary holding it here alive? The rule is the one a rival here meets
// (wsEnd.alive: a pong, or bytes moved meanwhile), so a slow but live
// binary is live to a claim from any instance. With no live binary here
// (no slot, or one in grace) but a claim in progress here, it first waits
// (at most ProbeTimeout) for that claim's outcome: a binary that was just
// granted the server-id, or is reclaiming its grace slot, is neither
// absent nor dead. A claim still undecided after that wait is answered
// live: it may hold the store's claim already (its 101 waits for the
// replaced owner's answer, among others), and "absent" or "dead" would let
// the prober take the server-id over and replace, 1011, the binary
// installed here a moment later.
func (rl *Relay) Probe(serverID string) ProbeResult {
	inc, held := rl.reg.holder(serverID)
	if inc == nil && rl.gates.pending(serverID) {
		ctx, cancel := context.WithTimeout(context.Background(), rl.opts.ProbeTimeout)
		decided := rl.gates.wait(ctx, serverID)
		cancel()
		if !decided {
			return ProbeLive
		}
		inc, held = rl.reg.holder(serverID)
	}
	switch {
	case !held:
		return ProbeAbsent
	case inc == nil:
		return ProbeDead // grace: a reclaim takes it
	case inc.alive(rl.opts.ProbeTimeout):
		return ProbeLive
	}
	return ProbeDead
}

// Superseded is called when serverID's claim now belongs to owner at epoch
// (a reclaim or takeover elsewhere, or this instance's lease was lost). A
// slot here is dropped exactly as a takeover drops it (binary 1011, phones
// 4404 wherever they are), and proxies here that joined under an older
// claim are closed 4404. Epochs are the store's revisions, so they order
// claims: a proxy that joined a claim newer than epoch (a late broadcast
// that NATS delivered after a newer one) stays.
func (rl *Relay) Superseded(serverID, owner string, epoch uint64) {
	if owner != rl.self {
		if b, phones, ok := rl.reg.drop(serverID); ok {
			if b != nil {
				b.end(closeCause{code: CodeInternal, reason: reasonReplaced})
			}
			rl.reg.evicted(phones)
		}
	}
	for _, p := range rl.proxySnapshot() {
		if p.serverID == serverID && p.route.epoch < epoch {
			p.end(closeCause{code: CodeNoBinary, reason: reasonNoBinary})
		}
	}
}

// OwnerGone closes the proxies here whose owner's session ended (it
// crashed and was revoked, or shut down): their binary is gone, 4404, as
// a grace expiry says.
func (rl *Relay) OwnerGone(owner string) {
	for _, p := range rl.proxySnapshot() {
		if p.route.owner == owner {
			p.end(closeCause{code: CodeNoBinary, reason: reasonNoBinary})
		}
	}
}

// LinkLost closes every cross-instance phone: this instance's NATS link
// dropped or lost messages, so any of their frames may be gone. Phones here
// are closed 1011 (their owners are told, so their binaries get notices);
// binaries here get a 1011 close notice for their remote phones, whose
// homes are told to close them 1011 (when NATS is still reachable: after a
// slow consumer, not a disconnect). Pairs on one instance are untouched.
func (rl *Relay) LinkLost(loss LinkLoss) {
	proxies := rl.proxySnapshot()
	for _, p := range proxies {
		p.end(closeCause{code: CodeInternal, reason: reasonLinkLost})
	}
	stubs := rl.reg.stubs()
	for _, s := range stubs {
		rl.loseStub(s, "", int(CodeInternal))
	}
	if n := len(proxies) + len(stubs); n > 0 {
		rl.linkLost(loss, n)
	}
}

// dropStub removes a stub and sends its binary a close notice with code;
// its home is not told (it is gone, or closes its side itself).
func (rl *Relay) dropStub(s *phoneConn, code int) {
	s.closeLink()
	if b := rl.reg.leave(s); b != nil {
		go s.noticeAfterFrames(b, code)
	}
}

// noticeAfterFrames sends binary b the close notice (code) of stub p,
// which has just been closed (closeLink), possibly by a path other than
// its own dispatch. A frame the dispatch holds has passed its stop check
// and may not have queued for the binary's turn yet: the notice waits for
// it (sendMu), so the binary reads the phone's last frame first and the
// notice after it, as for a local phone (chaos finding 14: the notice of a
// stub lost behind a stalled binary overtook the frame).
func (p *phoneConn) noticeAfterFrames(b *binaryConn, code int) {
	p.link.sendMu.Lock()
	defer p.link.sendMu.Unlock()
	b.sendNotice(appendCloseNotice(nil, p.connID, code))
}

// Peers lists the instances this one has cross-instance phones with.
func (rl *Relay) Peers() []string {
	seen := map[string]bool{}
	var out []string
	add := func(id string) {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	for _, p := range rl.proxySnapshot() {
		add(p.route.owner)
	}
	for _, s := range rl.reg.stubs() {
		add(s.link.home)
	}
	return out
}

// LinkedWith lists the conn_ids of the phones this instance shares with
// peer (proxies it owns, stubs homed there), for the peer's reconciliation.
func (rl *Relay) LinkedWith(peer string) []string {
	var out []string
	for _, p := range rl.proxySnapshot() {
		if p.route.owner == peer {
			out = append(out, p.connID)
		}
	}
	for _, s := range rl.reg.stubs() {
		if s.link.home == peer {
			out = append(out, s.connID)
		}
	}
	return out
}

// Reconcile compares the phones shared with peer against the peer's own
// list (LinkedWith on the peer): a link created before `before` that the
// peer does not know has lost a LinkLeave or LinkEvict, and is closed. A
// peer that is gone (alive false) loses every link. Either way frames may
// have been lost, so a stub's binary gets a 1011 notice, as when this
// instance's own link drops (LinkLost). A stub whose leave arrived is
// left alone: it ends behind its queued frames, with the phone's own code.
func (rl *Relay) Reconcile(peer string, alive bool, theirs []string, before time.Time) {
	known := make(map[string]bool, len(theirs))
	for _, id := range theirs {
		known[id] = true
	}
	n := 0
	for _, p := range rl.proxySnapshot() {
		if p.route.owner == peer && (!alive || (!known[p.connID] && p.route.created.Before(before))) {
			if p.end(closeCause{code: CodeInternal, reason: reasonLinkLost}) {
				n++
			}
		}
	}
	for _, s := range rl.reg.stubs() {
		if s.link.home == peer && !s.link.leaving.Load() && (!alive || (!known[s.connID] && s.link.created.Before(before))) {
			rl.dropStub(s, int(CodeInternal))
			n++
		}
	}
	if n > 0 {
		rl.linkLost(LossPeer, n)
	}
}

// RemoteClaims lists the (server-id, owner, epoch) of this instance's
// proxies, for the backplane to check against the claim store: a proxy
// whose claim vanished (its owner crashed and the lease expired) or moved
// is closed through Superseded.
func (rl *Relay) RemoteClaims() []RemoteClaim {
	seen := map[RemoteClaim]bool{}
	var out []RemoteClaim
	for _, p := range rl.proxySnapshot() {
		c := RemoteClaim{ServerID: p.serverID, Owner: p.route.owner, Epoch: p.route.epoch}
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out
}

// RemoteClaim is a claim that phones here joined under.
type RemoteClaim struct {
	ServerID, Owner string
	Epoch           uint64
}

// largestProxyBacklog returns whichever of victim and this instance's
// proxies has the most releasable bytes and is not ending.
func (rl *Relay) largestProxyBacklog(victim *phoneConn) *phoneConn {
	var maxBytes int64
	if victim != nil {
		maxBytes = victim.out.backlog.Load()
	}
	rl.proxMu.Lock()
	defer rl.proxMu.Unlock()
	for _, p := range rl.proxies {
		if b := p.out.backlog.Load(); b > maxBytes && !p.ending() {
			victim, maxBytes = p, b
		}
	}
	return victim
}

func (rl *Relay) proxySnapshot() []*phoneConn {
	rl.proxMu.Lock()
	defer rl.proxMu.Unlock()
	out := make([]*phoneConn, 0, len(rl.proxies))
	for _, p := range rl.proxies {
		out = append(out, p)
	}
	return out
}

func (rl *Relay) linkLost(loss LinkLoss, n int) {
	rl.log.Warn("cross-instance phones closed: frames may have been lost", "event", "cluster_link_lost", "reason", string(loss), "count", n)
	rl.m.ClusterLinksLost.WithLabelValues(string(loss)).Add(float64(n))
}
