package relay

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

const sid = "6f1c2a4e-0b7d-4c1e-9a55-2f3d4b5c6d7e"

func TestPhoneFrame_WrappedToBinaryVerbatim(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	p, connID := h.dialPhone(sid, bin)

	frame := `{"v":2,"type":"noise_init","data":"AAEC","nested":{"a":[1,2,{"b":null}]}}`
	p.send(frame)
	env := bin.envelope()
	require.Equal(t, connID, env.ConnID)
	require.JSONEq(t, frame, string(env.Frame))
	require.Nil(t, env.Token, "token must not be forwarded by default")
}

func TestBinaryEnvelope_UnwrappedToAddressedPhoneOnly(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	p1, id1 := h.dialPhone(sid, bin)
	p2, _ := h.dialPhone(sid, bin)

	bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"v":2,"type":"noise_msg","data":"BCDE"},"future_field":true}`, id1))
	require.JSONEq(t, `{"v":2,"type":"noise_msg","data":"BCDE"}`, p1.next())
	p2.silent(100 * time.Millisecond)
}

func TestForwardV1Token_FirstEnvelopeOnly(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.ForwardV1Token = true })
	bin := h.dialBinary(sid)
	p := h.connect("/v1/client", phoneHeaders(sid), true)
	p.send(`{"n":1}`)
	first := bin.envelope()
	require.NotNil(t, first.Token)
	require.Equal(t, "tok-"+sid, *first.Token)
	p.send(`{"n":2}`)
	second := bin.envelope()
	require.Nil(t, second.Token)
	require.JSONEq(t, `{"n":2}`, string(second.Frame))
}

func TestCloseDirective_FrameThenCloseInOrder(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	p, id := h.dialPhone(sid, bin)

	for i := range 50 {
		bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"seq":%d}}`, id, i))
	}
	bin.send(fmt.Sprintf(`{"conn_id":%q,"close_code":4401,"frame":{"v":2,"type":"error","code":"unauthorized"}}`, id))
	for i := range 50 {
		require.JSONEq(t, fmt.Sprintf(`{"seq":%d}`, i), p.next())
	}
	require.JSONEq(t, `{"v":2,"type":"error","code":"unauthorized"}`, p.next())
	p.closed(4401)
	// A directive close produces no close notice.
	bin.silent(150 * time.Millisecond)
	h.eventually(func() bool { return h.rl.Stats().Phones == 0 }, "phone not removed")
}

func TestCloseDirective_NullFrameClosesOnly(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	p, id := h.dialPhone(sid, bin)
	bin.send(fmt.Sprintf(`{"conn_id":%q,"close_code":4408,"frame":null}`, id))
	p.closed(4408)
	select {
	case m := <-p.msgs:
		t.Fatalf("close-only directive delivered a frame: %s", m)
	default:
	}
}

func TestCloseNotice_PhoneOwnCode(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	p, id := h.dialPhone(sid, bin)
	require.NoError(t, p.c.Close(4000, "bye"))
	env := bin.envelope()
	require.Equal(t, id, env.ConnID)
	require.Equal(t, 4000, env.CloseCode)
	require.Nil(t, env.Frame)
}

func TestCloseNotice_DroppedSocketGives1001(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	p, id := h.dialPhone(sid, bin)
	require.NoError(t, p.c.CloseNow()) // TCP close, no close frame
	env := bin.envelope()
	require.Equal(t, id, env.ConnID)
	require.Equal(t, 1001, env.CloseCode)
}

func TestPhoneInvalidJSON_Closed1007WithNotice(t *testing.T) {
	for name, msg := range map[string]string{
		"not json":     `{"type":`,
		"array":        `[1,2]`,
		"string":       `"hi"`,
		"two values":   `{} {}`,
		"invalid utf8": "{\"a\":\"\xff\"}",
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, nil)
			bin := h.dialBinary(sid)
			p, id := h.dialPhone(sid, bin)
			p.send(msg)
			p.closed(websocket.StatusInvalidFramePayloadData)
			env := bin.envelope()
			require.Equal(t, id, env.ConnID)
			require.Equal(t, 1007, env.CloseCode)
		})
	}
}

