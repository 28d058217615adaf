package attacks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Relay-wide queued bytes, in two phases, each on a relay of its own.
//
// Flood: one attacker binary with many phones that stop reading can make
// the relay queue up to --phone-queue-bytes for each; the relay-wide
// --max-queued-bytes ceiling caps the sum. The attacker sends to its
// stalled phones round-robin, so each one's own queue stays far below its
// cap while together they would pass the ceiling several times over. The
// relay's relay_queued_bytes gauge (read from /metrics) must never pass the
// ceiling; at the ceiling stalled phones are closed 1011 (their binary gets
// notices) before their own queues could have filled; a legitimate pair on
// another server-id keeps relaying.
//
// Isolation: an attacker tenant parks its stalled phones just under the
// ceiling, then another tenant's reading phone is sent a frame that cannot
// fit in what is left. The relay must shed the phone furthest behind (an
// attacker's), not the innocent phone whose frame happened to cross.
//
// Shed until it fits: every stalled phone of the attacker holds one small
// frame mid-write, so shedding one frees less than the victim's frame
// needs. The relay must go on shedding stallers until the frame fits (and
// no further), never close the victim's phone while stallers remain.
//
// Local-only: it needs /metrics and relays of its own.
//
// In the flood, the attacker's frames are exactly queueCeilingFrame bytes
// and the ceiling is not a multiple of that, so at least
// queueCeilingHeadroom bytes stay free for the pair's small frames: the
// flood tests the bound alone; who is closed when another tenant's frame
// does cross is the isolation phase's question.
const (
	queueCeilingPhones   = 4
	queueCeilingPerPhone = 2 << 20 // --phone-queue-bytes
	queueCeilingMax      = 2 << 20 // --max-queued-bytes: a quarter of 4 full queues
	queueCeilingFrame    = 64000   // bytes of each inner frame
	// queueCeilingBudget bounds the bytes sent in all; the run stops early
	// once the ceiling has cut enough phones.
	queueCeilingBudget   = 16 << 20 * queueCeilingPhones
	queueCeilingHeadroom = queueCeilingMax % queueCeilingFrame
	queueCeilingExtra    = 8 // rounds sent after enough phones were cut
	// queueSocketBuffer is the relay's --socket-send-buffer in both phases:
	// a stalled socket blocks after a few KiB of kernel buffering, so bytes
	// pile up in the relay's queues (which the ceiling counts) at once, and
	// the isolation phase's fill settles quickly and exactly.
	queueSocketBuffer = 16384
)

// The isolation phase's sizes. Each of the attacker's stalled phones ends
// up with about queueIsoMax/queueIsoPhones queued, far under its own cap,
// so only the relay-wide ceiling is in play. The fill leaves less than
// 2*queueIsoFrame free; the victim's frame is larger than that, so it
// cannot fit, yet far smaller than one attacker phone's backlog, so it fits
// once that phone is shed.
const (
	queueIsoPhones   = 4
	queueIsoPerPhone = 512 << 10 // --phone-queue-bytes
	queueIsoMax      = 1 << 20   // --max-queued-bytes
	queueIsoFrame    = 16000     // bytes of each attacker frame
	queueIsoVictim   = 64 << 10  // bytes of the victim's frame
	queueIsoMaxMsg   = 128 << 10 // --max-message-bytes: room for the victim's envelope
)

// The shed-until-it-fits phase's sizes. Each stalled phone ends up holding
// exactly one queueFitsFrame mid-write (its kernel buffers full, nothing
// queued behind it); the fill stops when another would cross the ceiling.
// The victim's frame is then several stallers' worth: with 6 stallers of
// about 6 KB under a 40000-byte ceiling, a 32000-byte frame needs 5 shed.
const (
	queueFitsMax    = 40000 // --max-queued-bytes (and --phone-queue-bytes)
	queueFitsMaxMsg = 32768 // --max-message-bytes
	queueFitsFrame  = 6000  // bytes of each attacker frame
	queueFitsVictim = 32000 // bytes of the victim's frame
)

func queueCeiling() Scenario {
	return Scenario{
		ID:        "ATK-QUEUE-CEILING",
		Title:     "Stalled phones cannot queue past --max-queued-bytes; at the ceiling the attacker's phones furthest behind are closed 1011 until the frame fits, never another tenant's; a live pair carries on",
		Threats:   []string{"TM-DOS-8"},
		Mode:      LocalOnly,
		LocalOnly: "it fills the relay-wide --max-queued-bytes (256 MiB by default), which would get real users' phones shed, and reads /metrics",
		Run:       runQueueCeiling,
	}
}

