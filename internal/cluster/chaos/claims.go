package chaos

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// The claims check. Each server-id's ownership is a register holding the
// binary that owns it (0: none). Clients cannot read it; they observe it:
//
//	claim(b) -> ok        b was accepted: from then b owns the server-id.
//	                      Allowed if nobody owned it or its owner may be
//	                      gone (windows.mayBeDead: ended, not reading, or
//	                      cut off past its lease).
//	claim(b) -> 4409      someone else owns it.
//	claim(b) -> 1013      no change (when it is allowed: windows.tryAgain).
//	claim(b) -> ?         the client saw neither (its instance died): ok or
//	                      nothing.
//	owns(b)               a frame from or to b was routed: b owned it at
//	                      some time between the frame's send and receipt.
//	replaced(b)           b was closed 1011 "replaced": another owns it.
//	evicted(b)            a phone that joined under b was closed 4404: b no
//	                      longer owns it, or b may be gone (grace expiry).
//	refused               a phone was refused 4404 before any frame:
//	                      nobody owns it or its owner may be gone.
//
// A binary owns a server-id for one contiguous interval (it never owns it
// again once it lost it), so of its many owns(b) only the one that
// returned first and the one called last constrain the history: those
// two are kept.
//
// docs/cluster.md chose availability during partitions longer than the
// lease: an owner cut off that long keeps serving its local phones while
// another instance grants the server-id anew, until the partition heals
// plus one reconnect and one refresh (windows.split). What the split-off
// instance's clients observe in such a window is left out (owns, its
// phones' refusals and evictions) or weakened (a claim its own registry
// granted has an unknown outcome). And a grace slot can be reclaimed
// elsewhere at once, so a phone refused 4404 on an instance that is cut
// off (windows.stale) is no ownership fact either.

type claimOut int

const (
	outOK claimOut = iota
	outConflict
	outTryAgain
	outUnknown
)

type opKind int

const (
	opClaim opKind = iota
	opOwns
	opReplaced
	opEvicted
	opRefused
)

// claimIn is an operation's input: what it is, which binary, and the
// binaries that may have been gone during it.
type claimIn struct {
	kind   opKind
	binary int
	dead   []int // sorted
}

func (in claimIn) mayBeDead(b int) bool {
	_, ok := slices.BinarySearch(in.dead, b)
	return ok
}

// claimModel is the register. Its state is the owner (int, 0 none); a
// claim of unknown outcome branches, so it is nondeterministic.
var claimModel = (&porcupine.NondeterministicModel{
	Init: func() []interface{} { return []interface{}{0} },
	Step: func(state, input, output interface{}) []interface{} {
		owner := state.(int)
		in := input.(claimIn)
		free := owner == 0 || in.mayBeDead(owner)
		switch in.kind {
		case opClaim:
			switch output.(claimOut) {
			case outOK:
				if free {
					return []interface{}{in.binary}
				}
			case outConflict:
				if owner != 0 && owner != in.binary {
					return []interface{}{owner}
				}
			case outTryAgain:
				return []interface{}{owner}
			case outUnknown:
				if free {
					return []interface{}{owner, in.binary}
				}
				return []interface{}{owner}
			}
		case opOwns:
			if owner == in.binary {
				return []interface{}{owner}
			}
		case opReplaced:
			if owner != in.binary {
				return []interface{}{owner}
			}
		case opEvicted:
			if owner != in.binary || in.mayBeDead(owner) {
				return []interface{}{owner}
			}
		case opRefused:
			if free {
				return []interface{}{owner}
			}
		}
		return nil
	},
	DescribeOperation: func(input, output interface{}) string {
		in := input.(claimIn)
		names := map[opKind]string{opClaim: "claim", opOwns: "owns", opReplaced: "replaced", opEvicted: "evicted", opRefused: "refused"}
		s := fmt.Sprintf("%s(b%d)", names[in.kind], in.binary)
		if in.kind == opClaim {
			s += " -> " + [...]string{"ok", "4409", "1013", "?"}[output.(claimOut)]
		}
		if len(in.dead) > 0 {
			s += fmt.Sprintf(" maybe-gone%v", in.dead)
		}
		return s
	},
	DescribeState: func(state interface{}) string { return fmt.Sprintf("owner b%d", state.(int)) },
}).ToModel()

