package chaos

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// The relay's close reasons (fixed phrases, docs/protocol.md §6) the
// checker tells apart.
const (
	reasonReplaced    = "replaced by a new binary"
	reasonHeartbeat   = "heartbeat timeout"
	reasonReadTimeout = "read timeout"
	reasonBacklog     = "backlog full"
	reasonWriteFailed = "write failed"
	reasonWriteStall  = "write timeout"
	reasonLinkLost    = "cluster link lost"
	reasonNoBinary    = "no binary for this server"
)

// VKind is a kind of violation.
type VKind string

// Violation kinds.
const (
	VClaims    VKind = "claims"     // ownership not linearizable
	VMisrouted VKind = "misrouted"  // a frame to the wrong tenant, phone or binary, or a forged one
	VDuplicate VKind = "duplicate"  // a frame delivered twice
	VReordered VKind = "reordered"  // a frame delivered after a later one of its stream
	VGap       VKind = "gap"        // frames missing between two delivered ones
	VLost      VKind = "lost"       // frames missing at a stream's end with no close to bracket them
	VLate      VKind = "late"       // a frame delivered long after it was sent, with nothing to explain it
	VClose     VKind = "close-code" // a close code or reason the docs do not give for that situation
	VNotice    VKind = "notice"     // a close notice missing, doubled, early or with the wrong code
	VBudget    VKind = "budget"     // a gauge not back to zero, or a stalled binary's backlog over the ceiling
)

// Violation is one thing the cluster did that docs/protocol.md and
// docs/cluster.md do not allow in the situation the history shows.
type Violation struct {
	Kind   VKind
	At     T
	Tenant string
	Conn   int
	What   string
	Detail string
}

func (v Violation) String() string {
	s := fmt.Sprintf("%-10s t=%7.3fs", v.Kind, v.At.Seconds())
	if v.Tenant != "" {
		s += " tenant=" + v.Tenant
	}
	if v.Conn != 0 {
		s += fmt.Sprintf(" conn=%d", v.Conn)
	}
	return s + ": " + v.What
}

// lateBound: a frame is delivered within this of its send, or its stream
// is closed. docs/cluster.md: an instance that stops answering is declared
// lost after three unanswered pings (within about 4 s), a silent NATS link
// is given up within 3 s; a second more for the close to reach the client.
func (p Params) lateBound() time.Duration { return 5*time.Second + p.Slack }

// joinBound: a phone's join is answered (admitted, or closed 4404 or
// 1013) within the join's timeout (5 s).
func (p Params) joinBound() time.Duration { return 6*time.Second + p.Slack }

// Check reads h and returns every violation, claims first.
func Check(h *History, p Params) []Violation {
	w := newWindows(h, p)
	var out []Violation
	out = append(out, checkClaims(h, w, vizDirFromEnv())...)
	out = append(out, checkFrames(h, w)...)
	out = append(out, checkCloses(h, w)...)
	out = append(out, checkNotices(h, w)...)
	out = append(out, checkBudgets(h, w)...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind < out[j].Kind
		}
		return out[i].At < out[j].At
	})
	return out
}

// ownerInst is the instance of the binary a phone joined under, or -1.
func ownerInst(h *History, joined map[int]int, phone int) int {
	if b, ok := joined[phone]; ok {
		if c := h.Conns[b]; c != nil {
			return c.Inst
		}
	}
	return -1
}

