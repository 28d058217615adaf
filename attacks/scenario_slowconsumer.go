package attacks

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// Slow consumer: a phone that stops reading must not stall its binary or
// its siblings. Each phone has a bounded outbound queue
// (--phone-queue-bytes); when it is full the relay closes that phone with
// 1011 ("backlog full") and tells the binary, while frames to a sibling
// keep flowing.
//
// The close must be the backlog's, not the write timeout's (which also
// closes 1011): a queue 16x too large is otherwise caught only by luck of
// timing. Locally the relay's kernel send buffer is pinned small, the
// scenario sends no more than the queue plus every buffer on the way can
// hold (slowConsumerLocalBound), then requires the close within a few
// seconds (the write timeout is a minute) and the relay's own
// phone_backlog_full log event for that phone. As a positive control the
// close must not come before a full queue's worth was sent. Remotely the
// notice must arrive sooner after the first frame than the deployed
// --write-timeout (10 s): no write can have timed out by then.
const (
	slowConsumerQueueLocal = 64 * 1024
	slowConsumerFrame      = 16 * 1024
	slowConsumerSendBuffer = 16 * 1024 // --socket-send-buffer locally; Linux doubles it
	// slowConsumerLocalBound: the queue, twice the relay's kernel send
	// buffer (Linux doubles SO_SNDBUF), the attacker's 4 KiB receive
	// buffer and frames in flight, with one queue's worth of slack: a
	// queue 2x too large would still fail, a 16x one fails by far.
	slowConsumerLocalBound = 2*slowConsumerQueueLocal + 2*slowConsumerSendBuffer + 4*slowConsumerFrame
	slowConsumerMaxRemote  = 24 << 20 // 4 MiB default queue plus kernel buffers
	// slowConsumerLocalWait: after the last frame, the backlog close is
	// immediate; the relay's write timeout here is a minute.
	slowConsumerLocalWait = 3 * time.Second
	// slowConsumerNoticeWait: the notice follows the stalled socket's
	// close handshake, which waits --close-timeout for a peer that reads
	// nothing.
	slowConsumerNoticeWait = 10 * time.Second
	// slowConsumerRemoteWriteTimeout is the deployed --write-timeout: a
	// notice sooner than this after the first frame cannot be its work.
	slowConsumerRemoteWriteTimeout = 10 * time.Second
)

func slowConsumer() Scenario {
	return Scenario{
		ID:      "ATK-SLOW-CONSUMER",
		Title:   "A phone that stops reading is closed 1011 for its full backlog; its binary and a sibling phone keep flowing",
		Threats: []string{"TM-DOS-4"},
		Mode:    RemoteSafe,
		Bounds:  "1 binary, 2 phones; at most 24 MiB sent towards the stalled phone in 16 KiB frames",
		Run:     runSlowConsumer,
	}
}