func TestPhoneBinaryOpcode_Closed1003(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	p, _ := h.dialPhone(sid, bin)
	require.NoError(t, p.c.Write(t.Context(), websocket.MessageBinary, []byte(`{}`)))
	p.closed(websocket.StatusUnsupportedData)
	require.Equal(t, 1003, bin.envelope().CloseCode)
}

func TestOversizedPhoneMessage_Closed1009_OthersUnaffected(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	big, bigID := h.dialPhone(sid, bin)
	other, otherID := h.dialPhone(sid, bin)

	big.send(`{"pad":"` + strings.Repeat("x", 17<<10) + `"}`)
	big.closed(websocket.StatusMessageTooBig)
	env := bin.envelope()
	require.Equal(t, bigID, env.ConnID)
	require.Equal(t, 1009, env.CloseCode)

	other.send(`{"still":"here"}`)
	env = bin.envelope()
	require.Equal(t, otherID, env.ConnID)
	bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"ok":1}}`, otherID))
	require.JSONEq(t, `{"ok":1}`, other.next())
}

func TestOversizedBinaryMessage_Closed1009_GraceStarts(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	p, _ := h.dialPhone(sid, bin)
	bin.send(`{"conn_id":"x","frame":{"pad":"` + strings.Repeat("x", 17<<10) + `"}}`)
	bin.closed(websocket.StatusMessageTooBig)
	h.eventually(func() bool { return h.rl.Stats() == RegistryStats{Grace: 1, Phones: 1} }, "slot not in grace: %+v", h.rl.Stats())
	p.silent(100 * time.Millisecond) // phones stay during grace
}

func TestBinaryEnvelopeErrors_DroppedBinaryStaysUp(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	p, id := h.dialPhone(sid, bin)
	bad := []string{
		`not json`, `[]`, `{}`, `{"frame":{}}`, `{"conn_id":""}`, `{"conn_id":7,"frame":{}}`,
		fmt.Sprintf(`{"conn_id":%q}`, id),
		fmt.Sprintf(`{"conn_id":%q,"frame":"text"}`, id),
		fmt.Sprintf(`{"conn_id":%q,"frame":[1]}`, id),
		fmt.Sprintf(`{"conn_id":%q,"close_code":1011}`, id),
		fmt.Sprintf(`{"conn_id":%q,"close_code":3000}`, id),
		fmt.Sprintf(`{"conn_id":%q,"close_code":4401.5}`, id),
		fmt.Sprintf(`{"conn_id":%q,"close_code":"4401"}`, id),
		fmt.Sprintf(`{"Conn_ID":%q,"frame":{}}`, id),
		`{"conn_id":"client-0000000000000000","frame":{}}`,
		`{"push_wake":{"platform":"fcm","token":"secret-fcm-token"}}`,
		`{"push_wake":{"platform":"fcm"}}`,
		fmt.Sprintf(`{"conn_id":%q,"push_wake":{"platform":"fcm","token":"t"},"frame":{}}`, id),
	}
	for _, m := range bad {
		bin.send(m)
	}
	require.NoError(t, bin.c.Write(t.Context(), websocket.MessageBinary, []byte(fmt.Sprintf(`{"conn_id":%q,"frame":{}}`, id))))
	bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"after":"errors"}}`, id))
	require.JSONEq(t, `{"after":"errors"}`, p.next(), "the only frame the phone sees is the valid one")
	p.silent(50 * time.Millisecond)
	require.Equal(t, RegistryStats{Binaries: 1, Phones: 1}, h.rl.Stats())
}

