package attacks

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Cross-tenant routing: a binary may address only phones of its own
// server-id. Binary A, knowing (by any means) the conn_id of a phone of
// server-id B, or guessing ids, gets nothing delivered, and nothing the
// relay sends A ever reveals B's conn_ids. The same run checks 1:1
// forwarding (no copies to siblings, one envelope per phone message) and
// that conn_ids carry at least 64 bits of randomness.
var connIDPattern = regexp.MustCompile(`^client-[0-9a-f]{16}$`)

func crossTenant() Scenario {
	return Scenario{
		ID:      "ATK-CROSS-TENANT",
		Title:   "A binary addressing another server-id's phones (known or guessed conn_ids) delivers nothing",
		Threats: []string{"TM-ROUTE-1", "TM-ROUTE-3", "TM-DOS-9"},
		Mode:    RemoteSafe,
		Bounds:  "2 binaries, 3 phones, about 20 small frames",
		Run:     runCrossTenant,
	}
}

func runCrossTenant(ctx context.Context, t *Target) Result {
	b, err := newSession(ctx, t)
	if err != nil {
		return Failf("setup B: %v", err)
	}
	defer b.Close()
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
	for _, id := range []string{pb.ConnID, pa1.ConnID, pa2.ConnID} {
		if !connIDPattern.MatchString(id) {
			return Failf("conn_id %q is not client- followed by 16 hex digits (64 random bits)", id)
		}
	}
	if pa1.ConnID == pa2.ConnID || pa1.ConnID == pb.ConnID || pa2.ConnID == pb.ConnID {
		return Failf("conn_ids repeat: %s %s %s", pa1.ConnID, pa2.ConnID, pb.ConnID)
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
	return Passf("%d frames from binary A to B's real and guessed conn_ids: none delivered, none echoed to A; A's frame reached 1 of 2 phones once; conn_ids %s", len(targets), fmt.Sprintf("%s…", pb.ConnID[:9]))
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
