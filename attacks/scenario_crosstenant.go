package attacks

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Cross-tenant routing: a binary may address only phones of its own
// server-id. Binary A, knowing (by any means) the conn_id of a phone of
// server-id B, or guessing ids, gets nothing delivered, and nothing the
// relay sends A ever reveals B's conn_ids. The same run checks 1:1
// forwarding (no copies to siblings, one envelope per phone message) and
// that conn_ids are unpredictable (TM-ROUTE-3): client- and 16 hex digits,
// and a sample of connIDSample of them must look random, not merely
// unique. A counter or a clock passes a uniqueness check; it fails this
// one, because its ids share most digits and its high digits never move.
var connIDPattern = regexp.MustCompile(`^client-[0-9a-f]{16}$`)

const (
	// connIDSample phones are joined (connIDBatch at a time, under the
	// 16-phone cap) to sample conn_ids.
	connIDSample = 40
	connIDBatch  = 8
	// connIDMinDistance: every two sampled ids differ in at least this many
	// of their 16 hex digits. Two random ids differ in 15 on average; fewer
	// than 4 happens with probability about 2^-40 per pair.
	connIDMinDistance = 4
)

func crossTenant() Scenario {
	return Scenario{
		ID:      "ATK-CROSS-TENANT",
		Title:   "A binary addressing another server-id's phones (known or guessed conn_ids) delivers nothing",
		Threats: []string{"TM-ROUTE-1", "TM-ROUTE-3", "TM-DOS-9"},
		Mode:    RemoteSafe,
		Bounds:  fmt.Sprintf("2 binaries, 3 phones, then %d more phones at most %d at a time (conn_id sample); about %d small frames", connIDSample, connIDBatch, 20+connIDSample),
		Run:     runCrossTenant,
	}
}

