package attacks

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Slow binary: sixteen phones, each sending 15 KiB frames as fast as the
// relay takes them, to a live daemon on a slow downlink (4 KiB socket
// buffers, one message taken every 100 ms), with --write-timeout 1s. Before
// issue 13 the write timeout also counted the time a frame queued behind
// the other phones' writes, so the phones got their binary closed 1011
// within two seconds, and the ping heartbeat and the conflict probe queued
// behind the frames too. Now the phones are slowed or lose frames; the
// binary stays up, and a rival claiming its server-id is refused 4409.
const (
	slowBinaryPhones = 16
	slowBinaryFrame  = 15 << 10
	slowBinaryLoad   = 3 * time.Second
)

func slowBinary() Scenario {
	return Scenario{
		ID:      "ATK-SLOW-BINARY",
		Title:   "Phones flooding a slow but live binary cannot get it closed; a rival claim is refused 4409",
		Threats: []string{"TM-DOS-11"},
		Mode:    LocalOnly,
		Bounds:  "1 relay of its own, 1 slow binary, 16 phones sending 15 KiB frames for about 4 s, 1 rival binary",
		Run:     runSlowBinary,
	}
}

func runSlowBinary(ctx context.Context, t *Target) Result {
	if _, skip := localOrSkip(t); skip != nil {
		return *skip
	}
	tgt, _, stop, err := dedicated(ctx, t, "--write-timeout", "1s", "--ping-interval", "500ms", "--pong-timeout", "2s", "--probe-timeout", "1s")
	if err != nil {
		return Failf("%v", err)
	}
	defer stop()
	slow := tgt.withClient(smallBufClient(tgt))
	sid := newServerID()
	bin, _, err := slow.dial(ctx, "/v1/server", binaryHeaders(sid))
	if err != nil {
		return Failf("slow binary: %v", err)
	}
	defer bin.CloseNow()
	var got atomic.Int64
	var senders sync.Map
	ended := make(chan error, 1)
	go func() {
		for {
			_, m, err := bin.Read(ctx)
			if err != nil {
				ended <- err
				return
			}
			got.Add(1)
			if i := strings.Index(string(m), `"conn_id":"`); i >= 0 && len(m) > i+34 {
				senders.Store(string(m[i+11:i+34]), true)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	loadCtx, cancelLoad := context.WithCancel(ctx)
	defer cancelLoad()
	frame := []byte(`{"pad":"` + strings.Repeat("p", slowBinaryFrame-10) + `"}`)
	for i := range slowBinaryPhones {
		c, _, err := slow.dial(ctx, "/v1/client", phoneHeaders(sid, "tok-"+randHex(8)))
		if err != nil {
			return Failf("phone %d: %v", i, err)
		}
		defer c.CloseNow()
		go func() { _, _, _ = c.Read(loadCtx) }() // answers pings
		go func() {
			for loadCtx.Err() == nil {
				wctx, cancel := context.WithTimeout(loadCtx, 20*time.Second)
				err := c.Write(wctx, websocket.MessageText, frame)
				cancel()
				if err != nil {
					return
				}
			}
		}()
	}

	select {
	case err := <-ended:
		return Failf("slow but live binary closed under phone load (close %d): the write timeout counted the queue", websocket.CloseStatus(err))
	case <-time.After(slowBinaryLoad):
	}
	rival, _, err := tgt.dial(ctx, "/v1/server", binaryHeaders(sid))
	if err != nil {
		return Failf("rival binary: %v", err)
	}
	defer rival.CloseNow()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, _, rerr := rival.Read(rctx)
	cancel()
	if code := websocket.CloseStatus(rerr); code != 4409 {
		return Failf("rival claim while the binary was loaded: close %d (%v), want 4409: the probe declared a slow binary dead", code, rerr)
	}
	select {
	case err := <-ended:
		return Failf("slow binary closed after the probe (close %d)", websocket.CloseStatus(err))
	default:
	}
	n := 0
	senders.Range(func(any, any) bool { n++; return true })
	if got.Load() < 10 || n < 2 {
		return Failf("the binary was not fed: %d messages from %d phones", got.Load(), n)
	}
	return Passf("binary up after %v of %d phones flooding 15 KiB frames with --write-timeout 1s; %d messages from %d phones; rival refused 4409",
		slowBinaryLoad, slowBinaryPhones, got.Load(), n)
}
