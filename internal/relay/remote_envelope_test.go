package relay

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// A remote phone's frame waits in its stub's queue on the owner as an
// envelope for the binary: in a pooled buffer of the envelope's size
// class, like a local phone's frame (TestDeliver_QueuedFrameHoldsItsSizeClass),
// so it holds at most an eighth more than it is charged whatever the pools
// hold, and steady cross-instance traffic allocates no envelopes on the
// owner (docs/cluster.md, Figures).
func TestQueueUp_StubEnvelopeHoldsItsSizeClass_AllocatesNothing(t *testing.T) {
	for range 8 { // large buffers from earlier traffic
		b := make([]byte, 0, 256<<10)
		putFrameBuffer(&b)
	}
	rl, err := New(fastOptions(), Deps{})
	require.NoError(t, err)
	const connID = "client-0123456789abcdef"
	stub := &phoneConn{rl: rl, serverID: "s", connID: connID, out: newOutbox(1<<20, rl.budget),
		link: &stubLink{home: "home", stop: make(chan struct{})}} // no writer: the queue only grows
	frames := [][]byte{[]byte(`{}`), benchFrame(600), benchFrame(5000)}
	for _, frame := range frames {
		require.Equal(t, len(appendPhoneEnvelope(nil, connID, "", frame)), stubEnvelopeLen(connID, frame))
		for range 20 {
			rl.queueUp(stub, LinkMessage{Kind: LinkUp, ServerID: "s", ConnID: connID, Frame: frame})
		}
	}
	var held, charged int64
	for i, it := range stub.out.items[stub.out.head:] {
		require.Equal(t, string(appendPhoneEnvelope(nil, connID, "", frames[i/20])), string(it.frame))
		n := len(it.frame)
		require.NotNil(t, it.buf, "a %d-byte envelope is not in a pooled buffer", n)
		require.LessOrEqual(t, cap(*it.buf), max(n+16, n+n/8), "a %d-byte envelope held a %d-byte buffer", n, cap(*it.buf))
		held += int64(cap(*it.buf))
		charged += it.cost()
	}
	require.Equal(t, charged, rl.QueuedBytes())
	require.Less(t, held, charged, "queued envelopes hold more than they are charged")

	// The first frame's token rides in its envelope (made to fit).
	rl.queueUp(stub, LinkMessage{Kind: LinkUp, ServerID: "s", ConnID: connID, Token: "tok\"en", Frame: frames[0]})
	last := stub.out.items[len(stub.out.items)-1]
	require.Equal(t, string(appendPhoneEnvelope(nil, connID, "tok\"en", frames[0])), string(last.frame))

	for stub.out.bytes > 0 { // written: buffers back to their pools
		_, _, _ = stub.out.writeNext(func([]byte) error { return nil })
	}
	require.Zero(t, rl.QueuedBytes())
	if raceEnabled {
		return // sync.Pool drops a quarter of what is put back
	}
	m := LinkMessage{Kind: LinkUp, ServerID: "s", ConnID: connID, Frame: frames[1]}
	require.Zero(t, testing.AllocsPerRun(300, func() {
		rl.queueUp(stub, m)
		_, _, _ = stub.out.writeNext(func([]byte) error { return nil })
	}), "allocations per queued and written stub frame")
}
