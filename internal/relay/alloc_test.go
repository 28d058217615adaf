package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
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
// relay's. (Under the race detector sync.Pool drops a quarter of what is
// put back; a 512 B message's buffers are made in one allocation, so that
// averages below one per message, but a 16 KiB one takes several, so it
// runs without the race detector only.)
func TestForwarding_SteadyState_AllocatesNothingPerMessage(t *testing.T) {
	sizes := []int{512}
	if !raceEnabled {
		sizes = append(sizes, 16<<10)
	}
	for _, size := range sizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			h := newHarness(t, func(o *Options) {
				o.MaxMessageBytes = 64 << 10
				o.PhoneQueueBytes = 1 << 20
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
			for range 100 { // warm up: pools filled, a writer parked, buffers grown
				phoneToBinary()
				binaryToPhone()
			}
			require.Zero(t, testing.AllocsPerRun(300, phoneToBinary), "allocations per phone->binary message")
			require.Zero(t, testing.AllocsPerRun(300, binaryToPhone), "allocations per binary->phone message")
		})
	}
}

func envelopeConnID(t *testing.T, msg []byte) string {
	t.Helper()
	v, ok := scanBinaryEnvelope(msg)
	require.True(t, ok, "not an envelope: %s", msg)
	return string(v.connID)
}