// claimOps turns a tenant's history into register operations. Binaries
// and phones are h.Conns of that tenant.
func claimOps(h *History, w *windows, tenant string, conns []*Conn) []porcupine.Operation {
	var ops []porcupine.Operation
	var binaries []*Conn
	byID := map[int]*Conn{}
	for _, c := range conns {
		byID[c.ID] = c
	}
	for _, c := range conns {
		if c.Role == Binary {
			binaries = append(binaries, c)
		}
	}
	dead := func(a, b T) []int {
		var out []int
		for _, c := range binaries {
			if c.Dial <= b && w.mayBeDead(c, a, b) {
				out = append(out, c.ID)
			}
		}
		sort.Ints(out)
		return out
	}
	// The one anomaly allowed: on an instance split off past its lease,
	// local claims and joins see that instance's own, stale, view until
	// the heal is noticed. Their operations are left out there.
	split := func(inst int, a, b T) bool { return anyOverlap(w.split(inst), a, b) }
	add := func(client int, in claimIn, out claimOut, a, b T) {
		if c := byID[client]; c != nil && c.Role == Phone && split(c.Inst, a, b) {
			return
		}
		in.dead = dead(a, b)
		ops = append(ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: int64(a), Return: int64(b)})
	}
	end := h.End
	for _, c := range binaries {
		if c.Upgraded == 0 {
			continue // the upgrade failed: no claim was made
		}
		switch {
		case c.Accepted:
			ret := c.Upgraded
			if !w.p.ClaimAt101 {
				ret = max(c.ClaimedAt, c.Upgraded)
			}
			if split(c.Inst, c.Dial, ret) {
				// Granted by a split-off instance's own registry, maybe
				// never by the store: it may or may not have taken the
				// server-id.
				add(c.ID, claimIn{kind: opClaim, binary: c.ID}, outUnknown, c.Dial, end)
				break
			}
			add(c.ID, claimIn{kind: opClaim, binary: c.ID}, outOK, c.Dial, ret)
		case c.relayClosed() && c.Code == codeConflict:
			add(c.ID, claimIn{kind: opClaim, binary: c.ID}, outConflict, c.Dial, c.Ended)
		case c.relayClosed() && c.Code == codeTryAgain:
			add(c.ID, claimIn{kind: opClaim, binary: c.ID}, outTryAgain, c.Dial, c.Ended)
		default:
			add(c.ID, claimIn{kind: opClaim, binary: c.ID}, outUnknown, c.Dial, end)
		}
		if c.relayClosed() && c.Code == codeInternal && c.Reason == reasonReplaced {
			add(c.ID, claimIn{kind: opReplaced, binary: c.ID}, outOK, c.Ended, c.Ended)
		}
	}
	// owns(b): the first-returning and the last-called frame of each
	// binary, outside the windows in which its instance may be split off.
	type span struct{ first, last *Interval }
	spans := map[int]*span{}
	note := func(b int, iv Interval) {
		s := spans[b]
		if s == nil {
			s = &span{}
			spans[b] = s
		}
		if s.first == nil || iv.To < s.first.To {
			v := iv
			s.first = &v
		}
		if s.last == nil || iv.From > s.last.From {
			v := iv
			s.last = &v
		}
	}
	for _, d := range h.Deliv {
		if d.Bad != "" || d.P.Forged || d.P.Tenant != tenant {
			continue
		}
		b := d.To
		if !d.Up {
			b = d.P.Binary
		}
		bc := byID[b]
		if bc == nil || bc.Role != Binary {
			continue
		}
		iv := Interval{T(d.P.Sent) - 0, d.Recv}
		if iv.From > iv.To {
			iv.From = iv.To
		}
		if split(bc.Inst, iv.From, iv.To) {
			continue
		}
		note(b, iv)
	}
	for b, s := range spans {
		add(b, claimIn{kind: opOwns, binary: b}, outOK, s.first.From, s.first.To)
		if *s.last != *s.first {
			add(b, claimIn{kind: opOwns, binary: b}, outOK, s.last.From, s.last.To)
		}
	}
	// Phones closed 4404 by the relay: evicted from the binary they
	// joined under, or refused before any frame.
	joined := joinedUnder(h)
	for _, c := range conns {
		if c.Role != Phone || !c.relayClosed() || c.Code != codeNoBinary {
			continue
		}
		if b, ok := joined[c.ID]; ok {
			add(c.ID, claimIn{kind: opEvicted, binary: b}, outOK, c.Ended, c.Ended)
		} else if c.Upgraded != 0 && !w.stale(c.Inst, c.Dial, c.Ended) {
			// (On an instance cut off from NATS a phone may join a grace
			// slot another instance has reclaimed meanwhile, and be closed
			// 4404 when the grace ends there or the heal is noticed,
			// without a frame: a refusal that is no ownership fact.)
			// From its dial: a join decided before the 101 may have joined
			// a slot that was then dropped (an eviction that looks like a
			// refusal: no frame got through in between).
			add(c.ID, claimIn{kind: opRefused}, outOK, c.Dial, c.Ended)
		}
	}
	return ops
}

