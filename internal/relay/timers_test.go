package relay

import (
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// Time-driven behaviour under testing/synctest: the relay runs for real over
// in-memory pipes (newMemHarness) on the bubble's fake clock, with the
// protocol's default timers. Each test checks both edges of its timer (still
// up just before it, acted on at it), which real sleeps on a loaded machine
// cannot do without flakes, and costs no wall-clock time.

// defaultTimers restores the protocol's timers that fastOptions shrinks or
// switches off.
func defaultTimers(o *Options) {
	o.PingInterval = DefaultPingInterval
	o.PongTimeout = DefaultPongTimeout
	o.ReadTimeout = DefaultReadTimeout
	o.GracePeriod = DefaultGracePeriod
	o.ProbeTimeout = DefaultProbeTimeout
	o.CloseTimeout = DefaultCloseTimeout
}

// quiet reports whether nothing has arrived at p (without waiting).
func (p *peer) quiet() bool { return len(p.msgs) == 0 && len(p.end) == 0 }

// endedPhones counts joined phones the relay has decided to close. A
// closing phone stays joined while its close handshake runs (up to
// --close-timeout when the peer does not answer), so this, not Stats, shows
// the instant a timer acted.
func endedPhones(h *harness) int {
	h.rl.reg.mu.Lock()
	defer h.rl.reg.mu.Unlock()
	n := 0
	for _, s := range h.rl.reg.slots {
		for _, p := range s.phones {
			if isClosed(p.ended) {
				n++
			}
		}
	}
	return n
}

// A phone that stops answering pings is closed 1011 once a ping goes
// unanswered for --pong-timeout (judged --close-timeout later, for a relay
// that was itself late to read the pong), and its binary gets the notice;
// a binary that keeps reading answers every ping and stays up
// indefinitely.
func TestHeartbeat_SilentPhoneClosed1011_WithNotice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newMemHarness(t, defaultTimers)
		bin := h.dialBinary(sid)
		// Joined more than a ping batch's window after the binary, so the
		// phone's ping does not share (and go early with) the binary's.
		time.Sleep(2 * maxBatchWindow)
		silent := h.connect("/v1/client", phoneHeaders(sid), false) // never reads: never pongs
		silent.send(`{"type":"hello"}`)
		id := bin.envelope().ConnID

		time.Sleep(DefaultPingInterval + DefaultPongTimeout + DefaultCloseTimeout - time.Millisecond)
		synctest.Wait()
		require.Zero(t, endedPhones(h), "closed before its missed pong was judged")
		require.True(t, bin.quiet(), "notice before the pong timeout")

		time.Sleep(time.Millisecond)
		synctest.Wait()
		require.Equal(t, 1, endedPhones(h), "silent phone not closed at ping interval + pong timeout + close timeout")
		// It does not answer the close either: dropped after --close-timeout,
		// and only then is its binary told.
		time.Sleep(DefaultCloseTimeout)
		synctest.Wait()
		require.Zero(t, h.rl.Stats().Phones)
		env := bin.envelope()
		require.Equal(t, id, env.ConnID)
		require.Equal(t, 1011, env.CloseCode)
		require.Contains(t, h.logs.String(), `"event":"phone_closed"`)
		require.Contains(t, h.logs.String(), `"close_code":1011,"reason":"pong_timeout"`, "the close line says which timer fired")

		bin.silent(10 * DefaultPingInterval) // ten pings, each answered
		require.Equal(t, 1, h.rl.Stats().Binaries)
	})
}

// A message whose bytes stop arriving is cut off --read-timeout after it
// began (the deadline covers one message, not the time between messages);
// an idle connection is never subject to it.
func TestReadTimeout_TrickledMessageClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newMemHarness(t, defaultTimers)
		bin := h.dialBinary(sid)
		idle, _ := h.dialPhone(sid, bin)
		// A raw client announces a 100-byte text frame and sends only 11 bytes.
		raw := h.rawUpgrade("/v1/client", phoneHeaders(sid))
		synctest.Wait()
		require.Equal(t, 2, h.rl.Stats().Phones)
		_, err := raw.Write(maskedFrameHeader(0x1, true, 100))
		require.NoError(t, err)
		_, err = raw.Write([]byte(`{"partial":`))
		require.NoError(t, err)

		time.Sleep(DefaultReadTimeout - time.Millisecond)
		synctest.Wait()
		require.Zero(t, endedPhones(h), "trickling phone closed before --read-timeout")
		time.Sleep(time.Millisecond)
		synctest.Wait()
		require.Equal(t, 1, endedPhones(h), "trickling phone not closed at --read-timeout")
		time.Sleep(DefaultCloseTimeout) // it does not answer the close
		synctest.Wait()
		require.Equal(t, 1, h.rl.Stats().Phones, "trickling phone still connected")
		// Its frame never completed, so the binary saw nothing of it; but its
		// close is reported.
		require.Equal(t, 1011, bin.envelope().CloseCode)
		require.Contains(t, h.logs.String(), `"close_code":1011,"reason":"read_timeout"`, "the close line says which timer fired")
		// The idle phone (heartbeat answered) outlives many read timeouts.
		idle.silent(10 * DefaultReadTimeout)
		require.Equal(t, 1, h.rl.Stats().Phones)
	})
}

