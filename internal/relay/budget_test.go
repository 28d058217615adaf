package relay

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// Many slow phones together must not exceed MaxQueuedBytes: at the ceiling
// the phone whose frame would cross it is closed 1011 (its binary gets a
// notice), the bytes are released, and a reading phone keeps flowing.
func TestRelayWideQueueCeiling_CrossingPhoneClosed1011(t *testing.T) {
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
	closed := map[string]bool{}
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; len(closed) == 0; i++ {
		require.True(t, time.Now().Before(deadline), "no phone was ever closed at the ceiling")
		for _, id := range stalled {
			bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"i":%d,"pad":%q}}`, id, i, pad))
		}
		if q := h.rl.QueuedBytes(); q > peak {
			peak = q
		}
		for drained := false; !drained; {
			select {
			case m := <-bin.msgs:
				env := decodeEnvelope(t, m)
				require.Equal(t, 1011, env.CloseCode)
				closed[env.ConnID] = true
			default:
				drained = true
			}
		}
	}
	require.LessOrEqual(t, peak, int64(ceiling), "relay-wide queue exceeded its ceiling")
	bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"still":"flowing"}}`, readerID))
	require.JSONEq(t, `{"still":"flowing"}`, reader.next())
	require.GreaterOrEqual(t, dropCount(h, DropRelayBacklog), float64(1), "the ceiling, not a phone's own cap, closed it")
	require.Equal(t, float64(0), dropCount(h, DropPhoneBacklog), "no phone reached its own 64 KiB cap")
	h.eventually(func() bool { return h.rl.QueuedBytes() <= ceiling }, "queued bytes not released")
}

func dropCount(h *harness, r DropReason) float64 {
	return testutil.ToFloat64(h.rl.m.FramesDropped.WithLabelValues(string(r)))
}

func decodeEnvelope(t *testing.T, raw []byte) wireEnvelope {
	t.Helper()
	var env wireEnvelope
	require.NoError(t, json.Unmarshal(raw, &env), string(raw))
	return env
}
