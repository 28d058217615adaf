package chaos

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The register model on hand-made operation histories: porcupine must
// accept the linearizable ones and refuse the others.

func op(client int, in claimIn, out claimOut, call, ret T) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: in, Output: out, Call: int64(call), Return: int64(ret)}
}

func TestClaimModel(t *testing.T) {
	claim := func(b int, dead ...int) claimIn { return claimIn{kind: opClaim, binary: b, dead: dead} }
	owns := func(b int) claimIn { return claimIn{kind: opOwns, binary: b} }
	cases := []struct {
		name string
		ok   bool
		ops  []porcupine.Operation
	}{
		{"claim, serve, a second claim refused", true, []porcupine.Operation{
			op(1, claim(1), outOK, 0, ms(10)),
			op(1, owns(1), outOK, ms(20), ms(30)),
			op(2, claim(2), outConflict, ms(40), ms(50)),
			op(1, owns(1), outOK, ms(60), ms(70)),
		}},
		{"4409 with nobody holding it", false, []porcupine.Operation{
			op(2, claim(2), outConflict, ms(40), ms(50)),
		}},
		{"a second owner while the first serves on", false, []porcupine.Operation{
			op(1, claim(1), outOK, 0, ms(10)),
			op(1, owns(1), outOK, ms(20), ms(30)),
			op(2, claim(2), outOK, ms(40), ms(50)),
			op(2, owns(2), outOK, ms(60), ms(70)),
			op(1, owns(1), outOK, ms(80), ms(90)),
		}},
		{"takeover of a binary that may be gone", true, []porcupine.Operation{
			op(1, claim(1), outOK, 0, ms(10)),
			op(1, owns(1), outOK, ms(20), ms(30)),
			op(2, claim(2, 1), outOK, ms(40), ms(50)),
			op(1, claimIn{kind: opReplaced, binary: 1}, outOK, ms(60), ms(60)),
			op(2, owns(2), outOK, ms(70), ms(80)),
		}},
		{"takeover of a live binary", false, []porcupine.Operation{
			op(1, claim(1), outOK, 0, ms(10)),
			op(2, claim(2), outOK, ms(40), ms(50)),
		}},
		{"replaced while nobody claimed", false, []porcupine.Operation{
			op(1, claim(1), outOK, 0, ms(10)),
			op(1, claimIn{kind: opReplaced, binary: 1}, outOK, ms(60), ms(60)),
		}},
		{"concurrent claims, one wins", true, []porcupine.Operation{
			op(1, claim(1), outOK, 0, ms(50)),
			op(2, claim(2), outConflict, ms(10), ms(60)),
			op(1, owns(1), outOK, ms(70), ms(80)),
		}},
		{"a claim of unknown outcome may have won", true, []porcupine.Operation{
			op(1, claim(1), outUnknown, 0, ms(1000)),
			op(2, claim(2), outConflict, ms(10), ms(60)),
		}},
		{"a phone refused while a live binary holds it", false, []porcupine.Operation{
			op(1, claim(1), outOK, 0, ms(10)),
			op(3, claimIn{kind: opRefused}, outOK, ms(20), ms(30)),
			op(1, owns(1), outOK, ms(40), ms(50)),
		}},
		{"a phone refused before the claim", true, []porcupine.Operation{
			op(3, claimIn{kind: opRefused}, outOK, 0, ms(30)),
			op(1, claim(1), outOK, ms(10), ms(40)),
		}},
		{"a phone evicted from a live owner nobody replaced", false, []porcupine.Operation{
			op(1, claim(1), outOK, 0, ms(10)),
			op(3, claimIn{kind: opEvicted, binary: 1}, outOK, ms(50), ms(50)),
		}},
		{"a phone evicted when its binary's grace ended", true, []porcupine.Operation{
			op(1, claim(1), outOK, 0, ms(10)),
			op(3, claimIn{kind: opEvicted, binary: 1, dead: []int{1}}, outOK, ms(50), ms(50)),
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := porcupine.CheckOperations(claimModel, c.ops); got != c.ok {
				t.Fatalf("linearizable = %v, want %v:\n%s", got, c.ok, describeOps(c.ops))
			}
		})
	}
}