func runQueueCeiling(ctx context.Context, t *Target) Result {
	if _, skip := localOrSkip(t); skip != nil {
		return *skip
	}
	iso := runQueueIsolation(ctx, t)
	if iso.Verdict != Pass {
		return iso
	}
	fits := runQueueShedUntilFits(ctx, t)
	if fits.Verdict != Pass {
		return fits
	}
	flood := runQueueFlood(ctx, t)
	if flood.Verdict != Pass {
		return flood
	}
	return Passf("flood: %s; isolation: %s; shed until it fits: %s", flood.Evidence, iso.Evidence, fits.Evidence)
}

// runQueueFlood is the flood phase: many stalled phones, one binary.
func runQueueFlood(ctx context.Context, t *Target) Result {
	// A long heartbeat and write timeout: only the queue caps may close
	// the stalled phones here.
	b, err := newStage(ctx, t, 1, "--phone-queue-bytes", fmt.Sprint(queueCeilingPerPhone), "--max-queued-bytes", fmt.Sprint(queueCeilingMax),
		"--ping-interval", "1m", "--pong-timeout", "1m", "--write-timeout", "1m",
		"--socket-send-buffer", fmt.Sprint(queueSocketBuffer))
	if err != nil {
		return Failf("%v", err)
	}
	defer b.Close()
	tgt, m, pair, legit := b.tgt, b.m, b.s, b.phones[0]

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

// runQueueIsolation is the isolation phase: an attacker tenant fills the
// relay-wide queue to just under the ceiling, then another tenant's frame
// crosses it.
func runQueueIsolation(ctx context.Context, t *Target) Result {
	tgt, p, stop, err := dedicated(ctx, t, "--phone-queue-bytes", fmt.Sprint(queueIsoPerPhone), "--max-queued-bytes", fmt.Sprint(queueIsoMax),
		"--max-message-bytes", fmt.Sprint(queueIsoMaxMsg), "--socket-send-buffer", fmt.Sprint(queueSocketBuffer),
		"--ping-interval", "1m", "--pong-timeout", "1m", "--write-timeout", "1m")
	if err != nil {
		return Failf("isolation: %v", err)
	}
	defer stop()
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return Failf("isolation setup: %v", err)
	}

	att, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("isolation attacker: %v", err)
	}
	defer att.Close()
	var stalled []*phone
	envs := map[string][]byte{}
	frame := `{"pad":"` + strings.Repeat("A", queueIsoFrame-10) + `"}`
	for i := 0; i < queueIsoPhones; i++ {
		ph, err := att.addPhoneVia(phoneHeaders(att.ServerID, "tok-"+randHex(8)), smallBufClient(tgt))
		if err != nil {
			return Failf("isolation attacker phone %d: %v", i+1, err)
		}
		stalled = append(stalled, ph)
		envs[ph.ConnID] = []byte(`{"conn_id":"` + ph.ConnID + `","frame":` + frame + `}`)
	}
	// The attacker's own reading phone: a frame to it that arrives proves
	// the relay has handled every earlier envelope of the attacker's binary
	// (one read loop per binary, in order).
	syncPh, err := att.addPhone(nil)
	if err != nil {
		return Failf("isolation attacker sync phone: %v", err)
	}
	syncR := syncPh.StartReading()

	vic, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("isolation victim: %v", err)
	}
	defer vic.Close()
	vph, err := vic.addPhone(nil)
	if err != nil {
		return Failf("isolation victim phone: %v", err)
	}
	vR := vph.StartReading()

	// Fill: after each sync the queue can only shrink (the relay's writers
	// hand bytes to the kernel until they block), so its settled size is an
	// upper bound, and a batch one frame short of the room left can never
	// cross the ceiling. Stop when less than two frames' room is left.
	synced := func() error {
		n := randHex(8)
		if err := att.send(syncPh.ConnID, map[string]string{"sync": n}); err != nil {
			return err
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
			if msg := syncR.next(time.Until(deadline)); bytes.Contains(msg, []byte(n)) {
				return nil
			}
		}
		return errors.New("the attacker's sync frame was not delivered")
	}
	fillStart := time.Now()
	var q float64
	sent, batches := 0, 0
	for {
		if err := synced(); err != nil {
			return Failf("isolation fill after %d bytes: %v", sent, err)
		}
		if q, err = m.stableValue(ctx, mQueuedBytes); err != nil {
			return Failf("isolation fill after %d bytes: %v", sent, err)
		}
		k := int(queueIsoMax-q)/queueIsoFrame - 1
		if k < 1 {
			break
		}
		if batches++; batches > 50 {
			return Failf("isolation: the queue never filled (%s of %s after %s sent in %d batches)", mib(q), mib(queueIsoMax), mib(float64(sent)), batches)
		}
		for j := 0; j < k; j++ {
			ph := stalled[(sent/queueIsoFrame)%len(stalled)]
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := att.Bin.Write(wctx, websocket.MessageText, envs[ph.ConnID])
			cancel()
			if err != nil {
				return Failf("isolation: the attacker binary's write failed after %d bytes: %v", sent, err)
			}
			sent += queueIsoFrame
		}
	}
	fillTime := time.Since(fillStart)
	drops0, err := m.value(ctx, mDropCeiling)
	if err != nil {
		return Failf("isolation metrics: %v", err)
	}
	att.drain()
	if drops0 != 0 || len(closeNotices(att.Seen)) != 0 {
		return Failf("isolation: the fill itself crossed the ceiling (%s = %v, attacker notices %v): the attack is miscalibrated", mDropCeiling, drops0, closeNotices(att.Seen))
	}
	headroom := int(queueIsoMax - q)
	if headroom >= queueIsoVictim {
		return Failf("isolation: %d bytes left under the ceiling hold the victim's %d-byte frame: the attack proves nothing", headroom, queueIsoVictim)
	}

	// The victim's frame crosses the ceiling.
	n := randHex(8)
	vf := `{"v":"` + n + `","pad":"` + strings.Repeat("v", queueIsoVictim-len(n)-17) + `"}`
	if len(vf) != queueIsoVictim {
		return Failf("isolation: victim frame is %d bytes, want %d", len(vf), queueIsoVictim)
	}
	if err := writeRaw(ctx, vic, []byte(`{"conn_id":"`+vph.ConnID+`","frame":`+vf+`}`)); err != nil {
		return Failf("isolation: victim binary write: %v", err)
	}
	got := false
	for deadline := time.Now().Add(5 * time.Second); !got && time.Now().Before(deadline); {
		msg := vR.next(time.Until(deadline))
		if msg == nil {
			break
		}
		got = bytes.Contains(msg, []byte(n)) && len(msg) == queueIsoVictim
	}
	// The shed phone's notice follows its close handshake's timeout.
	att.BinR.waitEnvelope(5*time.Second, &att.Seen, func(e envelope) bool { return e.CloseCode != 0 && len(e.Frame) == 0 })
	attClosed := closeNotices(att.Seen)
	vic.drain()
	if !got {
		return Failf("isolation broken: the victim tenant's reading phone never got its %d-byte frame (headroom %d of ceiling %d after the attacker's fill): it was closed %d, its binary got notices %v; attacker phones closed: %v",
			queueIsoVictim, headroom, queueIsoMax, vR.closeCode(3*time.Second), closeNotices(vic.Seen), attClosed)
	}
	if vn := closeNotices(vic.Seen); len(vn) != 0 {
		return Failf("isolation broken: the victim's binary got close notices %v after its frame crossed the ceiling", vn)
	}
	if code := vR.closeCode(100 * time.Millisecond); code != 0 {
		return Failf("isolation broken: the victim's phone was closed %d after receiving its frame", code)
	}
	rtt, err := vic.roundTrip(vph, 3*time.Second)
	if err != nil {
		return Failf("isolation broken: the victim's pair stopped relaying after its frame crossed the ceiling: %v", err)
	}
	if len(attClosed) != 1 {
		return Failf("isolation: want exactly one attacker phone shed at the ceiling, got notices %v (headroom %d, victim frame %d)", attClosed, headroom, queueIsoVictim)
	}
	shed := -1
	for i, ph := range stalled {
		if code, ok := attClosed[ph.ConnID]; ok && code == 1011 {
			shed = i
		}
	}
	if shed < 0 {
		return Failf("isolation: the phone closed was not a stalled attacker phone closed 1011: %v", attClosed)
	}
	drops1, err := m.value(ctx, mDropCeiling)
	if err != nil {
		return Failf("isolation metrics: %v", err)
	}
	if drops1-drops0 != 1 {
		return Failf("isolation: %s moved by %v, want 1 (the shed attacker phone)", mDropCeiling, drops1-drops0)
	}
	q1, err := m.value(ctx, mQueuedBytes)
	if err != nil {
		return Failf("isolation metrics: %v", err)
	}
	if q1 > queueIsoMax {
		return Failf("isolation: relay_queued_bytes %v over the ceiling %d after the shed", q1, queueIsoMax)
	}
	return Passf("attacker (%d stalled phones, %d-byte frames, sync phone) filled relay_queued_bytes to %.0f of %d in %v without crossing (headroom %d bytes); "+
		"victim tenant's %d-byte frame was delivered to its reading phone, which stayed connected (round trip %s); attacker stalled phone %d of %d was closed 1011 with a notice to its binary (1 frame counted at the ceiling, queue now %.0f)",
		len(stalled), queueIsoFrame, q, queueIsoMax, fillTime.Round(time.Millisecond), headroom,
		queueIsoVictim, ms(rtt), shed+1, len(stalled), q1)
}

