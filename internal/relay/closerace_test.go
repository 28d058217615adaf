package relay

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// heldReads is the relay's end of a connection whose reads can be held
// back: what the peer sent reaches the relay's read loop only on release.
// It stands for the moment a peer's close frame sits unread while the
// relay's write to that peer already fails (the peer closed, then its
// socket ended), the race in which a write failure used to win.
type heldReads struct {
	net.Conn
	mu      sync.Mutex
	release chan struct{} // nil: not holding
}

func (c *heldReads) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	rel := c.release
	c.mu.Unlock()
	if rel != nil {
		<-rel
	}
	return n, err
}

func (c *heldReads) hold() {
	c.mu.Lock()
	c.release = make(chan struct{})
	c.mu.Unlock()
}

func (c *heldReads) let() {
	c.mu.Lock()
	close(c.release)
	c.release = nil
	c.mu.Unlock()
}

// heldHarness records the relay's end of each connection, in dial order.
func heldHarness(t *testing.T, mutate func(*Options)) (*harness, func(i int) *heldReads) {
	var mu sync.Mutex
	var conns []*heldReads
	h := newMemHarnessWrap(t, mutate, func(c net.Conn) net.Conn {
		hc := &heldReads{Conn: c}
		mu.Lock()
		conns = append(conns, hc)
		mu.Unlock()
		return hc
	})
	return h, func(i int) *heldReads {
		mu.Lock()
		defer mu.Unlock()
		return conns[i]
	}
}

// closeFrame is a client's masked close frame with code and no reason.
func closeFrame(code uint16) []byte {
	var payload [2]byte
	binary.BigEndian.PutUint16(payload[:], code)
	return append(maskedFrameHeader(0x8, true, 2), payload[:]...)
}

// A binary that closes itself (4000) and drops its socket while the relay
// is writing it a phone's frame: its own close is its end, not the failed
// write (1011 "write failed").
func TestClose_BinaryOwnCloseWinsOverRacingWriteFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, relayEnd := heldHarness(t, nil)
		raw := h.rawUpgrade("/v1/server", binaryHeaders(sid))
		synctest.Wait()
		require.Equal(t, 1, h.rl.Stats().Binaries)
		phone := h.connect("/v1/client", phoneHeaders(sid), true)
		synctest.Wait()

		relayEnd(0).hold()
		_, err := raw.Write(closeFrame(4000))
		require.NoError(t, err)
		require.NoError(t, raw.Close())
		phone.send(`{"type":"hello"}`) // the relay writes it to a binary that is gone
		synctest.Wait()
		time.Sleep(time.Millisecond) // the close frame is read only now
		relayEnd(0).let()
		synctest.Wait()
		time.Sleep(h.rl.opts.CloseTimeout)
		synctest.Wait()

		require.Equal(t, 1.0, testutil.ToFloat64(h.rl.m.Closes.WithLabelValues("binary", "peer")), "the binary's own close was not its end")
		require.Zero(t, testutil.ToFloat64(h.rl.m.Closes.WithLabelValues("binary", "1011")), "a racing write failure overrode the binary's own close")
	})
}

// A phone that closes itself (4000) and drops its socket while the relay is
// writing it a binary's envelope: the binary's close notice carries 4000,
// the phone's own code, not 1011.
func TestClose_PhoneOwnCloseWinsOverRacingWriteFailure_NoticeCarriesItsCode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, relayEnd := heldHarness(t, nil)
		bin := h.dialBinary(sid)
		raw := h.rawUpgrade("/v1/client", phoneHeaders(sid))
		hello := []byte(`{"type":"hello"}`)
		_, err := raw.Write(append(maskedFrameHeader(0x1, true, len(hello)), hello...))
		require.NoError(t, err)
		id := bin.envelope().ConnID

		relayEnd(1).hold()
		_, err = raw.Write(closeFrame(4000))
		require.NoError(t, err)
		require.NoError(t, raw.Close())
		bin.send(`{"conn_id":"` + id + `","frame":{"n":1}}`) // written to a phone that is gone
		synctest.Wait()
		time.Sleep(time.Millisecond)
		relayEnd(1).let()
		synctest.Wait()

		env := bin.envelope()
		require.Equal(t, id, env.ConnID)
		require.Equal(t, 4000, env.CloseCode, "the notice must carry the phone's own close code")
	})
}