// From recorded histories to the model: what clients saw, the fault log,
// and the one anomaly docs/cluster.md allows.
func TestCheckClaims(t *testing.T) {
	t.Run("two binaries serve one server-id with nothing cut off", func(t *testing.T) {
		b := newHB()
		b1, b2 := b.bin(1, "t", 0, s), b.bin(2, "t", 1, 3*s)
		p1, p2 := b.phone(3, "t", 0, 2*s), b.phone(4, "t", 1, 4*s)
		b.up(p1, b1, 2*s, 60) // 2 s .. 8 s
		b.up(p2, b2, 4*s, 20)
		expect(t, Check(b.h, testParams), VClaims, 1, "not linearizable")
	})
	t.Run("split brain while the owner is cut off past its lease, healed in time", func(t *testing.T) {
		b := newHB()
		b1, b2 := b.bin(1, "t", 0, s), b.bin(2, "t", 1, 9*s)
		p1, p2 := b.phone(3, "t", 0, 2*s), b.phone(4, "t", 1, 10*s)
		b.fault(FaultCut, 0, 3*s, 12*s)
		b.up(p1, b1, 2*s, 100) // 2 s .. 11.9 s: on past the lease, beside b2
		b.up(p2, b2, 10*s, 20)
		closedBy(b1, 13*s, 1011, reasonReplaced)
		closedBy(p1, 13*s, 4404, reasonNoBinary)
		expectNone(t, only(Check(b.h, testParams), VClaims))
	})
	t.Run("split brain that outlives the heal", func(t *testing.T) {
		b := newHB()
		b1, b2 := b.bin(1, "t", 0, s), b.bin(2, "t", 1, 9*s)
		p1, p2 := b.phone(3, "t", 0, 2*s), b.phone(4, "t", 1, 10*s)
		b.fault(FaultCut, 0, 3*s, 12*s)
		b.up(p1, b1, 2*s, 150) // on until 16.9 s, 4.9 s after the heal
		b.up(p2, b2, 10*s, 20)
		expect(t, Check(b.h, testParams), VClaims, 1, "not linearizable")
	})
	t.Run("a cut shorter than two thirds of the lease changes no claim", func(t *testing.T) {
		b := newHB()
		b1, b2 := b.bin(1, "t", 0, s), b.bin(2, "t", 1, 4*s)
		p1, p2 := b.phone(3, "t", 0, 2*s), b.phone(4, "t", 1, 5*s)
		b.fault(FaultCut, 0, 3*s, 4500*time.Millisecond)
		b.up(p1, b1, 2*s, 60)
		b.up(p2, b2, 5*s, 10)
		expect(t, Check(b.h, testParams), VClaims, 1, "not linearizable")
	})
	t.Run("takeover of a binary that stopped reading", func(t *testing.T) {
		b := newHB()
		b1 := b.bin(1, "t", 0, s)
		b.bin(2, "t", 1, 5*s)
		p1 := b.phone(3, "t", 0, 2*s)
		b.up(p1, b1, 2*s, 20)
		b.fault(FaultStall, b1.ID, 4*s, 6*s)
		closedBy(b1, 5500*time.Millisecond, 1011, reasonReplaced)
		expectNone(t, only(Check(b.h, testParams), VClaims))
	})
	t.Run("takeover of a binary that kept reading", func(t *testing.T) {
		b := newHB()
		b1 := b.bin(1, "t", 0, s)
		b.bin(2, "t", 1, 5*s)
		p1 := b.phone(3, "t", 0, 2*s)
		b.up(p1, b1, 2*s, 20)
		closedBy(b1, 5500*time.Millisecond, 1011, reasonReplaced)
		expect(t, Check(b.h, testParams), VClaims, 1, "not linearizable")
	})
	refusedBeside := func(cut bool) []Violation {
		b := newHB()
		b1 := b.bin(1, "t", 1, s)
		p1 := b.phone(3, "t", 1, 2*s)
		b.up(p1, b1, 2*s, 60)
		if cut {
			b.fault(FaultBlackhole, 0, 4*s, 4500*time.Millisecond)
		}
		closedBy(b.phone(4, "t", 0, 4200*time.Millisecond), 5*s, 4404, reasonNoBinary)
		return only(Check(b.h, testParams), VClaims)
	}
	t.Run("a phone refused 4404 beside a live owner", func(t *testing.T) {
		expect(t, refusedBeside(false), VClaims, 1, "not linearizable")
	})
	t.Run("a phone in a stale grace slot of an instance cut off", func(t *testing.T) {
		expectNone(t, refusedBeside(true))
	})
	t.Run("tenants apart: a claim of one is no claim of the other", func(t *testing.T) {
		b := newHB()
		b1 := b.bin(1, "x~y", 0, s)
		p1 := b.phone(3, "x~y", 0, 2*s)
		b.up(p1, b1, 2*s, 30)
		b.bin(2, "x.y", 1, 3*s)
		closedBy(b1, 3500*time.Millisecond, 1011, reasonReplaced) // replaced by the other tenant's claim
		expect(t, Check(b.h, testParams), VClaims, 1, "not linearizable")
	})
}
