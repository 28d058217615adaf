package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

// A property of the running relay over real WebSockets on loopback: random
// interleavings of several binaries (distinct server-ids) and their phones
// sending frames, closing, being closed by directives, and binaries
// addressing other tenants' conn_ids. Every frame is tagged with its sender,
// intended receiver and server-id, so receipt alone tells whether it went
// where it should. After the run, fences (a last frame on every live path)
// flush each FIFO before the tallies are compared:
//
//   - isolation: nothing reaches a phone or binary of another server-id;
//   - order and exactly-once: a phone that stays up receives exactly the
//     frames its binary sent it, in order; a binary receives exactly each of
//     its phones' frames, in order, then at most one close notice;
//   - a connection that goes away got a prefix of its frames, never a
//     duplicate or a reordering; a directive's frame arrives before its close;
//   - budget conservation: once every phone's queue has drained, and again
//     once every connection is gone, the relay-wide queue budget (and the
//     relay_queued_bytes gauge that reads it) is exactly zero.

// wsClient is a test peer that reads in the background and keeps what it got.
type wsClient struct {
	c    *websocket.Conn
	mu   sync.Mutex
	msgs []map[string]any
	raw  []string
	err  error // the read error that ended the connection
	done chan struct{}
}

func dialWS(ctx context.Context, url string, hdr http.Header) (*wsClient, error) {
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		return nil, err
	}
	cl := &wsClient{c: c, done: make(chan struct{})}
	go func() {
		defer close(cl.done)
		for {
			_, b, err := c.Read(context.Background())
			cl.mu.Lock()
			if err != nil {
				cl.err = err
				cl.mu.Unlock()
				return
			}
			var m map[string]any
			_ = json.Unmarshal(b, &m) // nil for non-JSON: the checks report it
			cl.msgs = append(cl.msgs, m)
			cl.raw = append(cl.raw, string(b))
			cl.mu.Unlock()
		}
	}()
	return cl, nil
}

func (cl *wsClient) snapshot() ([]map[string]any, []string) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return slices.Clone(cl.msgs), slices.Clone(cl.raw)
}