// closeNotices maps conn_id to close code for every close notice in seen.
func closeNotices(seen []envelope) map[string]int {
	out := map[string]int{}
	for _, e := range seen {
		if e.CloseCode != 0 && len(e.Frame) == 0 {
			if _, dup := out[e.ConnID]; !dup {
				out[e.ConnID] = e.CloseCode
			}
		}
	}
	return out
}

// writeRaw writes one message on s's binary.
func writeRaw(ctx context.Context, s *session, msg []byte) error {
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return s.Bin.Write(wctx, websocket.MessageText, msg)
}

// runQueueShedUntilFits is the shed-until-it-fits phase: stallers that each
// free too little, and a victim frame that needs several of them shed.
func runQueueShedUntilFits(ctx context.Context, t *Target) Result {
	tgt, p, stop, err := dedicated(ctx, t, "--phone-queue-bytes", fmt.Sprint(queueFitsMax), "--max-queued-bytes", fmt.Sprint(queueFitsMax),
		"--max-message-bytes", fmt.Sprint(queueFitsMaxMsg), "--socket-send-buffer", fmt.Sprint(queueSocketBuffer),
		"--ping-interval", "1m", "--pong-timeout", "1m", "--write-timeout", "1m")
	if err != nil {
		return Failf("shed until it fits: %v", err)
	}
	defer stop()
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return Failf("shed until it fits: %v", err)
	}
	att, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("shed until it fits: attacker: %v", err)
	}
	defer att.Close()
	syncPh, err := att.addPhone(nil)
	if err != nil {
		return Failf("shed until it fits: attacker sync phone: %v", err)
	}
	syncR := syncPh.StartReading()
	// settled returns relay_queued_bytes once the relay has handled every
	// envelope the attacker sent and its writers have blocked or finished.
	settled := func() (float64, error) {
		n := randHex(8)
		if err := att.send(syncPh.ConnID, map[string]string{"sync": n}); err != nil {
			return 0, err
		}
		for deadline := time.Now().Add(5 * time.Second); ; {
			msg := syncR.next(time.Until(deadline))
			if msg == nil {
				return 0, errors.New("the attacker's sync frame was not delivered")
			}
			if bytes.Contains(msg, []byte(n)) {
				break
			}
		}
		return m.stableValue(ctx, mQueuedBytes)
	}
	frame := `{"pad":"` + strings.Repeat("S", queueFitsFrame-10) + `"}`

	// Fill: stall phones one at a time, each sent one frame at a time until
	// exactly one is stuck mid-write (the gauge grows by that frame's
	// charge). Never more than one frame in flight: a burst would queue
	// several at once and could cross the ceiling before the victim does.
	var stalled []*phone
	q, cost := 0.0, 0.0
	fillStart := time.Now()
	for {
		if cost > 0 && queueFitsMax-q < cost {
			break // another stuck frame would cross the ceiling
		}
		if len(stalled) == 16 {
			return Failf("shed until it fits: 16 stallers and the queue still holds only %.0f of %d", q, queueFitsMax)
		}
		ph, err := att.addPhoneVia(phoneHeaders(att.ServerID, "tok-"+randHex(8)), smallBufClient(tgt))
		if err != nil {
			return Failf("shed until it fits: attacker phone %d: %v", len(stalled)+1, err)
		}
		stalled = append(stalled, ph)
		env := []byte(`{"conn_id":"` + ph.ConnID + `","frame":` + frame + `}`)
		sent := 0
		for {
			if err := writeRaw(ctx, att, env); err != nil {
				return Failf("shed until it fits: attacker write: %v", err)
			}
			sent++
			now, err := settled()
			if err != nil {
				return Failf("shed until it fits: fill: %v", err)
			}
			if d := now - q; d > 0 {
				if cost == 0 {
					cost = d
				}
				if d != cost {
					return Failf("shed until it fits: stalled phone %d holds %.0f bytes, want one frame's %.0f: the fill is miscalibrated", len(stalled), d, cost)
				}
				q = now
				break
			}
			if sent > 64 {
				return Failf("shed until it fits: 64 frames to a stalled phone never filled its kernel buffers")
			}
		}
	}
	fillTime := time.Since(fillStart)
	headroom := queueFitsMax - q
	vcost := cost - queueFitsFrame + queueFitsVictim // the victim frame's charge
	need := int(math.Ceil((vcost - headroom) / cost))
	if need < 2 || need >= len(stalled) {
		return Failf("shed until it fits: the victim's frame needs %d of %d stallers shed (headroom %.0f, frame charge %.0f each): the phase proves nothing", need, len(stalled), headroom, cost)
	}
	drops0, err := m.value(ctx, mDropCeiling)
	if err != nil {
		return Failf("shed until it fits: metrics: %v", err)
	}
	att.drain()
	if drops0 != 0 || len(closeNotices(att.Seen)) != 0 {
		return Failf("shed until it fits: the fill itself crossed the ceiling (%s = %v, notices %v)", mDropCeiling, drops0, closeNotices(att.Seen))
	}

	vic, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("shed until it fits: victim: %v", err)
	}
	defer vic.Close()
	vph, err := vic.addPhone(nil)
	if err != nil {
		return Failf("shed until it fits: victim phone: %v", err)
	}
	vR := vph.StartReading()
	n := randHex(8)
	vf := `{"v":"` + n + `","pad":"` + strings.Repeat("v", queueFitsVictim-len(n)-17) + `"}`
	if err := writeRaw(ctx, vic, []byte(`{"conn_id":"`+vph.ConnID+`","frame":`+vf+`}`)); err != nil {
		return Failf("shed until it fits: victim binary write: %v", err)
	}
	got := false
	for deadline := time.Now().Add(5 * time.Second); !got && time.Now().Before(deadline); {
		msg := vR.next(time.Until(deadline))
		if msg == nil {
			break
		}
		got = bytes.Contains(msg, []byte(n)) && len(msg) == len(vf)
	}
	// The shed phones' notices follow their close handshakes' timeout.
	pollUntil(ctx, 5*time.Second, 20*time.Millisecond, func() bool { att.drain(); return len(closeNotices(att.Seen)) >= need })
	time.Sleep(200 * time.Millisecond) // room for one shed too many to show
	att.drain()
	vic.drain()
	attClosed := closeNotices(att.Seen)
	if !got {
		return Failf("shed until it fits broken: the victim's reading phone never got its %d-byte frame, which needed %d of %d stallers (one %.0f-byte frame each) shed; the victim phone was closed %d, its binary got notices %v; attacker phones shed: %d",
			len(vf), need, len(stalled), cost, vR.closeCode(2*time.Second), closeNotices(vic.Seen), len(attClosed))
	}
	if vn := closeNotices(vic.Seen); len(vn) != 0 {
		return Failf("shed until it fits broken: the victim's binary got close notices %v", vn)
	}
	if code := vR.closeCode(100 * time.Millisecond); code != 0 {
		return Failf("shed until it fits broken: the victim's phone was closed %d after its frame", code)
	}
	if _, err := vic.roundTrip(vph, 3*time.Second); err != nil {
		return Failf("shed until it fits broken: the victim's pair stopped relaying: %v", err)
	}
	stalledIDs := map[string]bool{}
	for _, ph := range stalled {
		stalledIDs[ph.ConnID] = true
	}
	for id, code := range attClosed {
		if !stalledIDs[id] || code != 1011 {
			return Failf("shed until it fits: phone %s closed %d, want only stalled attacker phones closed 1011", id, code)
		}
	}
	if len(attClosed) != need {
		return Failf("shed until it fits: %d attacker phones shed, want exactly the %d the victim's frame needed (headroom %.0f, frame charge %.0f each)", len(attClosed), need, headroom, cost)
	}
	drops1, err := m.value(ctx, mDropCeiling)
	if err != nil {
		return Failf("shed until it fits: metrics: %v", err)
	}
	if int(drops1-drops0) != need {
		return Failf("shed until it fits: %s moved by %v, want %d", mDropCeiling, drops1-drops0, need)
	}
	if q1, err := m.value(ctx, mQueuedBytes); err != nil || q1 > queueFitsMax {
		return Failf("shed until it fits: relay_queued_bytes %v (err %v) over the ceiling %d", q1, err, queueFitsMax)
	}
	return Passf("%d stallers each holding one %.0f-byte frame mid-write left %.0f of %d bytes (fill %v); the victim's %d-byte frame needed %d shed: exactly %d attacker phones were closed 1011 and the victim's phone got its frame and stayed",
		len(stalled), cost, headroom, queueFitsMax, fillTime.Round(time.Millisecond), len(vf), need, len(attClosed))
}