func runSlowConsumer(ctx context.Context, t *Target) Result {
	maxBytes, wait := slowConsumerMaxRemote, slowConsumerRemoteWriteTimeout
	// A long heartbeat and write timeout keep either from closing the
	// stalled phone first (both would also use 1011 and prove nothing).
	tgt, proc, stop, err := dedicated(ctx, t, "--phone-queue-bytes", fmt.Sprint(slowConsumerQueueLocal), "--max-message-bytes", fmt.Sprint(slowConsumerQueueLocal/2),
		"--ping-interval", "1m", "--pong-timeout", "1m", "--write-timeout", "1m", "--socket-send-buffer", fmt.Sprint(slowConsumerSendBuffer))
	if err != nil {
		return Failf("%v", err)
	}
	defer stop()
	if t.Local != nil {
		maxBytes, wait = slowConsumerLocalBound, slowConsumerLocalWait
	}

	// The binary and the stalled phone get small kernel buffers so that
	// the relay's queue, not the attacker's kernel, absorbs the backlog.
	s, err := newSessionVia(ctx, tgt, smallBufClient(tgt))
	if err != nil {
		return Failf("setup: %v", err)
	}
	defer s.Close()
	h := phoneHeaders(s.ServerID, "tok-"+randHex(8))
	slow, err := s.addPhoneVia(h, smallBufClient(tgt))
	if err != nil {
		return Failf("setup: %v", err)
	}
	sib, err := s.addPhone(nil)
	if err != nil {
		return Failf("setup: %v", err)
	}
	sibR := sib.StartReading()

	pad := strings.Repeat("S", slowConsumerFrame)
	sent, sibSent, sibGot := 0, 0, 0
	var worstWrite, worstSib time.Duration
	first := time.Now()
	// Locally the relay's log says when the queue overflowed; remotely the
	// binary's close notice does (it comes after the stalled socket's
	// close handshake times out, --close-timeout).
	overflowed := func() bool {
		s.drain()
		if proc != nil {
			return backlogLogged(proc, slow.ConnID)
		}
		return noticeIn(s.Seen, slow.ConnID) != 0
	}
	sentAtClose := 0
	for sent < maxBytes && sentAtClose == 0 {
		w0 := time.Now()
		if err := s.send(slow.ConnID, map[string]string{"pad": pad}); err != nil {
			return Failf("binary write failed after %d bytes towards the stalled phone: %v", sent, err)
		}
		worstWrite = max(worstWrite, time.Since(w0))
		sent += slowConsumerFrame
		if (sent/slowConsumerFrame)%4 == 0 {
			// The sibling keeps receiving, promptly and in order.
			sibSent++
			t0 := time.Now()
			if err := s.send(sib.ConnID, map[string]int{"seq": sibSent}); err != nil {
				return Failf("binary write to sibling: %v", err)
			}
			m := sibR.next(3 * time.Second)
			if m == nil || !strings.Contains(string(m), fmt.Sprintf(`"seq":%d`, sibSent)) {
				return Failf("sibling phone stalled after %d bytes towards the stalled phone (frame %d: %q)", sent, sibSent, tail(string(m), 60))
			}
			sibGot++
			worstSib = max(worstSib, time.Since(t0))
		}
		if overflowed() {
			sentAtClose = sent
		}
	}
	if sentAtClose == 0 && pollUntil(ctx, max(0, wait-time.Since(first)), 20*time.Millisecond, overflowed) {
		sentAtClose = sent
	}
	took := time.Since(first)
	if sentAtClose == 0 {
		return Failf("phone backlog bound (outbox.push in internal/relay/outbox.go, --phone-queue-bytes): no backlog close %v after the first of %d KiB sent towards a stalled phone (local bound %d KiB: queue %d KiB + kernel buffers); the queue holds more than its cap",
			took.Round(10*time.Millisecond), sent/1024, slowConsumerLocalBound/1024, slowConsumerQueueLocal/1024)
	}
	e, ok := s.BinR.waitEnvelope(slowConsumerNoticeWait, &s.Seen, func(e envelope) bool { return e.ConnID == slow.ConnID && e.CloseCode != 0 })
	code := e.CloseCode
	if n := noticeIn(s.Seen, slow.ConnID); n != 0 {
		code, ok = n, true
	}
	if !ok {
		return Failf("the relay logged the stalled phone's backlog close, but its binary got no close notice within %v", slowConsumerNoticeWait)
	}
	if code != 1011 {
		return Failf("stalled phone closed with %d, want 1011 (backlog full)", code)
	}
	if worstWrite > 2*time.Second {
		return Failf("binary's writes stalled up to %v while the phone was slow", worstWrite)
	}
	if _, err := s.roundTrip(sib, 3*time.Second); err != nil {
		return Failf("sibling stopped relaying after the close: %v", err)
	}
	how := ""
	if proc != nil {
		if sentAtClose < slowConsumerQueueLocal {
			return Failf("stalled phone closed after only %d KiB sent, less than its %d KiB queue: not the configured cap at work", sentAtClose/1024, slowConsumerQueueLocal/1024)
		}
		how = fmt.Sprintf("relay logged phone_backlog_full for it within the %d KiB bound (queue %d KiB)", slowConsumerLocalBound/1024, slowConsumerQueueLocal/1024)
	} else {
		if took >= slowConsumerRemoteWriteTimeout {
			return Failf("stalled phone closed 1011 only %v after the first frame: the %v write timeout may explain it, so the phone backlog bound is unproven", took.Round(10*time.Millisecond), slowConsumerRemoteWriteTimeout)
		}
		how = fmt.Sprintf("notice %v after the first frame, before the %v write timeout could fire", took.Round(10*time.Millisecond), slowConsumerRemoteWriteTimeout)
	}
	return Passf("stalled phone closed 1011 for its backlog after %d KiB sent to it (%s); binary writes <= %v; sibling got %d/%d frames, worst %v",
		sentAtClose/1024, how, worstWrite.Round(time.Millisecond), sibGot, sibSent, worstSib.Round(time.Millisecond))
}

// backlogLogged reports whether p logged phone_backlog_full, reason
// phone_backlog_full, for connID.
func backlogLogged(p *Process, connID string) bool {
	for _, line := range p.Log() {
		var e struct {
			Event  string `json:"event"`
			ConnID string `json:"conn_id"`
			Reason string `json:"reason"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.Event == "phone_backlog_full" && e.ConnID == connID && e.Reason == "phone_backlog_full" {
			return true
		}
	}
	return false
}

func noticeIn(seen []envelope, connID string) int {
	for _, e := range seen {
		if e.ConnID == connID && e.CloseCode != 0 && len(e.Frame) == 0 {
			return e.CloseCode
		}
	}
	return 0
}

// smallBufClient dials with 4 KiB socket buffers.
func smallBufClient(t *Target) *http.Client {
	tr := &http.Transport{TLSClientConfig: t.tlsConfig(), Proxy: nil}
	d := &net.Dialer{Timeout: 10 * time.Second, Control: smallBufs}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}
	if tr.TLSClientConfig != nil {
		tr.ForceAttemptHTTP2 = false
	}
	return &http.Client{Transport: tr}
}

// newSessionVia is newSession with a custom HTTP client for the binary's dial.
func newSessionVia(ctx context.Context, t *Target, hc *http.Client) (*session, error) {
	s, err := newSession(ctx, t.withClient(hc))
	if s != nil {
		s.t = t
	}
	return s, err
}

// addPhoneVia is addPhone with a custom HTTP client for the dial.
func (s *session) addPhoneVia(h http.Header, hc *http.Client) (*phone, error) {
	saved := s.t
	s.t = saved.withClient(hc)
	defer func() { s.t = saved }()
	return s.addPhone(h)
}
