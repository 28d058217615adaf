package chaos

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// The checker on hand-made histories: each rule must pass a history that
// keeps it and fail one that breaks it (a checker that cannot fail proves
// nothing about the cluster).

const s = time.Second

func ms(n int) T { return T(n) * time.Millisecond }

var testParams = Params{Instances: 3, Lease: 4 * s, Grace: 2 * s, Slack: 500 * time.Millisecond, MaxQueued: 100 << 10,
	PhoneQueue: 48 << 10, KernelSlack: 20 << 10, ClaimAt101: true}

// hb builds a history.
type hb struct{ h *History }

func newHB() *hb {
	h := NewHistory(3)
	h.Quiesce, h.End = 100*s, 110*s
	return &hb{h}
}

// conn adds a connection that upgraded 10 ms after its dial and is open
// until the end unless closed.
func (b *hb) conn(id int, role Role, tenant string, inst int, dial T) *Conn {
	c := &Conn{ID: id, Role: role, Tenant: tenant, Inst: inst, Dial: dial, Upgraded: dial + ms(10)}
	b.h.Conns[id] = c
	return c
}

func (b *hb) bin(id int, tenant string, inst int, dial T) *Conn {
	c := b.conn(id, Binary, tenant, inst, dial)
	c.Accepted = true
	return c
}

func (b *hb) phone(id int, tenant string, inst int, dial T) *Conn {
	return b.conn(id, Phone, tenant, inst, dial)
}

// closedBy: the relay closed c at t with code and reason.
func closedBy(c *Conn, t T, code int, reason string) *Conn {
	c.Ended, c.Code, c.Reason = t, code, reason
	return c
}

// selfClosed: the harness closed c at t with code.
func selfClosed(c *Conn, t T, code int) *Conn {
	c.SelfClose, c.SelfCode, c.Ended, c.Code = t, code, t+ms(5), code
	return c
}

// frames sends n frames of phone p to binary bin, one every 100 ms from
// t, each delivered 5 ms later; skip lists sequence numbers not delivered.
func (b *hb) up(p *Conn, bin *Conn, t T, n int, skip ...int) {
	for seq := 1; seq <= n; seq++ {
		at := t + T(seq-1)*ms(100)
		b.h.Sent[streamKey{Up: true, Phone: p.ID}] = append(b.h.Sent[streamKey{Up: true, Phone: p.ID}], Sent{Seq: seq, At: at, Size: 100})
		if contains(skip, seq) {
			continue
		}
		b.h.Deliv = append(b.h.Deliv, Delivery{Up: true, To: bin.ID, ConnID: fmt.Sprintf("client-%d", p.ID), Recv: at + ms(5), Size: 100,
			P: Payload{Tenant: p.Tenant, Phone: p.ID, Seq: seq, Sent: int64(at)}})
	}
}

func (b *hb) down(bin *Conn, p *Conn, t T, n int, skip ...int) {
	k := streamKey{Phone: p.ID, Binary: bin.ID}
	for seq := 1; seq <= n; seq++ {
		at := t + T(seq-1)*ms(100)
		b.h.Sent[k] = append(b.h.Sent[k], Sent{Seq: seq, At: at, Size: 100})
		if contains(skip, seq) {
			continue
		}
		b.h.Deliv = append(b.h.Deliv, Delivery{To: p.ID, Recv: at + ms(5), Size: 100,
			P: Payload{Tenant: bin.Tenant, Phone: p.ID, Binary: bin.ID, Seq: seq, Sent: int64(at)}})
	}
}

func (b *hb) notice(bin, p *Conn, code int, at T) {
	b.h.Notices = append(b.h.Notices, Notice{Binary: bin.ID, ConnID: fmt.Sprintf("client-%d", p.ID), Code: code, Recv: at})
}

