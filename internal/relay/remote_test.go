package relay

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// Cluster mode's queues (remote.go) against the relay-wide budget, with a
// backplane that records what would cross NATS: the routing core is real,
// the binaries and phones are real WebSockets on loopback, and the other
// instances are the test calling Receive.

// fakeBackplane grants every claim, answers joins with join, and records
// every message sent.
type fakeBackplane struct {
	mu   sync.Mutex
	join JoinOutcome
	sent []sentLink
}

type sentLink struct {
	to string
	m  LinkMessage
}

func (f *fakeBackplane) Acquire(context.Context, string) (ClaimOutcome, error) {
	return ClaimGranted, nil
}
func (f *fakeBackplane) SetGrace(string, bool) {}
func (f *fakeBackplane) Release(string)        {}
func (f *fakeBackplane) Join(context.Context, string) (JoinOutcome, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.join, nil
}
func (f *fakeBackplane) Send(to string, m LinkMessage) error {
	m.Frame = append([]byte(nil), m.Frame...)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, sentLink{to, m})
	return nil
}

// find returns the messages of kind sent about connID.
func (f *fakeBackplane) find(kind LinkKind, connID string) []sentLink {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []sentLink
	for _, s := range f.sent {
		if s.m.Kind == kind && s.m.ConnID == connID {
			out = append(out, s)
		}
	}
	return out
}

// newClusterHarness is newHarness with bp as the relay's backplane (set
// before it serves) and this instance called "owner".
func newClusterHarness(t *testing.T, mutate func(*Options), bp Backplane) *harness {
	t.Helper()
	o := fastOptions()
	mutate(&o)
	rl, err := New(o, Deps{})
	require.NoError(t, err)
	rl.SetBackplane(bp, "owner")
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/server", rl.ServeBinary)
	mux.HandleFunc("/v1/client", rl.ServePhone)
	srv := httptest.NewServer(mux)
	addr := srv.Listener.Addr().String()
	h := &harness{t: t, rl: rl, ws: "ws://" + addr, addr: addr}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rl.Shutdown(ctx)
		srv.Close()
	})
	return h
}

// dialStalled connects a client that never reads, with a 4 KiB receive
// buffer, so the relay's queues, not the kernel, absorb what it is sent.
func (h *harness) dialStalled(path string, hdr http.Header) *websocket.Conn {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, h.ws+path, &websocket.DialOptions{HTTPHeader: hdr, HTTPClient: smallBufferClient(syscall.SO_RCVBUF)})
	require.NoError(h.t, err)
	h.t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// fillTo calls send (one frame of cost bytes each) until less than cost
// is left under ceiling once the writers have blocked, never crossing it.
func fillTo(t *testing.T, h *harness, ceiling, cost int64, send func()) int64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		require.True(t, time.Now().Before(deadline), "the queue never filled: relay-wide %d of %d (are these bytes charged?)", h.rl.QueuedBytes(), ceiling)
		q := stableQueued(t, h)
		if q+cost > ceiling {
			return q
		}
		batch := int((ceiling - q) / cost)
		if q > 0 {
			batch = 1 // near the ceiling: the kernel absorbs no more
		}
		for range batch {
			send()
		}
	}
}

