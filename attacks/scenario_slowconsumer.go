package attacks

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// Slow consumer: a phone that stops reading must not stall its binary or
// its siblings. Each phone has a bounded outbound queue
// (--phone-queue-bytes); when it is full the relay closes that phone with
// 1011 and tells the binary, while frames to a sibling keep flowing.
const (
	slowConsumerQueueLocal = 64 * 1024
	slowConsumerFrame      = 16 * 1024
	slowConsumerMaxLocal   = 16 << 20 // bytes sent towards the stalled phone at most, then wait for the notice
	slowConsumerMaxRemote  = 24 << 20 // 4 MiB default queue plus kernel buffers
	// slowConsumerNoticeWait allows for the relay's close of the stalled
	// phone: its close frame queues behind a blocked write (up to
	// --write-timeout) and the library waits for the peer's answer.
	slowConsumerNoticeWait = 20 * time.Second
)

func slowConsumer() Scenario {
	return Scenario{
		ID:      "ATK-SLOW-CONSUMER",
		Title:   "A phone that stops reading is closed 1011; its binary and a sibling phone keep flowing",
		Threats: []string{"TM-DOS-4"},
		Mode:    RemoteSafe,
		Bounds:  "1 binary, 2 phones; at most 24 MiB sent towards the stalled phone in 16 KiB frames",
		Run:     runSlowConsumer,
	}
}

func runSlowConsumer(ctx context.Context, t *Target) Result {
	maxBytes := slowConsumerMaxRemote
	// A long heartbeat keeps the heartbeat from closing the stalled phone
	// first (it would also use 1011 and prove nothing here).
	tgt, _, stop, err := dedicated(ctx, t, "--phone-queue-bytes", fmt.Sprint(slowConsumerQueueLocal), "--max-message-bytes", fmt.Sprint(slowConsumerQueueLocal/2), "--ping-interval", "1m", "--pong-timeout", "1m", "--write-timeout", "1m")
	if err != nil {
		return Failf("%v", err)
	}
	defer stop()
	if t.Local != nil {
		maxBytes = slowConsumerMaxLocal
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
	for sent < maxBytes {
		w0 := time.Now()
		if err := s.send(slow.ConnID, map[string]string{"pad": pad}); err != nil {
			return Failf("binary write failed after %d bytes towards the stalled phone: %v", sent, err)
		}
		if d := time.Since(w0); d > worstWrite {
			worstWrite = d
		}
		sent += slowConsumerFrame
		if (sent/slowConsumerFrame)%16 == 0 {
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
			if d := time.Since(t0); d > worstSib {
				worstSib = d
			}
		}
		s.drain()
		if code := noticeIn(s.Seen, slow.ConnID); code != 0 {
			if code != 1011 {
				return Failf("stalled phone closed with %d, want 1011", code)
			}
			if worstWrite > 2*time.Second {
				return Failf("binary's writes stalled up to %v while the phone was slow", worstWrite)
			}
			if _, err := s.roundTrip(sib, 3*time.Second); err != nil {
				return Failf("sibling stopped relaying after the close: %v", err)
			}
			return Passf("stalled phone closed 1011 after %d KiB sent to it; binary writes <= %v; sibling got %d/%d frames, worst %v",
				sent/1024, worstWrite.Round(time.Millisecond), sibGot, sibSent, worstSib.Round(time.Millisecond))
		}
	}
	t0 := time.Now()
	if e, ok := s.BinR.waitEnvelope(slowConsumerNoticeWait, &s.Seen, func(e envelope) bool { return e.ConnID == slow.ConnID && e.CloseCode != 0 }); ok {
		if e.CloseCode != 1011 {
			return Failf("stalled phone closed with %d, want 1011", e.CloseCode)
		}
		return Passf("stalled phone closed 1011 (notice %v after the last of %d KiB sent to it); sibling got %d/%d frames, worst %v",
			time.Since(t0).Round(10*time.Millisecond), sent/1024, sibGot, sibSent, worstSib.Round(time.Millisecond))
	}
	return Failf("stalled phone still open after %d KiB sent towards it (queue bound not enforced, or --phone-queue-bytes beyond this budget)", sent/1024)
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