func (b *hb) fault(k FaultKind, target int, from, to T) {
	b.h.Faults = append(b.h.Faults, Fault{Kind: k, Target: target, Start: from, End: to})
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// only returns the violations of kind k.
func only(vs []Violation, k VKind) []Violation {
	var out []Violation
	for _, v := range vs {
		if v.Kind == k {
			out = append(out, v)
		}
	}
	return out
}

func expect(t *testing.T, vs []Violation, k VKind, n int, contains string) {
	t.Helper()
	got := only(vs, k)
	if len(got) != n {
		t.Fatalf("want %d %s violations, got %d; all: %v", n, k, len(got), vs)
	}
	for _, v := range got {
		if !strings.Contains(v.What, contains) {
			t.Fatalf("%s violation %q does not say %q", k, v.What, contains)
		}
	}
}

func expectNone(t *testing.T, vs []Violation) {
	t.Helper()
	if len(vs) > 0 {
		var b strings.Builder
		for _, v := range vs {
			fmt.Fprintf(&b, "\n%s\n%s", v, v.Detail)
		}
		t.Fatalf("want no violations, got %d:%s", len(vs), b.String())
	}
}

// A pair that works: a binary, a local and a remote phone, frames both
// ways, the phones leave normally and the binary is told so.
func pairHistory() (*hb, *Conn, *Conn, *Conn) {
	b := newHB()
	bin := b.bin(1, "t", 0, s)
	p1, p2 := b.phone(2, "t", 0, 2*s), b.phone(3, "t", 1, 2*s)
	b.up(p1, bin, 2*s, 20)
	b.up(p2, bin, 2*s, 20)
	b.down(bin, p1, 3*s, 10)
	b.down(bin, p2, 3*s, 10)
	selfClosed(p1, 6*s, 1000)
	selfClosed(p2, 6*s, 4321)
	b.notice(bin, p1, 1000, 6*s+ms(20))
	b.notice(bin, p2, 4321, 6*s+ms(20))
	return b, bin, p1, p2
}

func TestCheck_AWorkingPairPasses(t *testing.T) {
	b, _, _, _ := pairHistory()
	expectNone(t, Check(b.h, testParams))
}

func TestCheck_Frames(t *testing.T) {
	t.Run("duplicate", func(t *testing.T) {
		b, _, p1, _ := pairHistory()
		d := b.h.Deliv[3]
		d.Recv += ms(50)
		b.h.Deliv = append(b.h.Deliv, d)
		expect(t, Check(b.h, testParams), VDuplicate, 1, fmt.Sprintf("phone %d -> binary: frame 4 delivered again", p1.ID))
	})
	t.Run("reordered", func(t *testing.T) {
		b, _, _, _ := pairHistory()
		b.h.Deliv[4].Recv, b.h.Deliv[5].Recv = b.h.Deliv[5].Recv, b.h.Deliv[4].Recv
		expect(t, Check(b.h, testParams), VReordered, 1, "frame 5 delivered after frame 6")
	})
	t.Run("gap", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 1, 2*s)
		b.up(p, bin, 2*s, 10, 4, 5)
		expect(t, Check(b.h, testParams), VGap, 1, "frames [4 5]")
	})
	t.Run("another tenant's binary", func(t *testing.T) {
		b, _, p1, _ := pairHistory()
		other := b.bin(9, "u", 2, s)
		b.h.Deliv = append(b.h.Deliv, Delivery{Up: true, To: other.ID, ConnID: "client-x", Recv: 3 * s, P: Payload{Tenant: "t", Phone: p1.ID, Seq: 99, Sent: int64(3 * s)}})
		expect(t, Check(b.h, testParams), VMisrouted, 1, "delivered to binary 9 of tenant u")
	})
	t.Run("forged", func(t *testing.T) {
		b, _, p1, _ := pairHistory()
		b.h.Deliv = append(b.h.Deliv, Delivery{To: p1.ID, Recv: 3 * s, P: Payload{Tenant: "t", Phone: p1.ID, Binary: 1, Forged: true}})
		expect(t, Check(b.h, testParams), VMisrouted, 1, "forged")
	})
	t.Run("phone frames lost before its normal close", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 1, 2*s)
		b.up(p, bin, 2*s, 10, 8, 9, 10)
		selfClosed(p, 3*s, 1000)
		b.notice(bin, p, 1000, 3*s+ms(50))
		expect(t, Check(b.h, testParams), VLost, 1, "closed itself (1000) and its binary stayed open without a 1011 notice")
	})
	t.Run("phone frames lost to a cut, told 1011", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 1, 2*s)
		b.up(p, bin, 2*s, 10, 8, 9, 10)
		b.fault(FaultCut, 1, 2700*time.Millisecond, 3500*time.Millisecond)
		closedBy(p, 2800*time.Millisecond, 1011, reasonLinkLost)
		b.notice(bin, p, 1011, 2900*time.Millisecond)
		expectNone(t, Check(b.h, testParams))
	})
	t.Run("binary frames lost while the phone stays open", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 1, 2*s)
		b.up(p, bin, 2*s, 3)
		b.down(bin, p, 3*s, 10, 9, 10)
		expect(t, Check(b.h, testParams), VLost, 1, "binary 1 -> phone 2: frames 9..10 never delivered: the phone stayed open")
	})
	t.Run("binary frames lost, the phone evicted", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 1, 2*s)
		b.up(p, bin, 2*s, 3)
		b.down(bin, p, 3*s, 10, 9, 10)
		selfClosed(bin, 3950*time.Millisecond, 1000)
		closedBy(p, 6*s, 4404, reasonNoBinary) // grace over
		expectNone(t, Check(b.h, testParams))
	})
	t.Run("held by an unnoticed partition", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 1, 2*s)
		b.up(p, bin, 2*s, 5)
		b.fault(FaultBlackhole, 1, 2500*time.Millisecond, 20*s)
		b.h.Deliv[4].Recv = 20 * s
		expect(t, Check(b.h, testParams), VLate, 1, "frame 5 delivered 17.6s after it was sent")
	})
}