// Issue 11: the frames a remote phone sends to a binary here wait in its
// stub's queue on this instance (back-pressure cannot cross NATS). They are
// charged to --phone-queue-bytes and --max-queued-bytes and shown in
// relay_queued_bytes like a local phone's; at the ceiling the phone
// furthest behind relay-wide (here the stub) is shed, 1011 with a notice
// and its home told, and another tenant's frame that crossed is delivered;
// a stub past its own cap is lost alone; every charge returns to zero.
func TestClusterStub_QueuedForSlowBinary_InBudget_ShedAtCeiling_BackToZero(t *testing.T) {
	const ceiling = 128 << 10
	bp := &fakeBackplane{}
	h := newClusterHarness(t, func(o *Options) {
		o.MaxMessageBytes = 48 << 10
		o.PhoneQueueBytes = ceiling
		o.MaxQueuedBytes = ceiling
		o.WriteTimeout = time.Hour
	}, bp)
	stalledBin := h.dialStalled("/v1/server", binaryHeaders("attacker"))
	h.eventually(func() bool { return h.rl.Stats().Binaries == 1 }, "the stalled binary never claimed")
	stub, code := h.rl.AdmitRemote("home", "attacker")
	require.Zero(t, code)
	victimBin := h.dialBinary("victim")
	victim, victimID := h.dialPhone("victim", victimBin)

	frame := []byte(fmt.Sprintf(`{"pad":%q}`, strings.Repeat("u", 4000)))
	cost := int64(len(appendPhoneEnvelope(nil, stub, "", frame))) + itemOverhead
	seq := uint64(0)
	q := fillTo(t, h, ceiling, cost, func() {
		seq++
		h.rl.Receive("home", LinkMessage{Kind: LinkUp, ServerID: "attacker", ConnID: stub, Seq: seq, Frame: frame})
	})
	require.Greater(t, q, int64(ceiling/2), "a remote phone's queue is charged to the relay-wide budget")
	require.Equal(t, fmt.Sprint(q), queuedBytesMetric(t, h), "and shows in relay_queued_bytes")
	require.Empty(t, bp.find(LinkEvict, stub), "the fill stayed under the caps")

	// 32 KiB cannot fit in what is left: the stub, furthest behind, is shed.
	victimBin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"pad":%q}}`, victimID, strings.Repeat("v", 32<<10)))
	require.Contains(t, victim.next(), `"pad":"vvvv`, "the other tenant's frame must be delivered")
	ev := bp.find(LinkEvict, stub)
	require.Len(t, ev, 1, "the shed stub's home is told to close the phone")
	require.Equal(t, "home", ev[0].to)
	require.Equal(t, int(CodeInternal), ev[0].m.Code)
	require.Nil(t, h.rl.reg.findStub("attacker", stub), "the shed stub left its slot")
	require.Equal(t, 1.0, dropCount(h, DropRelayBacklog))
	require.Equal(t, 1.0, testutil.ToFloat64(h.rl.m.ClusterLinksLost.WithLabelValues(string(LossQueue))))
	h.eventually(func() bool { return h.rl.QueuedBytes() == 0 }, "the shed stub's charge (queued and in flight) is released at once: %d", h.rl.QueuedBytes())

	// A stub past its own cap is lost alone: a sibling stays.
	a, code := h.rl.AdmitRemote("home", "attacker")
	require.Zero(t, code)
	b, code := h.rl.AdmitRemote("home2", "attacker")
	require.Zero(t, code)
	big := []byte(fmt.Sprintf(`{"pad":%q}`, strings.Repeat("w", 40<<10)))
	for i := uint64(1); len(bp.find(LinkEvict, a)) == 0; i++ {
		require.Less(t, i, uint64(64), "a stub past --phone-queue-bytes was never closed")
		h.rl.Receive("home", LinkMessage{Kind: LinkUp, ServerID: "attacker", ConnID: a, Seq: i, Frame: big})
	}
	require.Equal(t, 1.0, dropCount(h, DropPhoneBacklog))
	require.NotNil(t, h.rl.reg.findStub("attacker", b), "another remote phone of the same slot is untouched")
	require.Empty(t, bp.find(LinkEvict, b))
	h.rl.Receive("home2", LinkMessage{Kind: LinkLeave, ServerID: "attacker", ConnID: b, Code: 1000, Notify: true})
	h.eventually(func() bool { return h.rl.reg.findStub("attacker", b) == nil }, "a stub whose phone left stays in its slot")

	// No queued work left anywhere: the budget, and the gauge, read zero.
	_ = stalledBin.CloseNow()
	h.eventually(func() bool { return h.rl.QueuedBytes() == 0 }, "budget conservation: %d bytes charged with no queued work", h.rl.QueuedBytes())
	require.Equal(t, "0", queuedBytesMetric(t, h))
}