// The read deadline is each message's own: after complete messages (whose
// timer stays armed and is carried over, not reset per message), a message
// that stalls is cut off exactly --read-timeout after it began, neither at
// an earlier message's deadline nor later.
func TestReadTimeout_CountsFromEachMessagesStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newMemHarness(t, defaultTimers)
		bin := h.dialBinary(sid)
		raw := h.rawUpgrade("/v1/client", phoneHeaders(sid))
		frame := func(body string) []byte { return append(maskedFrameHeader(0x1, true, len(body)), body...) }
		for i := range 3 { // complete messages, DefaultReadTimeout/4 apart: the timer armed by the first fires mid-stall
			_, err := raw.Write(frame(fmt.Sprintf(`{"n":%d}`, i)))
			require.NoError(t, err)
			synctest.Wait()
			require.Equal(t, fmt.Sprintf(`{"n":%d}`, i), string(bin.envelope().Frame))
			time.Sleep(DefaultReadTimeout / 4)
		}
		// Now a message that stops after its first bytes.
		_, err := raw.Write(maskedFrameHeader(0x1, true, 100))
		require.NoError(t, err)
		_, err = raw.Write([]byte(`{"partial":`))
		require.NoError(t, err)
		time.Sleep(DefaultReadTimeout - time.Millisecond)
		synctest.Wait()
		require.Zero(t, endedPhones(h), "stalled message cut off before --read-timeout from its start")
		time.Sleep(time.Millisecond)
		synctest.Wait()
		require.Equal(t, 1, endedPhones(h), "stalled message not cut off at --read-timeout from its start")
	})
}

// A binary that goes away leaves its slot in grace for --grace-period: its
// phones stay joined until then, and are closed 4404 at its end.
func TestGrace_ExpiryRemovesSlotAndPhones(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newMemHarness(t, defaultTimers)
		bin := h.dialBinary(sid)
		p, _ := h.dialPhone(sid, bin)
		require.NoError(t, bin.c.Close(websocket.StatusNormalClosure, ""))
		synctest.Wait()
		require.Equal(t, RegistryStats{Phones: 1, Grace: 1}, h.rl.Stats())

		time.Sleep(DefaultGracePeriod - time.Millisecond)
		synctest.Wait()
		require.Equal(t, RegistryStats{Phones: 1, Grace: 1}, h.rl.Stats(), "grace ended early")
		require.True(t, p.quiet(), "phone closed during grace")

		time.Sleep(time.Millisecond)
		p.closed(4404)
		synctest.Wait()
		require.Equal(t, RegistryStats{}, h.rl.Stats(), "slot kept after grace")
		late := h.connect("/v1/client", phoneHeaders(sid), true)
		late.closed(4404)
	})
}

// A claim against a live-looking incumbent probes it; an incumbent that
// does not answer within --probe-timeout is replaced (1011), its phones are
// evicted 4404, and its own disconnect afterwards neither starts a grace
// period nor touches the newcomer's slot, however long one waits.
func TestProbe_DeadIncumbentReplacedAtTimeout_StaleCleanupHarmless(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newMemHarness(t, defaultTimers)
		dead := h.connect("/v1/server", binaryHeaders(sid), false) // never reads: never pongs
		synctest.Wait()
		require.Equal(t, 1, h.rl.Stats().Binaries)
		p := h.connect("/v1/client", phoneHeaders(sid), true)
		synctest.Wait()
		require.Equal(t, 1, h.rl.Stats().Phones)

		newcomer := h.connect("/v1/server", binaryHeaders(sid), true)
		time.Sleep(DefaultProbeTimeout - time.Millisecond)
		synctest.Wait()
		require.Equal(t, 1, h.claims(), "takeover before --probe-timeout")
		require.True(t, p.quiet(), "phone evicted before --probe-timeout")

		time.Sleep(time.Millisecond)
		p.closed(4404) // the takeover evicts the dead incumbent's phones
		synctest.Wait()
		require.Equal(t, 2, h.claims())
		go dead.readLoop()
		dead.closed(websocket.StatusInternalError)

		time.Sleep(2 * DefaultGracePeriod) // a stale grace timer would have fired
		synctest.Wait()
		require.Equal(t, RegistryStats{Binaries: 1}, h.rl.Stats())
		p2, id := h.dialPhone(sid, newcomer)
		newcomer.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"x":1}}`, id))
		require.JSONEq(t, `{"x":1}`, p2.next())
	})
}

// Through a whole grace period (less a millisecond) the phones stay up, new
// ones may join, and their frames are dropped and counted (no_binary), never
// queued for whichever binary comes next; a reclaim then evicts every phone
// 4404, with no close notice and no stale frame for the new binary.
func TestGrace_PhonesStayFramesDropped_ReclaimEvicts4404(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newMemHarness(t, defaultTimers)
		bin := h.dialBinary(sid)
		p, _ := h.dialPhone(sid, bin)
		require.NoError(t, bin.c.Close(websocket.StatusNormalClosure, ""))
		synctest.Wait()
		require.Equal(t, RegistryStats{Phones: 1, Grace: 1}, h.rl.Stats())

		late := h.connect("/v1/client", phoneHeaders(sid), true)
		p.send(`{"into":"the void"}`)
		late.send(`{"dropped":true}`)
		time.Sleep(DefaultGracePeriod - time.Millisecond)
		synctest.Wait()
		require.Equal(t, RegistryStats{Phones: 2, Grace: 1}, h.rl.Stats())
		require.True(t, p.quiet() && late.quiet(), "a phone was closed, or sent something, during grace")
		require.Equal(t, 2.0, dropCount(h, DropNoBinary))

		bin2 := h.dialBinary(sid)
		p.closed(4404)
		late.closed(4404)
		synctest.Wait()
		require.Equal(t, RegistryStats{Binaries: 1}, h.rl.Stats())
		require.True(t, bin2.quiet(), "the new binary got a notice for an eviction, or a frame from grace")
	})
}
