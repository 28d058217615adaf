package relay

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
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

// queuedBytesMetric reads relay_queued_bytes the way an operator does: a
// scrape of the metrics handler.
func queuedBytesMetric(t *testing.T, h *harness) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.rl.m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for line := range strings.Lines(rec.Body.String()) {
		if v, ok := strings.CutPrefix(line, "relay_queued_bytes "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no relay_queued_bytes in the scrape:\n%s", rec.Body.String())
	return ""
}

// Found by a real pyry daemon's 4426 and 4421 rejections: a close-only
// directive (no frame, or "frame":null) is charged itemOverhead like every
// queued item, but the writer released an item's charge only when it had a
// frame, so each such close leaked 64 bytes of the relay-wide budget for
// good. Enough of them (each needs only a phone join) fill --max-queued-bytes
// and every phone of every tenant is then closed 1011. Every directive shape
// must leave the budget, and relay_queued_bytes, at exactly zero once the
// phones are gone.
func TestQueueBudget_CloseOnlyDirectives_ReturnToZero(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.MaxQueuedBytes = 1 << 20 })
	bin := h.dialBinary(sid)
	for _, directive := range []string{
		`{"conn_id":%q,"close_code":4426}`,
		`{"conn_id":%q,"frame":null,"close_code":4421}`,
		`{"conn_id":%q,"frame":{"bye":true},"close_code":4000}`,
		`{"conn_id":%q,"frame":{"last":true}}`, // a frame alone, then the phone closes itself
	} {
		p, id := h.dialPhone(sid, bin)
		bin.send(fmt.Sprintf(directive, id))
		if strings.Contains(directive, "close_code") {
			p.closed(websocket.StatusCode(mustCloseCode(t, directive)))
		} else {
			require.JSONEq(t, `{"last":true}`, p.next())
			require.NoError(t, p.c.Close(websocket.StatusNormalClosure, ""))
			require.Equal(t, 1000, bin.envelope().CloseCode)
		}
		h.eventually(func() bool { return h.rl.Stats().Phones == 0 }, "phone never left")
		require.Zerof(t, h.rl.QueuedBytes(), "budget still charged after %s", directive)
		require.Equalf(t, "0", queuedBytesMetric(t, h), "relay_queued_bytes after %s", directive)
	}
}

func mustCloseCode(t *testing.T, directive string) int {
	t.Helper()
	var env struct {
		CloseCode int `json:"close_code"`
	}
	require.NoError(t, json.Unmarshal([]byte(strings.ReplaceAll(directive, "%q", `"x"`)), &env))
	return env.CloseCode
}
