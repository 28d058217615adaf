package relay

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// Many slow phones together must not exceed MaxQueuedBytes: at the ceiling
// a phone (the one furthest behind) is closed 1011, its binary gets a
// notice, the bytes are released, and a reading phone keeps flowing.
func TestRelayWideQueueCeiling_HoldsUnderManyStalledPhones(t *testing.T) {
	const ceiling = 96 << 10
	h := newHarness(t, func(o *Options) {
		o.PhoneQueueBytes = 64 << 10 // each stalled phone may hold 64 KiB...
		o.MaxQueuedBytes = ceiling   // ...but all of them together only 96 KiB
		o.WriteTimeout = time.Hour   // stalled writes are not what closes them here
	})
	bin := h.dialBinary(sid)
	var stalled []string
	for range 4 {
		p := h.connect("/v1/client", phoneHeaders(sid), false)
		p.send(`{"type":"hello"}`)
		stalled = append(stalled, bin.envelope().ConnID)
	}
	reader, readerID := h.dialPhone(sid, bin)

	pad := strings.Repeat("z", 4<<10)
	peak := int64(0)
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; dropCount(h, DropRelayBacklog) == 0; i++ {
		require.True(t, time.Now().Before(deadline), "the ceiling never engaged")
		for _, id := range stalled {
			bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"i":%d,"pad":%q}}`, id, i, pad))
		}
		if q := h.rl.QueuedBytes(); q > peak {
			peak = q
		}
	}
	require.LessOrEqual(t, peak, int64(ceiling), "relay-wide queue exceeded its ceiling")
	env := bin.envelope() // the close notice of the phone shed at the ceiling
	require.Contains(t, stalled, env.ConnID)
	require.Equal(t, 1011, env.CloseCode)
	bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"still":"flowing"}}`, readerID))
	require.JSONEq(t, `{"still":"flowing"}`, reader.next())
	h.eventually(func() bool { return h.rl.QueuedBytes() <= ceiling }, "queued bytes not released")
}

func dropCount(h *harness, r DropReason) float64 {
	return testutil.ToFloat64(h.rl.m.FramesDropped.WithLabelValues(string(r)))
}

// An attacker who keeps the relay-wide queue just under the ceiling must not
// be able to get another tenant's phone closed: at the ceiling the phone
// furthest behind (the attacker's stalled one) is closed, and the innocent
// frame is delivered.
func TestRelayWideQueueCeiling_LargestBacklogClosed_NotAnotherTenant(t *testing.T) {
	const ceiling = 96 << 10
	h := newHarness(t, func(o *Options) {
		o.MaxMessageBytes = 48 << 10 // room for the 32 KiB frame below
		o.PhoneQueueBytes = 64 << 10
		o.MaxQueuedBytes = ceiling
		o.WriteTimeout = time.Hour
	})
	attacker := h.dialBinary("attacker")
	var stalled []string
	for range 2 {
		p := h.connect("/v1/client", phoneHeaders("attacker"), false)
		p.send(`{"type":"hello"}`)
		stalled = append(stalled, attacker.envelope().ConnID)
	}
	// A reading phone of the attacker's own: a frame to it that arrives
	// proves the relay has handled every earlier envelope (one read loop per
	// binary, in order), so the fill below never overshoots the ceiling.
	syncPhone, syncID := h.dialPhone("attacker", attacker)
	victimBin := h.dialBinary("victim")
	victim, victimID := h.dialPhone("victim", victimBin)

	pad := strings.Repeat("q", 2000)
	frame := func(i int) string { return fmt.Sprintf(`{"i":%d,"pad":%q}`, i, pad) }
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; ; {
		require.True(t, time.Now().Before(deadline), "queue never filled: %d", h.rl.QueuedBytes())
		// While the kernel still absorbs everything, send in batches of 16
		// (32 KiB, never enough to cross); near the ceiling, one at a time.
		batch := 16
		if q := h.rl.QueuedBytes(); q > 0 {
			if stableQueued(t, h)+int64(len(frame(i)))+512 > ceiling {
				break
			}
			batch = 1
		}
		for range batch {
			attacker.send(fmt.Sprintf(`{"conn_id":%q,"frame":%s}`, stalled[i%2], frame(i)))
			i++
		}
		attacker.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"sync":%d}}`, syncID, i))
		require.JSONEq(t, fmt.Sprintf(`{"sync":%d}`, i), syncPhone.next())
	}
	require.Zero(t, dropCount(h, DropRelayBacklog), "the fill itself never crossed the ceiling")

	// 32 KiB cannot fit in what is left: this frame crosses the ceiling.
	victimBin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"pad":%q}}`, victimID, strings.Repeat("v", 32<<10)))
	require.Contains(t, victim.next(), `"pad":"vvvv`, "the innocent frame must be delivered")
	env := attacker.envelope()
	require.Contains(t, stalled, env.ConnID, "an attacker phone is the one closed")
	require.Equal(t, 1011, env.CloseCode)
	victim.silent(100 * time.Millisecond)
	require.LessOrEqual(t, h.rl.QueuedBytes(), int64(ceiling))
}

// stableQueued waits until the relay-wide queue stops moving (writers have
// filled the kernel's socket buffers and block) and returns its size.
func stableQueued(t *testing.T, h *harness) int64 {
	t.Helper()
	last := h.rl.QueuedBytes()
	for range 200 {
		time.Sleep(2 * time.Millisecond)
		now := h.rl.QueuedBytes()
		if now == last {
			return now
		}
		last = now
	}
	t.Fatalf("queued bytes never settled (last %d)", last)
	return 0
}

// Tiny frames must not slip past the byte caps: each queued item is charged
// its heap overhead too, so a flood of `{}` to a stalled phone fills the
// phone's cap after ~1000 items, not the 32768 that frame bytes alone allow
// (a binary could otherwise park ~40x the cap in heap per phone).
func TestOutbox_TinyFramesChargedPerItem(t *testing.T) {
	const limit = 64 << 10
	budget := &byteBudget{limit: limit}
	o := newOutbox(limit, budget)
	accepted := 0
	for o.push(outItem{frame: []byte(`{}`)}) == "" {
		accepted++
		require.Less(t, accepted, limit, "the outbox never filled")
	}
	require.LessOrEqual(t, accepted, limit/64, "a queued item must be charged at least 64 bytes")
	require.Equal(t, int64(accepted)*(2+itemOverhead), budget.used.Load(), "the relay-wide budget is charged the same cost")
	o.stop()
	require.Zero(t, budget.used.Load(), "stop releases every item's cost")
}
