package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// leaveWatcher records, for each LinkLeave sent, whether the home still
// listed the phone (LinkedWith) at that moment.
type leaveWatcher struct {
	sentLinks
	rl           *Relay
	listedAtSend []bool
}

func (w *leaveWatcher) Send(to string, m LinkMessage) error {
	if m.Kind == LinkLeave {
		w.listedAtSend = append(w.listedAtSend, slices.Contains(w.rl.LinkedWith(to), m.ConnID))
	}
	return w.sentLinks.Send(to, m)
}

// Issue 24, defect 9 (home side): the owner reconciles the phones it
// shares with a home against the home's answer to its ping (LinkedWith).
// A phone that left was unlisted before its leave was published, so an
// answer in between told the owner the phone was gone while its leave,
// behind its last frames, was still to come: the owner dropped it early.
// The leave now goes out first.
func TestLeaveRemote_LeaveSentBeforeThePhoneIsUnlisted(t *testing.T) {
	rl, err := New(fastOptions(), Deps{})
	require.NoError(t, err)
	bp := &leaveWatcher{rl: rl}
	rl.SetBackplane(bp, "home")
	p := &phoneConn{wsEnd: &wsEnd{cause: closeCause{code: 1000, byPeer: true, notify: true}}, rl: rl, serverID: "s",
		connID: "client-0000000000000001", route: &proxyRoute{owner: "owner"}}
	rl.proxies[proxyKey{"owner", p.connID}] = p
	p.leaveRemote()
	require.Equal(t, []bool{true}, bp.listedAtSend, "the phone was unlisted before its leave was sent")
	require.NotContains(t, rl.LinkedWith("owner"), p.connID, "the phone is still listed after it left")
}

// stalledThenReading is a binary with a 4 KiB receive buffer that reads
// nothing until start is closed, then reads everything into msgs.
func (h *harness) stalledThenReading(id string, start <-chan struct{}) chan []byte {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, h.ws+"/v1/server", &websocket.DialOptions{HTTPHeader: binaryHeaders(id), HTTPClient: smallBufferClient(syscall.SO_RCVBUF)})
	require.NoError(h.t, err)
	c.SetReadLimit(1 << 20)
	h.t.Cleanup(func() { _ = c.CloseNow() })
	msgs := make(chan []byte, 1024)
	go func() {
		<-start
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				return
			}
			msgs <- b
		}
	}()
	h.eventually(func() bool { return h.rl.Stats().Binaries == 1 }, "binary never claimed")
	return msgs
}

// Issue 24, defect 9 (owner side): a remote phone that sent frames and
// then closed 1000 while its binary was slow to take them: the frames wait
// in its stub's queue here, behind them its leave. A reconciliation with
// its home (which no longer lists the phone) must not drop the stub and
// its queued frames: they all reach the binary, then the notice with the
// phone's own code.
func TestReconcile_LeavingStubKeepsItsQueuedFramesAndItsCode(t *testing.T) {
	bp := &fakeBackplane{}
	h := newClusterHarness(t, func(o *Options) { o.PhoneQueueBytes = 4 << 20 }, bp)
	start := make(chan struct{})
	msgs := h.stalledThenReading(sid, start)
	stub, code := h.rl.AdmitRemote("home", sid)
	require.Zero(t, code)
	const n = 40
	pad := make([]byte, 8<<10)
	for i := range pad {
		pad[i] = 'x'
	}
	for i := 1; i <= n; i++ {
		h.rl.Receive("home", LinkMessage{Kind: LinkUp, ServerID: sid, ConnID: stub, Seq: uint64(i),
			Frame: fmt.Appendf(nil, `{"n":%d,"pad":%q}`, i, pad)})
	}
	h.rl.Receive("home", LinkMessage{Kind: LinkLeave, ServerID: sid, ConnID: stub, Code: 1000, Notify: true})
	require.Greater(t, h.rl.QueuedBytes(), int64(0), "nothing is queued: the test shows nothing")

	h.rl.Reconcile("home", true, nil, time.Now().Add(time.Hour)) // the home no longer lists it
	close(start)
	for i := 1; i <= n; i++ {
		select {
		case m := <-msgs:
			var env struct {
				ConnID string          `json:"conn_id"`
				Frame  json.RawMessage `json:"frame"`
			}
			require.NoError(t, json.Unmarshal(m, &env))
			var f struct{ N int }
			require.NoError(t, json.Unmarshal(env.Frame, &f), "frame %d: got %.80s", i, m)
			require.Equal(t, i, f.N, "frame %d lost", i)
		case <-time.After(5 * time.Second):
			t.Fatalf("frame %d of %d never reached the binary", i, n)
		}
	}
	select {
	case m := <-msgs:
		require.JSONEq(t, fmt.Sprintf(`{"conn_id":%q,"close_code":1000}`, stub), string(m), "the notice must carry the phone's own code")
	case <-time.After(5 * time.Second):
		t.Fatal("no close notice")
	}
}