// Issue 11: a phone whose socket is here and whose binary is on another
// instance (a proxy) queues its binary's frames here, charged to the budget
// like any phone; at the ceiling it is shed like any phone furthest behind,
// not the local phone whose frame happened to cross. Its owner is told
// (a leave with a 1011 notice).
func TestClusterProxy_StalledPhone_ShedAtCeiling_NotTheCrossingPhone(t *testing.T) {
	const ceiling = 128 << 10
	bp := &fakeBackplane{join: JoinOutcome{Owner: "other", ConnID: "client-00000000000000aa", Epoch: 7}}
	h := newClusterHarness(t, func(o *Options) {
		o.MaxMessageBytes = 48 << 10
		o.PhoneQueueBytes = ceiling
		o.MaxQueuedBytes = ceiling
		o.WriteTimeout = time.Hour
	}, bp)
	stalled := h.dialStalled("/v1/client", phoneHeaders("remote-tenant"))
	h.eventually(func() bool { return len(h.rl.proxySnapshot()) == 1 }, "the phone never joined through its remote owner")
	victimBin := h.dialBinary("victim")
	victim, victimID := h.dialPhone("victim", victimBin)

	frame := []byte(fmt.Sprintf(`{"pad":%q}`, strings.Repeat("d", 4000)))
	seq := uint64(0)
	q := fillTo(t, h, ceiling, int64(len(frame))+itemOverhead, func() {
		seq++
		h.rl.Receive("other", LinkMessage{Kind: LinkDown, ServerID: "remote-tenant", ConnID: "client-00000000000000aa", Seq: seq, Frame: frame})
	})
	require.Greater(t, q, int64(ceiling/2))

	victimBin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"pad":%q}}`, victimID, strings.Repeat("v", 32<<10)))
	require.Contains(t, victim.next(), `"pad":"vvvv`, "the local phone whose frame crossed the ceiling keeps it")
	victim.silent(50 * time.Millisecond)
	var leave []sentLink
	h.eventually(func() bool {
		leave = bp.find(LinkLeave, "client-00000000000000aa")
		return len(leave) == 1
	}, "the shed proxy's owner was never told")
	require.Equal(t, "other", leave[0].to)
	require.Equal(t, int(CodeInternal), leave[0].m.Code)
	require.True(t, leave[0].m.Notify, "its binary gets a 1011 close notice")
	require.Equal(t, 1.0, dropCount(h, DropRelayBacklog))
	require.Zero(t, dropCount(h, DropPhoneBacklog))

	_ = stalled.CloseNow()
	h.eventually(func() bool { return h.rl.QueuedBytes() == 0 }, "budget conservation: %d bytes charged with no queued work", h.rl.QueuedBytes())
}

// A remote phone's frame for a stub this owner no longer has: when the
// server-id's slot is still here (the stub was dropped because this
// instance's NATS link went down, or its link was found broken), frames
// were lost and the binary lives, so the home closes the phone 1011, never
// 4404 (no 4404 from a NATS blip); only without a slot is it 4404.
func TestClusterReceive_UnknownStub_1011WhileSlotHere_4404Without(t *testing.T) {
	bp := &fakeBackplane{}
	h := newClusterHarness(t, func(*Options) {}, bp)
	h.dialBinary("held")
	stub, code := h.rl.AdmitRemote("home", "held")
	require.Zero(t, code)
	h.rl.LinkLost(LossDisconnect) // the stub is dropped; its home is not reachable
	require.Nil(t, h.rl.reg.findStub("held", stub))
	before := len(bp.find(LinkEvict, stub))
	h.rl.Receive("home", LinkMessage{Kind: LinkUp, ServerID: "held", ConnID: stub, Seq: 1, Frame: []byte(`{}`)})
	ev := bp.find(LinkEvict, stub)
	require.Len(t, ev, before+1)
	require.Equal(t, int(CodeInternal), ev[len(ev)-1].m.Code, "a slot here that lost the stub: frames lost, binary alive")

	h.rl.Receive("home", LinkMessage{Kind: LinkUp, ServerID: "nobody", ConnID: "client-00000000000000bb", Seq: 1, Frame: []byte(`{}`)})
	ev = bp.find(LinkEvict, "client-00000000000000bb")
	require.Len(t, ev, 1)
	require.Equal(t, int(CodeNoBinary), ev[0].m.Code, "no slot for the server-id here")
}