// joinedUnder maps each phone to the binary it exchanged frames with.
func joinedUnder(h *History) map[int]int {
	out := map[int]int{}
	for _, d := range h.Deliv {
		if d.Bad != "" || d.P.Forged {
			continue
		}
		if d.Up {
			if _, ok := out[d.P.Phone]; !ok {
				out[d.P.Phone] = d.To
			}
		} else if d.P.Binary != 0 {
			if _, ok := out[d.To]; !ok {
				out[d.To] = d.P.Binary
			}
		}
	}
	return out
}

// checkClaims runs porcupine on each tenant's operations. A tenant whose
// history is not linearizable is a violation; one the checker could not
// decide within its time is reported as such (a failure too: an
// undecided history proves nothing). vizDir, when set, receives an HTML
// visualisation of each failing tenant.
func checkClaims(h *History, w *windows, vizDir string) []Violation {
	byTenant := map[string][]*Conn{}
	for _, c := range h.Conns {
		byTenant[c.Tenant] = append(byTenant[c.Tenant], c)
	}
	tenants := make([]string, 0, len(byTenant))
	for t := range byTenant {
		tenants = append(tenants, t)
	}
	sort.Strings(tenants)
	var out []Violation
	for _, t := range tenants {
		ops := claimOps(h, w, t, byTenant[t])
		res, info := porcupine.CheckOperationsVerbose(claimModel, ops, 30*time.Second)
		if res == porcupine.Ok {
			continue
		}
		v := Violation{Kind: VClaims, Tenant: t, What: fmt.Sprintf("ownership history not linearizable (%s, %d operations)", res, len(ops))}
		if res == porcupine.Unknown {
			v.What = fmt.Sprintf("ownership history undecided within 30s (%d operations)", len(ops))
		}
		v.Detail = describeOps(ops)
		if vizDir != "" {
			p := filepath.Join(vizDir, "claims-"+safeName(t)+".html")
			if err := porcupine.VisualizePath(claimModel, info, p); err == nil {
				v.Detail += "\nvisualisation: " + p
			}
		}
		out = append(out, v)
	}
	return out
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '~' || r == '.' {
			return '_'
		}
		return r
	}, s)
}

// describeOps lists operations in call order, for a failure's detail.
func describeOps(ops []porcupine.Operation) string {
	s := append([]porcupine.Operation(nil), ops...)
	sort.Slice(s, func(i, j int) bool { return s[i].Call < s[j].Call })
	var b strings.Builder
	for _, op := range s {
		fmt.Fprintf(&b, "  [%8.3fs %8.3fs] %s\n", time.Duration(op.Call).Seconds(), time.Duration(op.Return).Seconds(),
			claimModel.DescribeOperation(op.Input, op.Output))
	}
	return b.String()
}

// vizDirFromEnv is where failing claim histories are visualised
// (CHAOS_VIZ_DIR), or the system's temporary directory.
func vizDirFromEnv() string {
	if d := os.Getenv("CHAOS_VIZ_DIR"); d != "" {
		return d
	}
	return os.TempDir()
}
