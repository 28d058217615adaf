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

// Relay-wide queued bytes: one attacker binary with many phones that stop
// reading can make the relay queue up to --phone-queue-bytes for each; the
// relay-wide --max-queued-bytes ceiling caps the sum. The attacker sends
// to its stalled phones round-robin, so each one's own queue stays far
// below its cap while together they would pass the ceiling several times
// over. The relay's relay_queued_bytes gauge (read from /metrics) must
// never pass the ceiling; the phones whose frames would cross it are
// closed 1011 (their binary gets notices) before their own queues could
// have filled; a legitimate pair on another server-id keeps relaying.
// Local-only: it needs /metrics and a relay of its own.
//
// The attacker's frames are exactly queueCeilingFrame bytes, and the
// ceiling is not a multiple of that, so at least queueCeilingHeadroom
// bytes always stay free for the pair's small frames. Without that, the
// ceiling's documented rule (the phone whose frame would cross it is
// closed) could close the legitimate phone instead: an attacker who sizes
// frames to fill the budget exactly can do so (see TM-DOS-8, residual risk).
const (
	queueCeilingPhones   = 4
	queueCeilingPerPhone = 2 << 20 // --phone-queue-bytes
	queueCeilingMax      = 2 << 20 // --max-queued-bytes: a quarter of 4 full queues
	queueCeilingFrame    = 64000   // bytes of each inner frame
	// queueCeilingBudget bounds the bytes sent in all. Each stalled phone's
	// socket on the relay side soaks up about 3 MiB on Linux loopback (send
	// buffer autotuning, tcp_wmem) before its queue grows at all; the run
	// stops early once the ceiling has cut enough phones.
	queueCeilingBudget   = 16 << 20 * queueCeilingPhones
	queueCeilingHeadroom = queueCeilingMax % queueCeilingFrame
	queueCeilingExtra    = 8 // rounds sent after enough phones were cut
)

func queueCeiling() Scenario {
	return Scenario{
		ID:      "ATK-QUEUE-CEILING",
		Title:   "Many stalled phones under one binary cannot queue past --max-queued-bytes; crossing phones are closed 1011; a live pair carries on",
		Threats: []string{"TM-DOS-8"},
		Mode:    LocalOnly,
		Run:     runQueueCeiling,
	}
}