func runCrossTenant(ctx context.Context, t *Target) Result {
	// Locally a relay of its own, whose per-IP upgrade bucket holds the
	// sample; remotely the dials wait out the deployed rate limit.
	t, _, stop, err := dedicated(ctx, t, "--upgrade-burst", "64")
	if err != nil {
		return Failf("%v", err)
	}
	defer stop()
	b, err := newSession(ctx, t)
	if err != nil {
		return Failf("setup B: %v", err)
	}
	defer b.Close()
	// The sample is taken first, so a predictable id is reported as such
	// before it can confuse the routing checks below.
	ids, err := b.sampleConnIDs(connIDSample - 3)
	if err != nil {
		return Failf("conn_id sample: %v", err)
	}
	pb, err := b.addPhone(nil)
	if err != nil {
		return Failf("setup B: %v", err)
	}
	a, err := newSession(ctx, t)
	if err != nil {
		return Failf("setup A: %v", err)
	}
	defer a.Close()
	pa1, err := a.addPhone(nil)
	if err != nil {
		return Failf("setup A: %v", err)
	}
	pa2, err := a.addPhone(nil)
	if err != nil {
		return Failf("setup A: %v", err)
	}
	ids = append(ids, pb.ConnID, pa1.ConnID, pa2.ConnID)
	minDist, err := checkConnIDsRandom(ids)
	if err != nil {
		return Failf("%v", err)
	}
	rb, r1, r2 := pb.StartReading(), pa1.StartReading(), pa2.StartReading()

	// A attacks: B's real conn_id, and guesses.
	leak := canary("xtenant")
	flip := pb.ConnID[:len(pb.ConnID)-1] + string("0123456789abcdef"[(strings.IndexByte("0123456789abcdef", pb.ConnID[len(pb.ConnID)-1])+1)%16])
	targets := []string{
		pb.ConnID, flip, strings.ToUpper(pb.ConnID), " " + pb.ConnID, pb.ConnID + "\x00",
		"client-0000000000000000", "client-" + randHex(8), "client-ffffffffffffffff", "*", "",
	}
	for _, id := range targets {
		_ = a.send(id, map[string]string{"x": leak})
	}
	// A's own traffic still works, exactly once, to exactly one phone.
	mine := randHex(8)
	if err := a.send(pa1.ConnID, map[string]string{"mine": mine}); err != nil {
		return Failf("binary A write: %v", err)
	}
	if m := r1.next(3 * time.Second); m == nil || !bytes.Contains(m, []byte(mine)) {
		return Failf("A's own phone did not get A's frame (defence must not be 'drop everything')")
	}
	amp := randHex(8)
	if err := writeJSON(ctx, pa1.C, map[string]string{"amp": amp}); err != nil {
		return Failf("phone write: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	a.drain()
	if n := countEnvelopes(a.Seen, amp); n != 1 {
		return Failf("one phone message reached the binary %d times (want exactly 1)", n)
	}
	// B's phone must see B's marker as its first message, never A's frames.
	marker := randHex(8)
	if err := b.send(pb.ConnID, map[string]string{"marker": marker}); err != nil {
		return Failf("binary B write: %v", err)
	}
	first := rb.next(3 * time.Second)
	switch {
	case first == nil:
		return Failf("B's phone got nothing from its own binary")
	case bytes.Contains(first, []byte(leak)):
		return Failf("binary A's frame addressed to %s was delivered to server-id B's phone", pb.ConnID)
	case !bytes.Contains(first, []byte(marker)):
		return Failf("B's phone got an unexpected frame: %q", tail(string(first), 80))
	}
	for _, r := range []*reader{r1, r2, rb} {
		if m := r.next(300 * time.Millisecond); m != nil {
			return Failf("an extra frame reached a phone (amplification or misrouting): %q", tail(string(m), 80))
		}
	}
	b.drain()
	for _, e := range a.Seen {
		if bytes.Contains(e.Raw, []byte(pb.ConnID)) {
			return Failf("binary A was sent B's conn_id: %q", tail(string(e.Raw), 80))
		}
		if e.ConnID != "" && e.ConnID != pa1.ConnID && e.ConnID != pa2.ConnID {
			return Failf("binary A got an envelope for a conn_id that is not its own phone: %s", e.ConnID)
		}
	}
	if _, err := b.roundTrip(pb, 3*time.Second); err != nil {
		return Failf("pair B broken after the attack: %v", err)
	}
	return Passf("%d frames from binary A to B's real and guessed conn_ids: none delivered, none echoed to A; A's frame reached 1 of 2 phones once; %d conn_ids distinct, every two differing in >= %d of 16 hex digits, every digit position varying",
		len(targets), len(ids), minDist)
}

// sampleConnIDs joins n phones to the session, batch by batch, and returns
// their conn_ids. Each batch is closed, and its close notices awaited, before
// the next joins, so the server-id never nears its phone cap.
func (s *session) sampleConnIDs(n int) ([]string, error) {
	var ids []string
	for len(ids) < n {
		var batch []*phone
		for len(batch) < connIDBatch && len(ids)+len(batch) < n {
			p, err := s.addPhone(nil)
			if err != nil {
				return nil, fmt.Errorf("phone %d: %w", len(ids)+len(batch)+1, err)
			}
			batch = append(batch, p)
		}
		for _, p := range batch {
			ids = append(ids, p.ConnID)
			_ = p.C.CloseNow()
		}
		s.Phones = slices.DeleteFunc(s.Phones, func(p *phone) bool { return slices.Contains(batch, p) })
		for _, p := range batch {
			if noticeIn(s.Seen, p.ConnID) != 0 {
				continue
			}
			if _, ok := s.BinR.waitEnvelope(5*time.Second, &s.Seen, func(e envelope) bool { return e.ConnID == p.ConnID && e.CloseCode != 0 }); !ok {
				return nil, fmt.Errorf("no close notice for a closed sample phone")
			}
		}
	}
	return ids, nil
}

// checkConnIDsRandom checks a sample of conn_ids: each well-formed, all
// distinct, every two differing in at least connIDMinDistance hex digits,
// and no digit position constant across the sample. It returns the
// smallest distance seen.
func checkConnIDsRandom(ids []string) (int, error) {
	minDist := 16
	for i, a := range ids {
		if !connIDPattern.MatchString(a) {
			return 0, fmt.Errorf("conn_id %q is not client- followed by 16 hex digits (64 random bits)", a)
		}
		for _, b := range ids[:i] {
			d := 0
			for k := len("client-"); k < len(a); k++ {
				if a[k] != b[k] {
					d++
				}
			}
			if d < connIDMinDistance {
				return 0, fmt.Errorf("conn_ids %s and %s differ in %d of 16 hex digits (want >= %d): predictable, not random", a, b, d, connIDMinDistance)
			}
			minDist = min(minDist, d)
		}
	}
	for k := len("client-"); k < len("client-")+16; k++ {
		used := map[byte]bool{}
		for _, id := range ids {
			used[id[k]] = true
		}
		if len(used) == 1 {
			return 0, fmt.Errorf("hex digit %d of the conn_id is %q in all %d sampled ids: predictable, not random", k-len("client-")+1, ids[0][k], len(ids))
		}
	}
	return minDist, nil
}

func countEnvelopes(seen []envelope, needle string) int {
	n := 0
	for _, e := range seen {
		if bytes.Contains(e.Frame, []byte(needle)) {
			n++
		}
	}
	return n
}