// Issue 24, defect 8: when a phone's home is gone or has forgotten the
// phone, frames may have been lost: its binary's notice is 1011 (docs/
// cluster.md, failure behaviour), never the 1001 of a phone that left.
func TestReconcile_PeerGoneOrUnknown_StubNoticeIs1011(t *testing.T) {
	for _, alive := range []bool{false, true} {
		t.Run(fmt.Sprintf("peer alive %v", alive), func(t *testing.T) {
			h := newClusterHarness(t, func(*Options) {}, &fakeBackplane{})
			bin := h.dialBinary(sid)
			stub, code := h.rl.AdmitRemote("home", sid)
			require.Zero(t, code)
			h.rl.Reconcile("home", alive, nil, time.Now().Add(time.Hour))
			env := bin.envelope()
			require.Equal(t, stub, env.ConnID)
			require.Equal(t, int(CodeInternal), env.CloseCode)
		})
	}
}

// Chaos finding 4 (issue 24): a remote phone its owner shed (its queue
// there full) was closed by its home 1011 with the reason "no binary for
// this server", where a local phone shed the same way reads "backlog
// full". An eviction now carries why: 4404 "no binary", 1011 "backlog
// full" for a full queue, 1011 "cluster link lost" for lost frames; none
// asks the owner for a notice (the owner sent it).
func TestClusterProxy_EvictionReasons_AsOnOneRelay(t *testing.T) {
	for _, tc := range []struct {
		name   string
		m      LinkMessage
		code   websocket.StatusCode
		reason string
	}{
		{"evicted", LinkMessage{Code: int(CodeNoBinary)}, CodeNoBinary, reasonNoBinary},
		{"queue full on the owner", LinkMessage{Code: int(CodeInternal), Backlog: true}, CodeInternal, reasonBacklog},
		{"frames lost", LinkMessage{Code: int(CodeInternal)}, CodeInternal, reasonLinkLost},
	} {
		t.Run(tc.name, func(t *testing.T) {
			connID := "client-00000000000000aa"
			bp := &fakeBackplane{join: JoinOutcome{Owner: "elsewhere", ConnID: connID, Epoch: 7}}
			h := newClusterHarness(t, func(*Options) {}, bp)
			p := h.connect("/v1/client", phoneHeaders(sid), true)
			h.eventually(func() bool { return len(h.rl.LinkedWith("elsewhere")) == 1 }, "no proxy")
			m := tc.m
			m.Kind, m.ServerID, m.ConnID = LinkEvict, sid, connID
			h.rl.Receive("elsewhere", m)
			select {
			case err := <-p.end:
				var ce websocket.CloseError
				require.ErrorAs(t, err, &ce)
				require.Equal(t, tc.code, ce.Code)
				require.Equal(t, tc.reason, ce.Reason)
			case <-time.After(5 * time.Second):
				t.Fatal("the phone was not closed")
			}
			h.eventually(func() bool { return len(bp.find(LinkLeave, connID)) == 1 }, "no leave")
			require.False(t, bp.find(LinkLeave, connID)[0].m.Notify, "an evicted phone's leave asks its owner for a notice")
		})
	}
}

// Issue 24, lease defences: a remote phone's stub queue on its owner is
// capped by --phone-queue-bytes, like a local phone's queue, not only by
// the relay-wide budget. With the cap far below the ceiling, the stub is
// lost (1011 "backlog full" to its home, a 1011 notice to its binary) at
// the first frame that would take its queue past the cap, and not before.
func TestClusterStub_QueueCappedPerPhone_NotOnlyByTheRelayWideBudget(t *testing.T) {
	const phoneCap = 64 << 10
	bp := &fakeBackplane{}
	h := newClusterHarness(t, func(o *Options) {
		o.MaxMessageBytes = 16 << 10
		o.PhoneQueueBytes = phoneCap
		o.MaxQueuedBytes = 16 * phoneCap
		o.WriteTimeout = time.Hour
	}, bp)
	h.dialStalled("/v1/server", binaryHeaders(sid))
	h.eventually(func() bool { return h.rl.Stats().Binaries == 1 }, "the stalled binary never claimed")
	stub, code := h.rl.AdmitRemote("home", sid)
	require.Zero(t, code)
	frame := fmt.Appendf(nil, `{"pad":%q}`, strings.Repeat("c", 4000))
	cost := int64(len(appendPhoneEnvelope(nil, stub, "", frame))) + itemOverhead
	var seq uint64
	for len(bp.find(LinkEvict, stub)) == 0 {
		// What the stub holds now (the kernel took the first frames).
		st := h.rl.reg.findStub(sid, stub)
		require.NotNil(t, st)
		held := st.out.backlog.Load()
		require.LessOrEqual(t, held, int64(phoneCap), "a stub's queue went past --phone-queue-bytes")
		require.Less(t, seq, uint64(16*phoneCap/cost), "a stub's queue was never capped per phone")
		seq++
		h.rl.Receive("home", LinkMessage{Kind: LinkUp, ServerID: sid, ConnID: stub, Seq: seq, Frame: frame})
		if len(bp.find(LinkEvict, stub)) > 0 {
			require.Greater(t, held+cost, int64(phoneCap), "the stub was lost while the frame still fitted its cap")
		}
		time.Sleep(time.Millisecond) // its writer takes what the kernel still absorbs
	}
	ev := bp.find(LinkEvict, stub)[0]
	require.Equal(t, int(CodeInternal), ev.m.Code)
	require.True(t, ev.m.Backlog, "the home must close it backlog full")
	require.Equal(t, 1.0, dropCount(h, DropPhoneBacklog))
	require.Zero(t, dropCount(h, DropRelayBacklog), "the relay-wide ceiling was reached: the test shows nothing")
}
