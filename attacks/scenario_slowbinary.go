package attacks

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Slow binary: sixteen phones, each sending 15 KiB frames as fast as the
// relay takes them, to a live daemon on a slow downlink (4 KiB socket
// buffers, one message taken every tenth of --write-timeout, so a round of
// turns over the 16 phones takes 1.6 times --write-timeout). Before issue
// 13 the write timeout also counted the time a frame queued behind the
// other phones' writes, so the phones got their binary closed 1011 within
// two write timeouts, and the ping heartbeat and the conflict probe queued
// behind the frames too. Now the phones are slowed or lose frames; the
// binary stays up, and a rival claiming its server-id is refused 4409.
//
// Locally the relay is one of its own with --write-timeout 1s and a fast
// heartbeat and probe, loaded for 3 s. Remotely it is the deployed relay
// (--write-timeout 10s unless relay attack --write-timeout says otherwise),
// loaded for two write timeouts and 2 s, each phone sending at most
// slowBinaryMaxFrames frames.
const (
	slowBinaryPhones    = 16
	slowBinaryFrame     = 15 << 10
	slowBinaryLoad      = 3 * time.Second
	slowBinaryMaxFrames = 32
)

func slowBinary() Scenario {
	return Scenario{
		ID:      "ATK-SLOW-BINARY",
		Title:   "Phones flooding a slow but live binary cannot get it closed; a rival claim is refused 4409",
		Threats: []string{"TM-DOS-11"},
		Mode:    RemoteSafe,
		Bounds: fmt.Sprintf("1 slow binary, %d phones each sending at most %d frames of 15 KiB (%.1f MiB in all) for two --write-timeout and 2 s (22 s with the default 10s; relay attack --write-timeout D changes it), then 1 rival binary waiting one --probe-timeout; %d connections open at most",
			slowBinaryPhones, slowBinaryMaxFrames, float64(slowBinaryPhones*slowBinaryMaxFrames*slowBinaryFrame)/(1<<20), slowBinaryPhones+2),
		Run: runSlowBinary,
	}
}

func runSlowBinary(ctx context.Context, t *Target) Result {
	wt, load, probe := time.Second, slowBinaryLoad, time.Second
	if t.Local == nil {
		wt = tuned(t.WriteTimeout, defaultWriteTimeout)
		load, probe = 2*wt+2*time.Second, tuned(t.ProbeTimeout, defaultProbeTimeout)
	}
	tgt, _, stop, err := dedicated(ctx, t, "--write-timeout", wt.String(), "--ping-interval", "500ms", "--pong-timeout", "2s", "--probe-timeout", probe.String())
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
			time.Sleep(wt / 10)
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
			for range slowBinaryMaxFrames {
				if loadCtx.Err() != nil {
					return
				}
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
	case <-time.After(load):
	}
	rival, _, err := tgt.dial(ctx, "/v1/server", binaryHeaders(sid))
	if err != nil {
		return Failf("rival binary: %v", err)
	}
	defer rival.CloseNow()
	rctx, cancel := context.WithTimeout(ctx, probe*3/2+5*time.Second)
	_, _, rerr := rival.Read(rctx)
	cancel()
	if code := websocket.CloseStatus(rerr); code != 4409 {
		// No close at all: the rival holds the server-id. Behind a proxy
		// the slow binary's own close, if the heartbeat or a write timeout
		// came first, waits behind the frames buffered for it.
		return Failf("rival claim while the binary was loaded: close %d (%v), want 4409: the relay took the slow binary for dead (the conflict probe, or the heartbeat or write timeout before it)", code, rerr)
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
	return Passf("binary up after %v of %d phones flooding 15 KiB frames with --write-timeout %v; %d messages from %d phones; rival refused 4409",
		load, slowBinaryPhones, wt, got.Load(), n)
}