func TestCheck_Closes(t *testing.T) {
	t.Run("1013 with nothing cut off", func(t *testing.T) {
		b := newHB()
		closedBy(b.conn(1, Binary, "t", 0, s), s+ms(50), 1013, "cluster unavailable")
		expect(t, Check(b.h, testParams), VClose, 1, "1013 while neither")
	})
	t.Run("1013 while the owner is killed, within its lease", func(t *testing.T) {
		b := newHB()
		b.bin(1, "t", 1, s).Ended = 10 * s
		b.h.Conns[1].Code = codeAbnormal
		b.fault(FaultKill, 1, 10*s, 30*s)
		closedBy(b.conn(2, Binary, "t", 0, 12*s), 12*s+ms(50), 1013, "cluster unavailable")
		expectNone(t, Check(b.h, testParams))
	})
	t.Run("1013 long after the owner was killed (its claims never expire)", func(t *testing.T) {
		b := newHB()
		b.bin(1, "t", 1, s).Ended = 10 * s
		b.h.Conns[1].Code = codeAbnormal
		b.fault(FaultKill, 1, 10*s, 30*s)
		closedBy(b.conn(2, Binary, "t", 0, 20*s), 20*s+ms(50), 1013, "cluster unavailable")
		expect(t, Check(b.h, testParams), VClose, 1, "1013 while neither")
	})
	t.Run("1011 link lost for a phone on its binary's instance", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 0, 2*s)
		b.up(p, bin, 2*s, 3)
		b.fault(FaultCut, 0, 2500*time.Millisecond, 3*s)
		closedBy(p, 2600*time.Millisecond, 1011, reasonLinkLost)
		b.notice(bin, p, 1011, 2700*time.Millisecond)
		expect(t, Check(b.h, testParams), VClose, 1, "on its binary's own instance")
	})
	t.Run("1011 link lost with nothing cut off", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 1, 2*s)
		b.up(p, bin, 2*s, 3)
		closedBy(p, 2600*time.Millisecond, 1011, reasonLinkLost)
		b.notice(bin, p, 1011, 2700*time.Millisecond)
		expect(t, Check(b.h, testParams), VClose, 1, "neither its instance (1) nor its owner's (0)")
	})
	t.Run("a socket dropped while its instance ran", func(t *testing.T) {
		b := newHB()
		closedBy(b.bin(1, "t", 0, s), 3*s, codeAbnormal, "")
		expect(t, Check(b.h, testParams), VClose, 1, "its instance was neither killed nor stopped, and it kept reading")
	})
}