// A binary ended by the relay (here: replaced) while a liveness probe of it
// (a rival's claim, another instance's Probe) is starting or in flight
// still gets the relay's close frame. The probe's ping must not cut the
// close handshake short: the WebSocket library drops the socket when the
// context of a write it has begun ends, so a ping aborted because the
// connection ended used to leave the binary with a bare EOF (CI, issue 24's
// TestCluster_StoppedOwner_*: the resumed owner's probe and its "replaced"
// raced). Each round races the two; a round of the old code lost the close
// frame about one time in five.
func TestClose_EndedWhileAProbePingsIt_StillGetsItsCloseFrame(t *testing.T) {
	h := newMemHarness(t, func(o *Options) { o.ProbeTimeout = time.Second })
	for i := range 40 {
		id := fmt.Sprintf("probe-race-%02d", i)
		bin := h.dialBinary(id)
		inc, held := h.rl.reg.holder(id)
		require.True(t, held)
		require.NotNil(t, inc)
		inc.end(closeCause{code: CodeInternal, reason: reasonReplaced})
		_ = inc.alive(h.rl.opts.ProbeTimeout)
		bin.closed(CodeInternal)
		h.eventually(func() bool { return h.rl.Stats().Binaries == 0 }, "binary %s still counted", id)
	}
}

// A relay paused past a phone's pong deadline (seed 976928's 30-minute
// chaos run: its instance stopped for 6.3 s) reads, once it runs again,
// what arrived meanwhile. Here the phone dropped its socket after the
// relay's ping went out; the relay's read of that end is held back until
// just after the deadline, as a paused relay's would be. The heartbeat
// must not judge the pong missed before the read loop has caught up: the
// phone vanished, so its binary is told 1001, not 1011 "heartbeat
// timeout". And a phone whose pong arrived meanwhile stays up.
func TestHeartbeat_RelayLatePastThePongDeadline_ReadsWhatArrivedFirst(t *testing.T) {
	for _, vanished := range []bool{true, false} {
		t.Run(map[bool]string{true: "phone vanished", false: "pong arrived"}[vanished], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h, relayEnd := heldHarness(t, func(o *Options) {
					o.PingInterval = time.Second
					o.PongTimeout = time.Second
				})
				bin := h.dialBinary(sid)
				raw := h.rawUpgrade("/v1/client", phoneHeaders(sid))
				joined := time.Now()
				hello := []byte(`{"type":"hello"}`)
				_, err := raw.Write(append(maskedFrameHeader(0x1, true, len(hello)), hello...))
				require.NoError(t, err)
				id := bin.envelope().ConnID

				time.Sleep(time.Until(joined.Add(h.rl.opts.PingInterval + 10*time.Millisecond))) // the ping is out
				relayEnd(1).hold()
				if vanished {
					require.NoError(t, raw.Close())
				} else {
					ping := make([]byte, 64)
					n, err := raw.Read(ping)
					require.NoError(t, err)
					require.Equal(t, byte(0x89), ping[0], "not a ping")
					payload := ping[2:n]
					_, err = raw.Write(append(maskedFrameHeader(0xA, true, len(payload)), payload...))
					require.NoError(t, err)
				}
				synctest.Wait()
				deadline := joined.Add(h.rl.opts.PingInterval + h.rl.opts.PongTimeout)
				time.Sleep(time.Until(deadline.Add(time.Millisecond))) // the relay runs again
				relayEnd(1).let()
				synctest.Wait()
				time.Sleep(h.rl.opts.CloseTimeout)
				synctest.Wait()

				if vanished {
					env := bin.envelope()
					require.Equal(t, id, env.ConnID)
					require.Equal(t, int(CodeGoingAway), env.CloseCode, "the phone vanished: its notice says so, not heartbeat timeout")
					require.Zero(t, h.rl.Stats().Phones)
					require.Equal(t, 1, h.rl.hb.pending(), "the vanished phone is still in the heartbeat's schedule")
					return
				}
				require.Equal(t, 1, h.rl.Stats().Phones, "a phone whose pong was in the relay's socket was closed")
				require.Zero(t, testutil.ToFloat64(h.rl.m.Closes.WithLabelValues("phone", "1011")))
			})
		})
	}
}
