package relay

import (
	"fmt"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/metrics"
)

// recordingWaker keeps the wakes it is handed.
type recordingWaker struct {
	mu    sync.Mutex
	wakes [][3]string
}

func (w *recordingWaker) Wake(serverID, platform, token string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.wakes = append(w.wakes, [3]string{serverID, platform, token})
}

func (w *recordingWaker) got() [][3]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([][3]string(nil), w.wakes...)
}

func TestPushWake_HandedToWakerWithTheBinarysServerID(t *testing.T) {
	w := &recordingWaker{}
	m := metrics.New()
	h := newHarnessDeps(t, nil, Deps{Waker: w, Metrics: m})
	bin := h.dialBinary("server-a")
	phone, id := h.dialPhone("server-a", bin)

	bin.send(`{"push_wake":{"platform":"fcm","token":"tok-1"}}`)
	bin.send(`{"push_wake":{"platform":"fcm"}}`)                                           // malformed: never reaches the Waker
	bin.send(fmt.Sprintf(`{"conn_id":%q,"push_wake":{"platform":"fcm","token":"t"}}`, id)) // ambiguous: malformed
	bin.send(`{"push_wake":{"platform":"apns","token":"tok-2"},"server_id":"server-b"}`)
	bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"after":"wakes"}}`, id))
	require.JSONEq(t, `{"after":"wakes"}`, phone.next())

	h.eventually(func() bool { return len(w.got()) == 2 }, "two wakes handed off, got %v", w.got())
	require.Equal(t, [][3]string{{"server-a", "fcm", "tok-1"}, {"server-a", "apns", "tok-2"}}, w.got(),
		"the server-id is the claimer's own, never one named in the message")
	require.Equal(t, 0.0, testutil.ToFloat64(m.FramesDropped.WithLabelValues(string(DropPushUnconfigured))))
	require.Equal(t, 2.0, testutil.ToFloat64(m.FramesDropped.WithLabelValues(string(DropMalformedEnvelope))))
}

func TestPushWake_WithoutWakerDroppedAndCounted(t *testing.T) {
	m := metrics.New()
	h := newHarnessDeps(t, nil, Deps{Metrics: m})
	bin := h.dialBinary("server-a")
	phone, id := h.dialPhone("server-a", bin)
	bin.send(`{"push_wake":{"platform":"fcm","token":"tok-1"}}`)
	bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"n":1}}`, id))
	require.JSONEq(t, `{"n":1}`, phone.next())
	h.eventually(func() bool {
		return testutil.ToFloat64(m.FramesDropped.WithLabelValues(string(DropPushUnconfigured))) == 1
	}, "push_unconfigured counted")
}