func TestCheck_Notices(t *testing.T) {
	t.Run("going-away for a phone the relay closed 1011", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 1, 2*s)
		b.up(p, bin, 2*s, 3)
		b.fault(FaultCut, 1, 2500*time.Millisecond, 3*s)
		closedBy(p, 2600*time.Millisecond, 1011, reasonLinkLost)
		b.notice(bin, p, 1001, 2700*time.Millisecond)
		expect(t, Check(b.h, testParams), VNotice, 1, "got close notice 1001 for phone 2 (instance 1, closed 1011 by the relay); allowed [1011]")
	})
	t.Run("going-away for a phone that closed 1000", func(t *testing.T) {
		b, bin, p1, _ := pairHistory()
		b.h.Notices[0] = Notice{Binary: bin.ID, ConnID: fmt.Sprintf("client-%d", p1.ID), Code: 1001, Recv: b.h.Notices[0].Recv}
		expect(t, Check(b.h, testParams), VNotice, 1, "allowed [1000]")
	})
	t.Run("missing", func(t *testing.T) {
		b, _, _, _ := pairHistory()
		b.h.Notices = b.h.Notices[1:]
		expect(t, Check(b.h, testParams), VNotice, 1, "got no close notice for phone 2")
	})
	t.Run("twice", func(t *testing.T) {
		b, _, _, _ := pairHistory()
		b.h.Notices = append(b.h.Notices, b.h.Notices[1])
		expect(t, Check(b.h, testParams), VNotice, 1, "got 2 close notices for phone 3")
	})
	t.Run("1011 for a phone whose link was lost before it was evicted", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 1, 2*s)
		b.up(p, bin, 2*s, 3)
		b.fault(FaultStop, 1, 2500*time.Millisecond, 6*s)
		b.notice(bin, p, 1011, 5*s)
		closedBy(p, 6100*time.Millisecond, 4404, reasonNoBinary)
		expectNone(t, only(Check(b.h, testParams), VNotice))
	})
	// Seed 734334's 30-minute run (chaos-findings.md 10): phone 4224
	// closed 1000 17 ms after its binary's instance was stopped for 6.2 s;
	// the binary closed itself before the instance was continued.
	t.Run("none while its binary's instance was stopped until it closed", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 2, s), b.phone(2, "t", 1, 2*s)
		b.up(p, bin, 2*s, 3)
		b.fault(FaultStop, 2, 2900*time.Millisecond, 10*s)
		selfClosed(p, 3*s, 1000)
		selfClosed(bin, 9*s, 1000)
		expectNone(t, only(Check(b.h, testParams), VNotice))
		b.h.Faults = nil
		expect(t, Check(b.h, testParams), VNotice, 1, "got no close notice for phone 2 (instance 1, closed 1000 by itself), and stayed open 6.0s")
	})
	// Phone 8234: it began closing 1000 as the relay closed it 1011
	// "backlog full" (slow-phone); it received the relay's close.
	t.Run("the relay's code when its close crossed the phone's", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 0, 2*s)
		b.up(p, bin, 2*s, 3)
		p.SelfClose, p.SelfCode = 3*s, 1000
		closedBy(p, 3*s+ms(9), 1011, reasonBacklog)
		b.notice(bin, p, 1011, 3*s+ms(9))
		expectNone(t, only(Check(b.h, testParams), VNotice))
		b.h.Notices[0].Code = 1001
		expect(t, Check(b.h, testParams), VNotice, 1, "got close notice 1001 for phone 2 (instance 0, closed 1000 by itself); allowed [1000 1011]")
	})
	// Phones 6354 and 9912: each dropped its socket while its binary was
	// stalled; told 1011 when the stall ended (finding 8's mechanism).
	t.Run("1011 for a phone that vanished behind its stalled binary", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 0, 2*s)
		b.up(p, bin, 2*s, 3)
		b.fault(FaultStall, bin.ID, 2500*time.Millisecond, 5*s)
		p.SelfClose, p.SelfCode = 3*s, codeVanish
		p.Ended, p.Code = 3*s+ms(1), codeAbnormal
		b.notice(bin, p, 1011, 5*s)
		expectNone(t, only(Check(b.h, testParams), VNotice))
		b.h.Faults = nil
		expect(t, Check(b.h, testParams), VNotice, 1, "got close notice 1011 for phone 2 (instance 0, closed -1 by itself); allowed [1001]")
	})
	t.Run("for an evicted phone", func(t *testing.T) {
		b := newHB()
		bin, p := b.bin(1, "t", 0, s), b.phone(2, "t", 1, 2*s)
		b.up(p, bin, 2*s, 3)
		selfClosed(bin, 3*s, 1000)
		closedBy(p, 5*s, 4404, reasonNoBinary)
		b.notice(bin, p, 4404, 5*s)
		expect(t, Check(b.h, testParams), VNotice, 1, "which takes none")
	})
}

func TestCheck_Budgets(t *testing.T) {
	stall := func(bytes int) *hb {
		b := newHB()
		bin := b.bin(1, "t", 0, s)
		for i := range 5 {
			p := b.phone(10+i, "t", 1, 2*s)
			b.up(p, bin, 2*s, 1)
			k := streamKey{Up: true, Phone: p.ID}
			b.h.Sent[k] = append(b.h.Sent[k], Sent{Seq: 2, At: 3 * s, Size: bytes / 5})
			b.h.Deliv = append(b.h.Deliv, Delivery{Up: true, To: bin.ID, ConnID: fmt.Sprintf("client-%d", p.ID), Recv: 6 * s, Size: bytes/5 - 64,
				P: Payload{Tenant: "t", Phone: p.ID, Seq: 2, Sent: int64(3 * s)}})
		}
		b.fault(FaultStall, bin.ID, 3*s, 6*s)
		return b
	}
	expectNone(t, Check(stall(100<<10).h, testParams))
	expect(t, Check(stall(200<<10).h, testParams), VBudget, 1, "over --max-queued-bytes 102400 plus 20480 in sockets")
	b := newHB()
	b.h.GaugeErrs = []string{"instance 1: relay_phones = 1 after quiescence"}
	expect(t, Check(b.h, testParams), VBudget, 1, "relay_phones = 1")
}
