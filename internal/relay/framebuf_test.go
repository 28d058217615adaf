package relay

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Every length gets the smallest class that holds it, at most an eighth
// (or 16 bytes) more, and a class's buffers go back to that class.
func TestFrameClass_SmallestClassWithinAnEighth(t *testing.T) {
	prev := 0
	for i := range frameClasses {
		size := frameClassSize(i)
		require.Greater(t, size, prev, "classes grow")
		require.Equal(t, i, frameClass(size), "class of a class size")
		prev = size
	}
	require.Equal(t, maxFrameClass, prev)
	for n := 0; n <= maxFrameClass; n += 1 + n/97 {
		i := frameClass(n)
		size := frameClassSize(i)
		require.GreaterOrEqual(t, size, n)
		require.LessOrEqual(t, size, max(n+16, n+n/8), "class for %d is %d", n, size)
		if i > 0 {
			require.Less(t, frameClassSize(i-1), n, "a smaller class holds %d", n)
		}
	}
	require.Equal(t, -1, frameClass(maxFrameClass+1))
}

// A frame queued for a phone holds a buffer of its own size class, not
// whatever large buffer the pools hold from earlier traffic: a binary
// cannot make a stalled phone's queue (or the relay-wide budget) hold far
// more memory than it is charged by queueing small frames. (Before size
// classes, a 2-byte frame charged 66 bytes could hold a 256 KiB buffer.)
func TestDeliver_QueuedFrameHoldsItsSizeClass(t *testing.T) {
	for range 8 { // large buffers from earlier traffic
		b := make([]byte, 0, 256<<10)
		putFrameBuffer(&b)
	}
	rl, err := New(fastOptions(), Deps{})
	require.NoError(t, err)
	p := &phoneConn{rl: rl, wsEnd: &wsEnd{ended: make(chan struct{}), gone: make(chan struct{})},
		out: newOutbox(1<<20, rl.budget)} // no writer: the queue only grows
	for _, frame := range [][]byte{[]byte(`{}`), benchFrame(600), benchFrame(5000)} {
		for range 20 {
			p.deliver(frame, 0)
		}
	}
	var held, charged int64
	for _, it := range p.out.items[p.out.head:] {
		n := len(it.frame)
		require.LessOrEqual(t, cap(*it.buf), max(n+16, n+n/8), "a %d-byte frame held a %d-byte buffer", n, cap(*it.buf))
		held += int64(cap(*it.buf))
		charged += it.cost()
	}
	require.Equal(t, charged, p.out.bytes)
	require.Equal(t, charged, rl.QueuedBytes())
	require.Less(t, held, charged, "queued frames hold more than they are charged")
}