func runQueueCeiling(ctx context.Context, t *Target) Result {
	if _, skip := localOrSkip(t); skip != nil {
		return *skip
	}
	// A long heartbeat and write timeout: only the queue caps may close
	// the stalled phones here.
	tgt, p, stop, err := dedicated(ctx, t, "--phone-queue-bytes", fmt.Sprint(queueCeilingPerPhone), "--max-queued-bytes", fmt.Sprint(queueCeilingMax),
		"--ping-interval", "1m", "--pong-timeout", "1m", "--write-timeout", "1m", "--metrics-listen", "127.0.0.1:0")
	if err != nil {
		return Failf("%v", err)
	}
	defer stop()
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return Failf("setup: %v", err)
	}

	pair, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("legitimate pair: %v", err)
	}
	defer pair.Close()
	legit, err := pair.addPhone(nil)
	if err != nil {
		return Failf("legitimate pair: %v", err)
	}

	att, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("attacker: %v", err)
	}
	defer att.Close()
	var slow []*phone
	for i := 0; i < queueCeilingPhones; i++ {
		ph, err := att.addPhoneVia(phoneHeaders(att.ServerID, "tok-"+randHex(8)), smallBufClient(tgt))
		if err != nil {
			return Failf("attacker phone %d: %v", i+1, err)
		}
		slow = append(slow, ph)
	}
	rss0, err := m.value(ctx, mRSS)
	if err != nil {
		return Failf("metrics: %v", err)
	}

	// Sample the gauge and RSS while the attack runs.
	sctx, scancel := context.WithCancel(ctx)
	var peakQ, peakRSS float64
	var ceilingDrops atomic.Int64 // relay_backlog_full drops, as last sampled
	var samples int
	var sampleErr error
	var swg sync.WaitGroup
	swg.Add(1)
	go func() {
		defer swg.Done()
		for sctx.Err() == nil {
			v, err := m.scrape(sctx)
			if err != nil {
				if sctx.Err() == nil {
					sampleErr = err
				}
				return
			}
			samples++
			peakQ, peakRSS = max(peakQ, v[mQueuedBytes]), max(peakRSS, v[mRSS])
			ceilingDrops.Store(int64(v[mDropCeiling]))
			time.Sleep(10 * time.Millisecond)
		}
	}()
	stopSampling := func() { scancel(); swg.Wait() }
	defer stopSampling()

	frame := `{"pad":"` + strings.Repeat("Q", queueCeilingFrame-10) + `"}`
	envs := map[string][]byte{} // the envelope to each phone, built once
	for _, ph := range slow {
		envs[ph.ConnID] = []byte(`{"conn_id":"` + ph.ConnID + `","frame":` + frame + `}`)
	}
	codes := map[string]int{}
	seenIdx := 0
	collect := func() {
		att.drain()
		for ; seenIdx < len(att.Seen); seenIdx++ {
			e := att.Seen[seenIdx]
			if e.CloseCode != 0 && len(e.Frame) == 0 {
				if _, dup := codes[e.ConnID]; !dup {
					codes[e.ConnID] = e.CloseCode
				}
			}
		}
	}
	// The ceiling has to cut phones until the survivors' own queues fit
	// under it; those may then be closed by their own cap, or not at all.
	need := queueCeilingPhones - queueCeilingMax/queueCeilingPerPhone
	drops0, _ := m.value(ctx, mDropCeiling)
	sent, rounds, trips, extra := 0, 0, 0, 0
	var worst time.Duration
	for sent < queueCeilingBudget && len(codes) < len(slow) && extra < queueCeilingExtra {
		for _, ph := range slow {
			if _, closed := codes[ph.ConnID]; closed {
				continue
			}
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := att.Bin.Write(wctx, websocket.MessageText, envs[ph.ConnID])
			cancel()
			if err != nil {
				return Failf("attacker binary's write failed after %d bytes: %v", sent, err)
			}
			sent += len(frame)
		}
		rounds++
		collect()
		// The relay decides a close before the notice can arrive (after
		// the close handshake's timeout); its drop counter says so first.
		if len(codes) >= need || float64(ceilingDrops.Load())-drops0 >= float64(need) {
			extra++ // keep pressing on the survivors a little longer
		}
		if rounds%4 == 0 {
			rtt, err := pair.roundTrip(legit, 3*time.Second)
			if err != nil {
				return Failf("legitimate pair stopped relaying after %s sent to the stalled phones: %v", mib(float64(sent)), err)
			}
			trips++
			worst = max(worst, rtt)
		}
	}
	// Notices for the last phones closed may still be on their way.
	pollUntil(ctx, 3*time.Second, 20*time.Millisecond, func() bool { collect(); return len(codes) >= need })
	if _, err := pair.roundTrip(legit, 3*time.Second); err != nil {
		return Failf("legitimate pair broken after the attack: %v", err)
	}
	drops1, err := m.value(ctx, mDropCeiling)
	if err != nil {
		return Failf("metrics: %v", err)
	}
	stopSampling()
	if sampleErr != nil {
		return Failf("metrics: %v", sampleErr)
	}

	if peakQ > queueCeilingMax+queueCeilingFrame {
		return Failf("relay queued %s for phones (relay_queued_bytes peak over %d samples), over --max-queued-bytes %s: the relay-wide ceiling did not hold",
			mib(peakQ), samples, mib(queueCeilingMax))
	}
	if peakQ < queueCeilingMax/2 {
		return Failf("the attack queued at most %s (ceiling %s): it never pressed on the ceiling, so it proves nothing", mib(peakQ), mib(queueCeilingMax))
	}
	for id, code := range codes {
		if code != 1011 {
			return Failf("stalled phone %s closed %d, want 1011", id, code)
		}
	}
	if len(codes) < need {
		return Failf("%d of %d stalled phones closed after %s sent (%s each at most; relay_queued_bytes peak %s); want at least %d closed by the %s ceiling",
			len(codes), len(slow), mib(float64(sent)), mib(float64(sent/len(slow))), mib(peakQ), need, mib(queueCeilingMax))
	}
	// A close at the ceiling is counted as its own drop reason: proof that
	// the relay-wide bound, not each phone's cap, cut the phones.
	if drops1-drops0 < 1 {
		return Failf("no frame was refused at the relay-wide ceiling (%s = %v): the phones were closed by their own caps only", mDropCeiling, drops1-drops0)
	}
	if peakRSS > rss0+8*queueCeilingMax+16<<20 {
		return Failf("relay RSS grew from %s to %s with a %s queue ceiling", mib(rss0), mib(peakRSS), mib(queueCeilingMax))
	}
	return Passf("%d stalled phones (own cap %s each) sent %s round-robin in %d-byte frames: relay_queued_bytes peaked at %s <= ceiling %s (%d samples); %d closed 1011 with notices, %.0f frames refused at the ceiling; RSS %s -> peak %s; pair made %d round trips, worst %v",
		len(slow), mib(queueCeilingPerPhone), mib(float64(sent)), len(frame), mib(peakQ), mib(queueCeilingMax), samples, len(codes), drops1-drops0,
		mib(rss0), mib(peakRSS), trips, ms(worst))
}