func (cl *wsClient) send(t *rapid.T, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cl.c.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatalf("write %s: %v", b, err)
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *rapid.T, cond func() bool, format string, args ...any) {
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: "+format, args...)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

type phoneState int

const (
	phoneUp       phoneState = iota
	phoneClosed              // closed by the phone itself (1000)
	phoneDirected            // closed by its binary's directive
)

type propPhone struct {
	name   string
	bin    *propBinary
	cl     *wsClient
	connID string
	state  phoneState
	code   int   // the directive's close code
	got    []int // seqs the binary sent while the phone was up, in order
	sent   []int // seqs the phone sent while its binary was up, in order
}

type propBinary struct {
	sid    string
	cl     *wsClient
	up     bool
	phones []*propPhone
}

type relayWorld struct {
	t        *rapid.T
	url      string
	binaries []*propBinary
	phones   []*propPhone
	seq      int
}

func (w *relayWorld) nextSeq() int { w.seq++; return w.seq }

func (w *relayWorld) dial(path string, hdr http.Header) *wsClient {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cl, err := dialWS(ctx, w.url+path, hdr)
	if err != nil {
		w.t.Fatalf("dial %s: %v", path, err)
	}
	return cl
}

// join connects a phone and learns its conn_id from its hello's envelope.
func (w *relayWorld) join(b *propBinary) {
	p := &propPhone{name: fmt.Sprintf("phone-%d", len(w.phones)), bin: b}
	p.cl = w.dial("/v1/client", phoneHeaders(b.sid))
	p.cl.send(w.t, map[string]any{"hello": p.name})
	waitFor(w.t, func() bool {
		msgs, _ := b.cl.snapshot()
		for _, m := range msgs {
			if f, ok := m["frame"].(map[string]any); ok && f["hello"] == p.name {
				p.connID, _ = m["conn_id"].(string)
				return true
			}
		}
		return false
	}, "hello of %s never reached its binary", p.name)
	b.phones = append(b.phones, p)
	w.phones = append(w.phones, p)
}

func (w *relayWorld) live(filter func(*propPhone) bool) []*propPhone {
	var out []*propPhone
	for _, p := range w.phones {
		if filter(p) {
			out = append(out, p)
		}
	}
	return out
}

func (w *relayWorld) pick(t *rapid.T, ps []*propPhone, label string) *propPhone {
	if len(ps) == 0 {
		return nil
	}
	return ps[rapid.IntRange(0, len(ps)-1).Draw(t, label)]
}

func toPhone(p *propPhone, seq int) map[string]any {
	return map[string]any{"conn_id": p.connID, "frame": map[string]any{"to": p.name, "sid": p.bin.sid, "seq": seq}}
}

func (w *relayWorld) step(t *rapid.T) {
	up := func(p *propPhone) bool { return p.state == phoneUp }
	bound := func(p *propPhone) bool { return p.state == phoneUp && p.bin.up }
	switch rapid.SampledFrom([]string{"toPhone", "toPhone", "toBinary", "toBinary", "cross", "phoneClose", "directive", "binaryClose", "join"}).Draw(t, "action") {
	case "toPhone": // binary -> one of its phones
		if p := w.pick(t, w.live(bound), "phone"); p != nil {
			s := w.nextSeq()
			p.bin.cl.send(t, toPhone(p, s))
			p.got = append(p.got, s)
		}
	case "toBinary": // phone -> its binary; dropped (not recorded) in grace
		if p := w.pick(t, w.live(up), "phone"); p != nil {
			s := w.nextSeq()
			p.cl.send(t, map[string]any{"from": p.name, "seq": s})
			if p.bin.up {
				p.sent = append(p.sent, s)
			}
		}
	case "cross": // a binary addresses another tenant's phone: never delivered
		var bins []*propBinary
		for _, b := range w.binaries {
			if b.up {
				bins = append(bins, b)
			}
		}
		if len(bins) == 0 {
			return
		}
		b := bins[rapid.IntRange(0, len(bins)-1).Draw(t, "binary")]
		victim := w.pick(t, w.live(func(p *propPhone) bool { return p.bin != b }), "victim")
		if victim != nil {
			b.cl.send(t, map[string]any{"conn_id": victim.connID, "frame": map[string]any{"to": victim.name, "sid": b.sid, "cross": true}})
		}
	case "phoneClose":
		if p := w.pick(t, w.live(up), "phone"); p != nil {
			p.state = phoneClosed
			_ = p.cl.c.Close(websocket.StatusNormalClosure, "")
		}
	case "directive": // a frame then a close, or a close alone (no "frame", or "frame":null)
		if p := w.pick(t, w.live(bound), "phone"); p != nil {
			p.code = rapid.SampledFrom([]int{1000, 1001, 4000, 4401, 4421, 4426, 4999}).Draw(t, "code")
			var env map[string]any
			switch rapid.SampledFrom([]string{"frame", "absent", "null"}).Draw(t, "directiveFrame") {
			case "frame":
				s := w.nextSeq()
				env = toPhone(p, s)
				p.got = append(p.got, s)
			case "absent":
				env = map[string]any{"conn_id": p.connID}
			case "null":
				env = map[string]any{"conn_id": p.connID, "frame": nil}
			}
			env["close_code"] = p.code
			p.bin.cl.send(t, env)
			p.state = phoneDirected
		}
	case "binaryClose": // the slot enters grace; its phones stay up
		var bins []*propBinary
		for _, b := range w.binaries {
			if b.up {
				bins = append(bins, b)
			}
		}
		if len(bins) > 1 { // keep one binary to route through
			b := bins[rapid.IntRange(0, len(bins)-1).Draw(t, "binary")]
			b.up = false
			_ = b.cl.c.Close(websocket.StatusNormalClosure, "")
		}
	case "join":
		b := w.binaries[rapid.IntRange(0, len(w.binaries)-1).Draw(t, "binary")]
		if b.up && len(b.phones) < 4 {
			w.join(b)
		}
	}
}

// seqs extracts the non-fence seq numbers of frames that carry key.
func seqs(msgs []map[string]any, key, name string) []int {
	var out []int
	for _, m := range msgs {
		if m != nil && m[key] == name && m["fence"] == nil {
			if s, ok := m["seq"].(float64); ok {
				out = append(out, int(s))
			}
		}
	}
	return out
}

func isPrefix(a, b []int) bool { return len(a) <= len(b) && slices.Equal(a, b[:len(a)]) }

func (w *relayWorld) settleAndCheck(t *rapid.T) {
	// Fences: one more frame on every path that is still open both ways.
	for _, p := range w.live(func(p *propPhone) bool { return p.state == phoneUp && p.bin.up }) {
		p.bin.cl.send(t, map[string]any{"conn_id": p.connID, "frame": map[string]any{"to": p.name, "sid": p.bin.sid, "fence": true}})
		p.cl.send(t, map[string]any{"from": p.name, "fence": true})
	}
	for _, p := range w.phones {
		p := p
		switch {
		case p.state == phoneUp && p.bin.up:
			waitFor(t, func() bool {
				msgs, _ := p.cl.snapshot()
				return slices.ContainsFunc(msgs, func(m map[string]any) bool { return m != nil && m["fence"] == true })
			}, "fence never reached %s", p.name)
			waitFor(t, func() bool {
				msgs, _ := p.bin.cl.snapshot()
				return slices.ContainsFunc(msgs, func(m map[string]any) bool {
					f, _ := m["frame"].(map[string]any)
					return m["conn_id"] == p.connID && f != nil && f["fence"] == true
				})
			}, "fence of %s never reached its binary", p.name)
		case p.state == phoneUp: // its binary is gone: what it sent earlier must still arrive
			waitFor(t, func() bool {
				msgs, _ := p.cl.snapshot()
				return len(seqs(msgs, "to", p.name)) >= len(p.got)
			}, "%s never got its frames", p.name)
		case p.state == phoneDirected:
			select {
			case <-p.cl.done:
			case <-time.After(5 * time.Second):
				t.Fatalf("%s still open after a close directive", p.name)
			}
		case p.state == phoneClosed && p.bin.up:
			waitFor(t, func() bool { return len(w.notices(p)) > 0 }, "no close notice for %s", p.name)
		}
	}

	for _, p := range w.phones {
		msgs, raw := p.cl.snapshot()
		for i, m := range msgs {
			if m == nil || m["to"] != p.name || m["sid"] != p.bin.sid || m["cross"] != nil {
				t.Fatalf("%s (server %s) received a frame meant for someone else: %s", p.name, p.bin.sid, raw[i])
			}
		}
		got := seqs(msgs, "to", p.name)
		switch p.state {
		case phoneUp, phoneDirected:
			if !slices.Equal(got, p.got) {
				t.Fatalf("%s received %v, its binary sent %v", p.name, got, p.got)
			}
		case phoneClosed:
			if !isPrefix(got, p.got) {
				t.Fatalf("%s (closed) received %v, not a prefix of %v", p.name, got, p.got)
			}
		}
		if p.state == phoneDirected {
			p.cl.mu.Lock()
			code := websocket.CloseStatus(p.cl.err)
			p.cl.mu.Unlock()
			if int(code) != p.code {
				t.Fatalf("%s closed with %d, directive said %d", p.name, code, p.code)
			}
		}
	}

	for _, b := range w.binaries {
		msgs, raw := b.cl.snapshot()
		mine := map[string]*propPhone{}
		for _, p := range b.phones {
			mine[p.connID] = p
		}
		for i, m := range msgs {
			connID, _ := m["conn_id"].(string)
			p := mine[connID]
			if p == nil {
				t.Fatalf("binary %s received an envelope for a conn_id it does not own: %s", b.sid, raw[i])
			}
			if f, ok := m["frame"].(map[string]any); ok && f["from"] != p.name && f["hello"] != p.name {
				t.Fatalf("binary %s: envelope for %s carries %s's frame: %s", b.sid, p.name, f["from"], raw[i])
			}
		}
		if !b.up {
			continue // it read until it closed; isolation is all there is to check
		}
		for _, p := range b.phones {
			var frames []map[string]any
			for _, m := range msgs {
				if m["conn_id"] == p.connID {
					if f, ok := m["frame"].(map[string]any); ok {
						frames = append(frames, f)
					}
				}
			}
			got := seqs(frames, "from", p.name)
			notices := w.notices(p)
			switch p.state {
			case phoneUp, phoneClosed:
				if !slices.Equal(got, p.sent) {
					t.Fatalf("binary %s received %v from %s, which sent %v", b.sid, got, p.name, p.sent)
				}
			case phoneDirected: // the phone may have been cut off mid-send
				if !isPrefix(got, p.sent) {
					t.Fatalf("binary %s received %v from directed %s, not a prefix of %v", b.sid, got, p.name, p.sent)
				}
			}
			want := 0
			if p.state == phoneClosed {
				want = 1
			}
			if len(notices) != want {
				t.Fatalf("binary %s got %d close notices for %s (state %d), want %d", b.sid, len(notices), p.name, p.state, want)
			}
			if want == 1 && notices[0] != 1000 {
				t.Fatalf("close notice for %s carries %d, want 1000", p.name, notices[0])
			}
		}
	}
}

// notices returns the close codes p's binary was told about, in order.
func (w *relayWorld) notices(p *propPhone) []int {
	msgs, _ := p.bin.cl.snapshot()
	var out []int
	for _, m := range msgs {
		if m["conn_id"] == p.connID && m["frame"] == nil {
			if c, ok := m["close_code"].(float64); ok {
				out = append(out, int(c))
			}
		}
	}
	return out
}

// Each sequence costs a relay, an HTTP server and up to a dozen WebSocket
// handshakes: about 40–150 ms under -race on two cores. 15 sequences keep
// the test near 2–3 s in CI while still mixing every action several times
// per run; `-rapid.checks=500` (or RAPID_CHECKS) explores further.
func TestRouting_RandomInterleavings_IsolatedOrderedExactlyOnce(t *testing.T) {
	checkN(t, 50, func(t *rapid.T) {
		rl, err := New(fastOptions(), Deps{})
		if err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/v1/server", rl.ServeBinary)
		mux.HandleFunc("/v1/client", rl.ServePhone)
		srv := httptest.NewServer(mux)
		w := &relayWorld{t: t, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
		defer func() {
			for _, p := range w.phones {
				_ = p.cl.c.CloseNow()
			}
			for _, b := range w.binaries {
				_ = b.cl.c.CloseNow()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = rl.Shutdown(ctx)
			srv.Close()
		}()

		nb := rapid.IntRange(1, 3).Draw(t, "binaries")
		for i := range nb {
			b := &propBinary{sid: fmt.Sprintf("prop-server-%d", i), up: true}
			b.cl = w.dial("/v1/server", binaryHeaders(b.sid))
			w.binaries = append(w.binaries, b)
			waitFor(t, func() bool { return rl.Stats().Binaries == i+1 }, "binary %s never claimed", b.sid)
		}
		for _, b := range w.binaries {
			for range rapid.IntRange(1, 2).Draw(t, "phones") {
				w.join(b)
			}
		}
		for range rapid.IntRange(1, 30).Draw(t, "steps") {
			w.step(t)
		}
		w.settleAndCheck(t)
		// Every live phone got its fence and every directed phone is closed:
		// no phone has queued work, so nothing may still be charged.
		waitFor(t, func() bool { return rl.QueuedBytes() == 0 }, "no phone has queued work, yet %d bytes stay charged", rl.QueuedBytes())
		for _, p := range w.phones {
			_ = p.cl.c.CloseNow()
		}
		waitFor(t, func() bool { return rl.Stats().Phones == 0 }, "phones never left")
		if q := rl.QueuedBytes(); q != 0 {
			t.Fatalf("every phone is gone, yet %d bytes stay charged to the relay-wide budget", q)
		}
	})
}

// Found by the property above (about one sequence in a thousand): a phone
// that closes 1000 while the relay is writing to it must be reported to its
// binary with its own code. The writer's Write fails with net.ErrClosed once
// the close handshake has begun, and used to claim the close as a 1011
// "write failed" before the reader recorded the phone's 1000.
func TestCloseNotice_PhoneClosesDuringWrites_KeepsOwnCode(t *testing.T) {
	h := newHarness(t, nil)
	bin := h.dialBinary(sid)
	for i := range 60 {
		p, id := h.dialPhone(sid, bin)
		sent := make(chan struct{})
		go func() { // keep the relay's writer for this phone busy; 200 small
			defer close(sent) // frames stay far below the phone's backlog cap
			for j := range 200 {
				msg := fmt.Sprintf(`{"conn_id":%q,"frame":{"i":%d}}`, id, j)
				if bin.c.Write(context.Background(), websocket.MessageText, []byte(msg)) != nil {
					return
				}
			}
		}()
		<-p.msgs
		_ = p.c.Close(websocket.StatusNormalClosure, "")
		<-sent
		for {
			env := bin.envelope()
			if env.ConnID == id && env.Frame == nil {
				if env.CloseCode != 1000 {
					t.Fatalf("round %d: close notice carries %d, phone closed 1000", i, env.CloseCode)
				}
				break
			}
		}
	}
	require.Zero(t, testutil.ToFloat64(h.rl.m.FramesDropped.WithLabelValues(string(DropPhoneBacklog))))
}