func TestCrossTenant_BinaryCannotReachOtherServersPhone(t *testing.T) {
	h := newHarness(t, nil)
	binA := h.dialBinary("server-a")
	binB := h.dialBinary("server-b")
	phoneB, idB := h.dialPhone("server-b", binB)

	binA.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"evil":1}}`, idB))
	binA.send(fmt.Sprintf(`{"conn_id":%q,"close_code":4401}`, idB))
	phoneB.silent(150 * time.Millisecond)
	binB.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"good":1}}`, idB))
	require.JSONEq(t, `{"good":1}`, phoneB.next())
}

func TestPhoneWithoutBinary_Closed4404(t *testing.T) {
	h := newHarness(t, nil)
	p := h.connect("/v1/client", phoneHeaders("nobody-home"), true)
	p.closed(4404)
	require.Equal(t, RegistryStats{}, h.rl.Stats())
}

func TestPhoneCap_SixteenJoinSeventeenthGets4429(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	seen := map[string]bool{}
	for range 16 {
		_, id := h.dialPhone(sid, bin)
		require.False(t, seen[id], "conn_id reused")
		seen[id] = true
	}
	p := h.connect("/v1/client", phoneHeaders(sid), true)
	p.closed(4429)
	require.Equal(t, 16, h.rl.Stats().Phones)
}

func TestConflict_LiveIncumbentKeepsSlot_Newcomer4409(t *testing.T) {
	h := newHarness(t, nil)
	inc := h.dialBinary(sid)
	p, id := h.dialPhone(sid, inc)
	newcomer := h.connect("/v1/server", binaryHeaders(sid), true)
	newcomer.closed(4409)
	inc.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"still":"mine"}}`, id))
	require.JSONEq(t, `{"still":"mine"}`, p.next())
}

func TestSlowPhone_Closed1011_BinaryAndSiblingKeepFlowing(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	// The slow phone joins and then stops reading.
	slow := h.connect("/v1/client", phoneHeaders(sid), false)
	slow.send(`{"type":"hello"}`)
	slowID := bin.envelope().ConnID
	fast, fastID := h.dialPhone(sid, bin)

	payload := strings.Repeat("y", 8<<10)
	deadline := time.Now().Add(10 * time.Second)
	closedNotice := false
	for i := 0; !closedNotice; i++ {
		require.True(t, time.Now().Before(deadline), "slow phone never closed")
		bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"i":%d,"pad":%q}}`, slowID, i, payload))
		if i%16 == 0 {
			bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"i":%d}}`, fastID, i))
			require.JSONEq(t, fmt.Sprintf(`{"i":%d}`, i), fast.next())
		}
		select {
		case m := <-bin.msgs:
			var env wireEnvelope
			require.NoError(t, json.Unmarshal(m, &env))
			require.Equal(t, slowID, env.ConnID)
			require.Equal(t, 1011, env.CloseCode)
			closedNotice = true
		default:
		}
	}
	go slow.readLoop()
	// The close frame sits behind data the phone never read; when the relay
	// drops the socket after --close-timeout the phone sees only EOF. The
	// binary's 1011 notice above is the contract.
	slow.closedOrDropped(websocket.StatusInternalError)
	bin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"after":1}}`, fastID))
	require.JSONEq(t, `{"after":1}`, fast.next())
	h.eventually(func() bool { return h.rl.QueuedBytes() == 0 }, "queued bytes not released: %d", h.rl.QueuedBytes())
}

func TestShutdown_EveryConnectionGets1001(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	p, _ := h.dialPhone(sid, bin)
	other := h.dialBinary("other")
	require.NoError(t, h.rl.Shutdown(t.Context()))
	bin.closed(websocket.StatusGoingAway)
	p.closed(websocket.StatusGoingAway)
	other.closed(websocket.StatusGoingAway)
	late := h.connect("/v1/server", binaryHeaders("late"), true)
	late.closed(websocket.StatusGoingAway)
}
