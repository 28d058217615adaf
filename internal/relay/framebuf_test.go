package relay

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
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

// A message is read into a pooled buffer of a size class: no larger than
// the class of what the read limit lets through (limit+1 bytes), however
// the buffer grew, and a message as long as the last one is read into the
// buffer it needs at once (one byte over it, to see its end), not grown to
// it again. Reads hold no buffer the pools could not take back: the relay
// reads megabyte messages without a megabyte of garbage each.
func TestMsgReader_ReadsIntoItsSizeClass_WithinTheLimit(t *testing.T) {
	const limit = 100_000 // no class size: the limit's class is above it
	accepted := make(chan *websocket.Conn)
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		accepted <- c
		<-done
	}))
	defer srv.Close()
	defer close(done)
	client, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	require.NoError(t, err)
	defer client.CloseNow()
	ws := <-accepted
	ws.SetReadLimit(limit)
	m := msgReader{ws: ws, limit: limit, timeout: time.Minute, onTimeout: func() {}}
	limitClass := frameClassSize(frameClass(limit + 1))
	for _, n := range []int{300, limit, 1000, 70_000, 70_000, limit, limit} {
		msg := bytes.Repeat([]byte{'a' + byte(n%26)}, n)
		go func() { _ = client.Write(context.Background(), websocket.MessageText, msg) }()
		before := m.last
		_, data, err := m.read()
		require.NoError(t, err)
		require.Equal(t, msg, data)
		c := cap(*m.buf)
		require.Equal(t, frameClassSize(frameClass(c)), c, "a %d-byte message read into a buffer of no class (%d bytes)", n, c)
		require.LessOrEqual(t, c, limitClass, "a %d-byte message read into %d bytes, above the limit's class", n, c)
		if n == before {
			require.Equal(t, frameClassSize(frameClass(n+1)), c, "a %d-byte message like the last one: buffer grown", n)
		}
	}
}

// Reads and queued copies reuse their buffers at every size up to 16 MiB,
// not only small ones: before, a read buffer above 320 KiB and a copy
// above 1 MiB were made for one message and left to the garbage collector
// (megabytes a message at 1 MiB). Bytes, not allocations, and half a
// buffer a use as the bound, because under the race detector sync.Pool
// drops a quarter of what it is given (a quarter of a buffer a use on
// average; a buffer made for every use is a whole one).
func TestFrameBuffers_LargeReusedUpTo16MiB(t *testing.T) {
	pools := []struct {
		name string
		get  func(int) *[]byte
		put  func(*[]byte)
	}{{"read", getReadBuffer, putReadBuffer}, {"frame", getFrameBuffer, putFrameBuffer}}
	for _, n := range []int{1<<20 + 1<<10 + 1, 16 << 20} {
		for _, p := range pools {
			p.put(p.get(n))
			per := bytesPerRun(100, func() {
				b := p.get(n)
				*b = append(*b, 'x')
				p.put(b)
			})
			require.Less(t, per, n/2, "%s buffers of %d bytes: %d bytes allocated a use", p.name, n, per)
		}
	}
}