// checkFrames: at most once, in order, to its own tenant and peer only;
// every missing frame bracketed by a close.
func checkFrames(h *History, w *windows) []Violation {
	var out []Violation
	joined := joinedUnder(h)
	type gap struct {
		at              T
		after, from, to int
		tenant          string
		conn            int
	}
	type streamState struct {
		last int
		seen map[int]bool
		gaps []gap
	}
	streams := map[streamKey]*streamState{}
	connOf := map[[2]int]string{} // (binary, phone) -> conn_id
	phoneOf := map[string]int{}   // binary/conn_id -> phone
	for _, d := range h.sorted() {
		bad := func(kind VKind, format string, a ...any) {
			out = append(out, Violation{Kind: kind, At: d.Recv, Tenant: d.P.Tenant, Conn: d.To, What: fmt.Sprintf(format, a...)})
		}
		rc := h.Conns[d.To]
		if d.Bad != "" {
			bad(VMisrouted, "a frame that is not one of the harness's: %s", d.Bad)
			continue
		}
		if d.P.Forged {
			bad(VMisrouted, "a rogue instance's forged frame was delivered (phone %d, seq %d)", d.P.Phone, d.P.Seq)
			continue
		}
		var k streamKey
		if d.Up {
			k = streamKey{Up: true, Phone: d.P.Phone}
			pc := h.Conns[d.P.Phone]
			switch {
			case rc == nil || rc.Role != Binary:
				bad(VMisrouted, "a phone frame delivered to a non-binary")
				continue
			case pc == nil || pc.Role != Phone:
				bad(VMisrouted, "a frame naming phone %d, which the harness never opened", d.P.Phone)
				continue
			case pc.Tenant != d.P.Tenant || rc.Tenant != d.P.Tenant:
				bad(VMisrouted, "phone %d (tenant %s) frame delivered to binary %d of tenant %s", pc.ID, pc.Tenant, rc.ID, rc.Tenant)
				continue
			case joined[pc.ID] != rc.ID:
				bad(VMisrouted, "phone %d's frame delivered to binary %d, but it joined binary %d", pc.ID, rc.ID, joined[pc.ID])
				continue
			}
			key := [2]int{rc.ID, pc.ID}
			if id, ok := connOf[key]; ok && id != d.ConnID {
				bad(VMisrouted, "phone %d's frames reach binary %d under two conn_ids (%s, %s)", pc.ID, rc.ID, id, d.ConnID)
			}
			connOf[key] = d.ConnID
			ck := fmt.Sprintf("%d/%s", rc.ID, d.ConnID)
			if other, ok := phoneOf[ck]; ok && other != pc.ID {
				bad(VMisrouted, "conn_id %s at binary %d carries frames of phones %d and %d", d.ConnID, rc.ID, other, pc.ID)
			}
			phoneOf[ck] = pc.ID
		} else {
			k = streamKey{Phone: d.To, Binary: d.P.Binary}
			bc := h.Conns[d.P.Binary]
			switch {
			case rc == nil || rc.Role != Phone:
				bad(VMisrouted, "a binary frame delivered to a non-phone")
				continue
			case d.P.Phone != rc.ID:
				bad(VMisrouted, "binary %d's frame for phone %d delivered to phone %d", d.P.Binary, d.P.Phone, rc.ID)
				continue
			case bc == nil || bc.Role != Binary || bc.Tenant != rc.Tenant || d.P.Tenant != rc.Tenant:
				bad(VMisrouted, "phone %d (tenant %s) received binary %d's frame of tenant %s", rc.ID, rc.Tenant, d.P.Binary, d.P.Tenant)
				continue
			case joined[rc.ID] != bc.ID:
				bad(VMisrouted, "phone %d received frames of binary %d and of binary %d", rc.ID, joined[rc.ID], bc.ID)
				continue
			}
		}
		st := streams[k]
		if st == nil {
			st = &streamState{seen: map[int]bool{}}
			streams[k] = st
		}
		switch {
		case st.seen[d.P.Seq]:
			bad(VDuplicate, "%s: frame %d delivered again", k, d.P.Seq)
			continue
		case d.P.Seq < st.last:
			bad(VReordered, "%s: frame %d delivered after frame %d", k, d.P.Seq, st.last)
		case d.P.Seq > st.last+1:
			// Judged at the end: frames that arrive later were
			// reordered, not lost.
			st.gaps = append(st.gaps, gap{at: d.Recv, after: d.P.Seq, from: st.last + 1, to: d.P.Seq - 1, tenant: d.P.Tenant, conn: d.To})
		}
		st.seen[d.P.Seq] = true
		if d.P.Seq > st.last {
			st.last = d.P.Seq
		}
		// Late: held somewhere with nothing to explain it (a partition
		// the cluster did not notice, for instance).
		if lat := d.Recv - T(d.P.Sent); lat > w.p.lateBound() && !explainedDelay(h, w, joined, k, T(d.P.Sent), d.Recv) {
			bad(VLate, "%s: frame %d delivered %.1fs after it was sent", k, d.P.Seq, lat.Seconds())
		}
	}
	for k, st := range streams {
		for _, g := range st.gaps {
			var missing []int
			for s := g.from; s <= g.to && len(missing) < 8; s++ {
				if !st.seen[s] {
					missing = append(missing, s)
				}
			}
			if len(missing) > 0 {
				out = append(out, Violation{Kind: VGap, At: g.at, Tenant: g.tenant, Conn: g.conn,
					What: fmt.Sprintf("%s: frame %d delivered, frames %v (of %d-%d) never were, and the stream stayed open", k, g.after, missing, g.from, g.to)})
			}
		}
	}
	// Frames never delivered: each must be bracketed by a close within
	// lateBound of its send.
	notices := noticesByPhone(h)
	keys := make([]streamKey, 0, len(h.Sent))
	for k := range h.Sent {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, k := range keys {
		st := streams[k]
		last := 0
		if st != nil {
			last = st.last
		}
		pc := h.Conns[k.Phone]
		for _, s := range h.Sent[k] {
			if s.Seq <= last {
				continue // a gap before last was reported above
			}
			if why := unbracketed(h, w, joined, notices, k, pc, s); why != "" {
				out = append(out, Violation{Kind: VLost, At: s.At, Tenant: pc.Tenant, Conn: pc.ID,
					What: fmt.Sprintf("%s: frames %d..%d never delivered: %s", k, s.Seq, h.Sent[k][len(h.Sent[k])-1].Seq, why)})
			}
			break // one report per stream
		}
	}
	return out
}

// explainedDelay: a delivery's delay is explained by its receiver not
// reading, or an instance on its path being stopped.
func explainedDelay(h *History, w *windows, joined map[int]int, k streamKey, a, b T) bool {
	bin := k.Binary
	if k.Up {
		bin = joined[k.Phone]
	}
	if k.Up && anyOverlap(w.stalled[bin], a, b) || !k.Up && anyOverlap(w.slowPhone[k.Phone], a, b) {
		return true
	}
	for _, id := range []int{k.Phone, bin} {
		if c := h.Conns[id]; c != nil && w.stopped(c.Inst, a, b) {
			return true
		}
	}
	return false
}

// unbracketed says why frame s of stream k, never delivered, is not
// bracketed by a close, or "" when it is: the phone closed by the relay
// (its code is checked by checkCloses), or for a phone's frame its binary
// ended or received a 1011 notice for it, for a binary's frame the phone
// ended; in time.
func unbracketed(h *History, w *windows, joined map[int]int, notices map[int][]Notice, k streamKey, pc *Conn, s Sent) string {
	b, ok := joined[pc.ID]
	insts := []int{pc.Inst}
	if bc := h.Conns[b]; ok && bc != nil {
		insts = append(insts, bc.Inst)
	}
	bound := w.p.lateBound()
	if !ok {
		bound = w.p.joinBound()
	}
	by := w.deadline(s.At, bound, insts...)
	if pc.relayClosed() && pc.Ended <= by {
		return ""
	}
	if !k.Up {
		if pc.Ended != 0 && pc.Ended <= by {
			return ""
		}
		if pc.Ended == 0 || pc.Ended > h.Quiesce {
			return "the phone stayed open"
		}
		return fmt.Sprintf("the phone stayed open %.1fs after", (pc.Ended - s.At).Seconds())
	}
	if !ok {
		// The phone never reached a binary: its first frame is lost with
		// the join, which its close (checked by checkCloses) brackets.
		if pc.Ended != 0 && pc.Ended <= by {
			return ""
		}
		return "the phone never reached a binary and was not closed"
	}
	if bc := h.Conns[b]; bc.Ended != 0 && bc.Ended <= by {
		return ""
	}
	for _, n := range notices[pc.ID] {
		if n.Binary == b && n.Code == codeInternal && n.Recv <= by {
			return "" // the link was lost: the binary was told 1011
		}
	}
	switch {
	case pc.Ended == 0:
		return "the phone and its binary stayed open"
	case pc.SelfClose != 0 && pc.SelfClose <= pc.Ended:
		return fmt.Sprintf("the phone closed itself (%d) and its binary stayed open without a 1011 notice", pc.SelfCode)
	}
	return "its binary stayed open"
}

// noticesByPhone maps each phone to the notices naming its conn_id at the
// binary it joined.
func noticesByPhone(h *History) map[int][]Notice {
	phoneOf := map[string]int{}
	for _, d := range h.Deliv {
		if d.Up && d.Bad == "" && !d.P.Forged {
			phoneOf[fmt.Sprintf("%d/%s", d.To, d.ConnID)] = d.P.Phone
		}
	}
	out := map[int][]Notice{}
	for _, n := range h.Notices {
		if p, ok := phoneOf[fmt.Sprintf("%d/%s", n.Binary, n.ConnID)]; ok {
			out[p] = append(out[p], n)
		}
	}
	return out
}

// checkCloses: every close the relay sent is one the docs give for the
// situation the fault log shows.
func checkCloses(h *History, w *windows) []Violation {
	var out []Violation
	joined := joinedUnder(h)
	directives := map[int]int{} // phone -> the directive code its binary sent
	for k, ss := range h.Sent {
		for _, s := range ss {
			if !k.Up && s.Directive != 0 {
				directives[k.Phone] = s.Directive
			}
		}
	}
	ids := make([]int, 0, len(h.Conns))
	for id := range h.Conns {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		c := h.Conns[id]
		if !c.relayClosed() {
			continue
		}
		a, b := c.Ended-w.p.Slack-time.Second, c.Ended
		if a < c.Dial {
			a = c.Dial
		}
		ok, why := true, ""
		switch {
		case c.Code == codeAbnormal:
			// Its instance died, or it was not reading: the relay's
			// close frame could not reach it before --close-timeout.
			// (A stop counts: so does a harness that was not run, whose
			// client could not answer the close in time.)
			ok = w.killed(c.Inst, c.Dial, c.Ended) || anyOverlap(w.stalled[c.ID], c.Dial, c.Ended) ||
				anyOverlap(w.slowPhone[c.ID], c.Dial, c.Ended) || w.stopped(c.Inst, a, b)
			why = "its socket dropped without a close frame, its instance was neither killed nor stopped, and it kept reading"
		case c.Code == codeTryAgain:
			ok, why = w.tryAgain(c.Inst, c.Dial, c.Ended), "1013 while neither its instance nor a possible owner was cut off, nor the store electing"
		case c.Role == Binary:
			switch {
			case c.Code == codeConflict:
			case c.Code == codeInternal && c.Reason == reasonReplaced:
			case c.Code == codeInternal && (c.Reason == reasonHeartbeat || c.Reason == reasonWriteFailed || c.Reason == reasonWriteStall || c.Reason == reasonReadTimeout):
				ok = anyOverlap(w.stalled[c.ID], c.Dial, c.Ended) || w.stopped(c.Inst, a, b)
				why = "1011 " + c.Reason + " for a binary that kept reading on a running instance"
			default:
				ok, why = false, "not a code a binary gets"
			}
		default: // phone
			owner := ownerInst(h, joined, c.ID)
			switch {
			case c.Code == codeNoBinary: // the claims check judges it
			case directives[c.ID] != 0 && c.Code == directives[c.ID]:
			case c.Code == codeTooMany:
				ok, why = w.anyDisturbed(c.Dial-w.p.settle(), c.Ended), "4429 while the harness kept fewer than --max-phones phones"
			case c.Code == codeInternal && c.Reason == reasonBacklog:
			case c.Code == codeInternal && c.Reason == reasonLinkLost:
				switch {
				case owner == c.Inst:
					ok, why = false, "1011 link lost for a phone on its binary's own instance"
				case owner < 0:
					ok, why = w.anyDisturbed(a, b), "1011 link lost while no instance was cut off"
				default:
					ok, why = w.disturbed(c.Inst, a, b) || w.disturbed(owner, a, b),
						fmt.Sprintf("1011 link lost while neither its instance (%d) nor its owner's (%d) was cut off", c.Inst, owner)
				}
			case c.Code == codeInternal && (c.Reason == reasonHeartbeat || c.Reason == reasonWriteFailed || c.Reason == reasonWriteStall || c.Reason == reasonReadTimeout):
				ok = anyOverlap(w.slowPhone[c.ID], c.Dial, c.Ended) || w.stopped(c.Inst, a, b)
				why = "1011 " + c.Reason + " for a phone that kept reading on a running instance"
			default:
				ok, why = false, "not a code the relay gives a phone there"
			}
		}
		if !ok {
			out = append(out, Violation{Kind: VClose, At: c.Ended, Tenant: c.Tenant, Conn: c.ID,
				What: fmt.Sprintf("%s on instance %d closed %d %q: %s", c.Role, c.Inst, c.Code, c.Reason, why)})
		}
	}
	return out
}

// checkNotices: a binary that outlives a phone of its own gets exactly
// one close notice for it, after the phone's last frame, with the phone's
// own code (1001 when it vanished), the relay's code when the relay closed
// it, or 1011 when its link was lost; none for a phone evicted 4404 or
// closed by a directive.
func checkNotices(h *History, w *windows) []Violation {
	var out []Violation
	joined := joinedUnder(h)
	notices := noticesByPhone(h)
	lastUp := map[int]T{}
	for _, d := range h.Deliv {
		if d.Up && d.Bad == "" && !d.P.Forged && d.Recv > lastUp[d.P.Phone] {
			lastUp[d.P.Phone] = d.Recv
		}
	}
	directive := map[int]int{} // phone -> the directive code its binary sent it
	for k, ss := range h.Sent {
		for _, s := range ss {
			if !k.Up && s.Directive != 0 {
				directive[k.Phone] = s.Directive
			}
		}
	}
	ids := make([]int, 0, len(joined))
	for p := range joined {
		ids = append(ids, p)
	}
	sort.Ints(ids)
	for _, pid := range ids {
		pc, bc := h.Conns[pid], h.Conns[joined[pid]]
		ns := notices[pid]
		bad := func(at T, format string, a ...any) {
			out = append(out, Violation{Kind: VNotice, At: at, Tenant: pc.Tenant, Conn: pid, What: fmt.Sprintf(format, a...)})
		}
		if len(ns) > 1 {
			bad(ns[1].Recv, "binary %d got %d close notices for phone %d", bc.ID, len(ns), pid)
		}
		for _, n := range ns {
			if lastUp[pid] > n.Recv {
				bad(n.Recv, "binary %d got phone %d's close notice before its last frame", bc.ID, pid)
			}
		}
		home, owner := pc.Inst, bc.Inst
		a, b := pc.Ended-w.p.Slack-time.Second, pc.Ended+w.p.lateBound()
		if pc.Ended == 0 {
			a, b = h.End, h.End
		}
		// The phone's link may have been lost: its binary is told 1011,
		// whatever happens to the phone afterwards.
		lost := home != owner && (w.disturbed(home, a, b) || w.disturbed(owner, a, b))
		if pc.relayClosed() && (pc.Code == codeNoBinary || directive[pid] != 0 && pc.Code == directive[pid]) {
			if len(ns) > 0 && !(lost && ns[0].Code == codeInternal) {
				bad(ns[0].Recv, "binary %d got a close notice (%d) for phone %d, closed %d, which takes none", bc.ID, ns[0].Code, pid, pc.Code)
			}
			continue
		}
		if pc.Ended == 0 {
			if len(ns) > 0 {
				bad(ns[0].Recv, "binary %d got a close notice (%d) for phone %d, which is still open", bc.ID, ns[0].Code, pid)
			}
			continue
		}
		// The codes allowed, from how the phone ended.
		allowed := map[int]bool{}
		switch {
		case pc.relayClosed() && pc.Code == codeAbnormal:
			allowed[codeGoingAway], allowed[codeInternal] = true, true
		case pc.relayClosed():
			allowed[pc.Code] = true
		case pc.SelfCode == codeVanish:
			allowed[codeGoingAway] = true
			if anyOverlap(w.stalled[bc.ID], pc.SelfClose, pc.Ended) {
				// Its read loop was waiting its turn behind its stalled
				// binary (chaos-findings.md 8), so the relay failed a
				// write to it before it read the end of the stream.
				allowed[codeInternal] = true
			}
		default:
			allowed[pc.SelfCode] = true
			if pc.Code != codeAbnormal && pc.Code != pc.SelfCode {
				// The relay closed it with its own code while its close
				// was on the way (the close frames crossed): the relay
				// never read the phone's, and tells the binary its own.
				allowed[pc.Code] = true
			}
			if pc.Code == codeAbnormal {
				// Its close was not answered in time (its read loop
				// waiting its turn behind a slow binary, say) and its
				// socket dropped: the relay may have seen it vanish, or
				// failed a write to it first.
				allowed[codeGoingAway], allowed[codeInternal] = true, true
			}
		}
		if lost {
			allowed[codeInternal] = true
		}
		if len(ns) == 0 {
			// Due within lateBound, pushed back past every stop of the
			// phone's home and its binary's instance (a stopped relay
			// sends nothing): a binary gone before then may get none.
			if bc.end() > w.deadline(pc.Ended, w.p.lateBound(), home, owner) {
				bad(pc.Ended, "binary %d (instance %d) got no close notice for phone %d (instance %d, closed %d by %s), and stayed open %.1fs",
					bc.ID, owner, pid, home, closeCode(pc), closer(pc), (min(bc.end(), h.End) - pc.Ended).Seconds())
			}
			continue
		}
		if !allowed[ns[0].Code] {
			bad(ns[0].Recv, "binary %d (instance %d) got close notice %d for phone %d (instance %d, closed %d by %s); allowed %v",
				bc.ID, owner, ns[0].Code, pid, home, closeCode(pc), closer(pc), keys(allowed))
		}
	}
	return out
}

func closeCode(c *Conn) int {
	if c.relayClosed() {
		return c.Code
	}
	return c.SelfCode
}

func closer(c *Conn) string {
	if c.relayClosed() {
		return "the relay"
	}
	return "itself"
}

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// checkBudgets: gauges back to zero after quiescence, and a stalled
// binary's backlog from its remote phones within its instance's
// --max-queued-bytes (plus what the sockets hold).
func checkBudgets(h *History, w *windows) []Violation {
	var out []Violation
	for _, e := range h.GaugeErrs {
		out = append(out, Violation{Kind: VBudget, At: h.End, What: e})
	}
	for _, f := range h.Faults {
		if f.Kind != FaultStall || f.End == 0 {
			continue
		}
		bc := h.Conns[f.Target]
		if bc == nil || bc.endedBy(f.End) {
			continue
		}
		b := stallBacklog(h, f)
		if limit := w.p.MaxQueued + w.p.KernelSlack; b.bytes > limit {
			out = append(out, Violation{Kind: VBudget, At: f.End, Tenant: bc.Tenant, Conn: bc.ID,
				What: fmt.Sprintf("binary %d on instance %d, stalled %.1fs, then received %d bytes (%d frames of %d remote phones) held for it: over --max-queued-bytes %d plus %d in sockets",
					bc.ID, bc.Inst, (f.End - f.Start).Seconds(), b.bytes, b.frames, b.phones, w.p.MaxQueued, w.p.KernelSlack)})
		}
	}
	return out
}

// backlog is what a stalled binary received once it read again, of the
// frames its phones on other instances had sent at least half a second
// before (their owner had them by then: NATS does not wait).
type backlog struct{ bytes, frames, phones int }

func stallBacklog(h *History, f Fault) backlog {
	bc := h.Conns[f.Target]
	var b backlog
	phones := map[int]bool{}
	for _, d := range h.Deliv {
		if !d.Up || d.To != bc.ID || d.Recv < f.End || T(d.P.Sent) > f.End-500*time.Millisecond || d.P.Forged {
			continue
		}
		if pc := h.Conns[d.P.Phone]; pc != nil && pc.Inst != bc.Inst {
			b.bytes += d.Size + 64 // a queued item's charge
			b.frames++
			phones[pc.ID] = true
		}
	}
	b.phones = len(phones)
	return b
}

// Summary is a one-line count of violations by kind.
func Summary(vs []Violation) string {
	n := map[VKind]int{}
	for _, v := range vs {
		n[v.Kind]++
	}
	var parts []string
	for _, k := range []VKind{VClaims, VMisrouted, VDuplicate, VReordered, VGap, VLost, VLate, VClose, VNotice, VBudget, VCrash} {
		if n[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, n[k]))
		}
	}
	if len(parts) == 0 {
		return "no violations"
	}
	return strings.Join(parts, ", ")
}
