package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"testing"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// readInto reads one whole message into buf's array (grown when too
// small), as an allocation-free client does.
func readInto(c *websocket.Conn, buf []byte) ([]byte, error) {
	_, r, err := c.Reader(context.Background())
	if err != nil {
		return nil, err
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// Steady-state forwarding allocates nothing per message, either way: the
// read buffers, the phone's queue and its copy of each frame, the parked
// writer, the timers and the binary's envelope are all reused. The clients
// here read into reused buffers too, so any allocation counted is the
// relay's. 1 MiB is past the sizes the relay once pooled: its reads then
// grew a buffer of their own and its copies for phones were made to
// measure, megabytes of garbage a message. (Under the race detector, as
// make test runs it, sync.Pool drops a quarter of what is put back; a
// 512 B message's buffers are made in few allocations, so that averages
// below one per message, but a 16 KiB one takes several, and a megabyte
// takes the race detector seconds, so they run without it only:
// TestFrameBuffers_LargeReusedUpTo16MiB covers the megabyte sizes' pools
// under it.)
func TestForwarding_SteadyState_AllocatesNothingPerMessage(t *testing.T) {
	sizes := []int{512}
	if !raceEnabled {
		sizes = append(sizes, 16<<10, 1<<20)
	}
	for _, size := range sizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			h := newHarness(t, func(o *Options) {
				o.MaxMessageBytes = max(64<<10, int64(size)+1<<10)
				o.PhoneQueueBytes = 4 << 20
				if size > 64<<10 {
					// Through 16 KiB send buffers a megabyte's round trip
					// on loopback took hundreds of ms (measured).
					o.SocketSendBuffer = 0
				}
			})
			bin := h.connect("/v1/server", binaryHeaders(sid), false)
			h.eventually(func() bool { return h.rl.Stats().Binaries == 1 }, "binary never claimed")
			phone := h.connect("/v1/client", phoneHeaders(sid), false)
			ctx := context.Background()
			buf := make([]byte, 0, 1024)
			frame := benchFrame(size)
			require.NoError(t, phone.c.Write(ctx, websocket.MessageText, frame))
			msg, err := readInto(bin.c, buf)
			require.NoError(t, err)
			connID := envelopeConnID(t, msg)
			env := []byte(fmt.Sprintf(`{"conn_id":%q,"frame":%s}`, connID, frame))

			phoneToBinary := func() {
				if err := phone.c.Write(ctx, websocket.MessageText, frame); err != nil {
					panic(err)
				}
				m, err := readInto(bin.c, buf)
				if err != nil || len(m) <= len(frame) {
					panic(fmt.Sprint("binary read: ", err, len(m)))
				}
				buf = m[:0]
			}
			binaryToPhone := func() {
				if err := bin.c.Write(ctx, websocket.MessageText, env); err != nil {
					panic(err)
				}
				m, err := readInto(phone.c, buf)
				if err != nil || len(m) != len(frame) {
					panic(fmt.Sprint("phone read: ", err, len(m)))
				}
				buf = m[:0]
			}
			runs := 300
			if size > 64<<10 {
				runs = 30 // megabytes a message; one allocation each shows in a few dozen
			}
			for range 100 { // warm up: pools filled, a writer parked, buffers grown
				phoneToBinary()
				binaryToPhone()
			}
			require.Zero(t, testing.AllocsPerRun(runs, phoneToBinary), "allocations per phone->binary message")
			require.Zero(t, testing.AllocsPerRun(runs, binaryToPhone), "allocations per binary->phone message")
		})
	}
}

// bytesPerRun is the bytes allocated per call of f, over runs calls.
func bytesPerRun(runs int, f func()) int {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return int((after.TotalAlloc - before.TotalAlloc) / uint64(runs))
}

func envelopeConnID(t *testing.T, msg []byte) string {
	t.Helper()
	v, ok := scanBinaryEnvelope(msg)
	require.True(t, ok, "not an envelope: %s", msg)
	return string(v.connID)
}

// A phone that sent one large message keeps no buffer that size: its read
// loop kept the envelope it built for the binary for the rest of the
// phone's life, so 64 idle phones that had each sent one 200 KiB message
// held about 13 MiB that no budget charged (--max-queued-bytes counts
// queued frames, not this), and --max-message-bytes times the per-IP
// connection cap per address. Large envelopes now come from the frame
// pools and go back once written.
func TestPhone_OneLargeMessage_KeepsNoBufferThatSize(t *testing.T) {
	const binaries, phonesEach, size = 4, 16, 200 << 10
	h := newHarness(t, func(o *Options) {
		o.MaxMessageBytes = 256 << 10
		o.PhoneQueueBytes = 1 << 20
		o.SocketSendBuffer = 0
	})
	var bins, phones []*peer
	for i := range binaries {
		id := fmt.Sprintf("6f1c2a4e-0b7d-4c1e-9a55-2f3d4b5c6d%02x", i)
		bin := h.dialBinary(id)
		bins = append(bins, bin)
		for range phonesEach {
			p, _ := h.dialPhone(id, bin)
			phones = append(phones, p)
		}
	}
	heap := func() int64 {
		runtime.GC()
		runtime.GC() // the pools drop what they hold across two
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	frame := benchFrame(size)
	before := heap()
	for i, p := range phones {
		require.NoError(t, p.c.Write(context.Background(), websocket.MessageText, frame))
		require.Greater(t, len(bins[i/phonesEach].next()), size, "the binary gets the whole frame")
	}
	kept := heap() - before
	t.Logf("%d phones sent one %d KiB message each: heap %+d KiB after", len(phones), size>>10, kept>>10)
	require.Less(t, kept, int64(len(phones))*size/4, "idle phones keep buffers the size of the last large message they sent")
}
