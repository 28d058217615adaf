package attacks

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Shared client helpers. Every scenario reaches the relay only through
// these: real WebSocket clients (github.com/coder/websocket), raw TCP for
// requests a well-behaved client cannot send, and /healthz.
//
// A coder/websocket Read whose context ends closes the connection, so reads
// run in long-lived goroutines (reader, one per connection) and timeouts are
// selects on their channels.

func sprintf(format string, a ...any) string { return fmt.Sprintf(format, a...) }

// Header names of the protocol (§3).
const (
	hdrServerID   = "X-Pyrycode-Server"
	hdrVersion    = "X-Pyrycode-Version"
	hdrToken      = "X-Pyrycode-Token"
	hdrDeviceName = "X-Pyrycode-Device-Name"
)

// randHex returns n random bytes as hex.
func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newServerID mints a UUIDv4-shaped server-id.
func newServerID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// canary returns a unique marker that must never come back from the relay
// (responses) or appear in its log, metrics or bodies. Search for it with
// leakOf, which also finds any 8-character piece of its random part.
func canary(label string) string { return "pyrycanary" + label + randHex(8) }

// pieceLen is the length of the canary pieces leakOf looks for: a relay
// that logs half a token, or its first 8 characters, leaks it all the
// same, and 8 random hex digits (32 bits) never turn up by chance.
const pieceLen = 8

// randomTailRE is a secret's random part: its trailing hex digits.
var randomTailRE = regexp.MustCompile(`[0-9a-f]+$`)

// leakOf reports where hay carries a secret, whole or any pieceLen-long
// piece of its random part (the fixed prefix of a canary, or a token's
// "ghp_", is no secret). It returns "" when hay carries none of it.
func leakOf(hay, secret string) string {
	if strings.Contains(hay, secret) {
		return "the whole value"
	}
	tail := randomTailRE.FindString(secret)
	for i := 0; i+pieceLen <= len(tail); i++ {
		if p := tail[i : i+pieceLen]; strings.Contains(hay, p) {
			return fmt.Sprintf("its piece %q (characters %d-%d of %d)", p, len(secret)-len(tail)+i+1, len(secret)-len(tail)+i+pieceLen, len(secret))
		}
	}
	return ""
}

// binaryHeaders are a valid /v1/server header set.
func binaryHeaders(serverID string) http.Header {
	h := http.Header{}
	h.Set(hdrServerID, serverID)
	h.Set(hdrVersion, "attacks-0")
	h.Set("User-Agent", "relay-attacks/1")
	return h
}

// phoneHeaders are a valid /v1/client header set.
func phoneHeaders(serverID, token string) http.Header {
	h := http.Header{}
	h.Set(hdrServerID, serverID)
	h.Set(hdrToken, token)
	h.Set("User-Agent", "relay-attacks/1")
	return h
}

// dial opens a WebSocket with exactly the given headers. The read limit is
// lifted: the attacker, not the client library, decides what is too big.
//
// A 429 or 503 from the relay's admission control is honoured: the dial
// waits Retry-After and tries again (see throttled), so a remote run from
// one address stays within the deployed rate limits instead of failing.
func (t *Target) dial(ctx context.Context, path string, h http.Header) (*websocket.Conn, *http.Response, error) {
	var waited time.Duration
	for {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, resp, err := websocket.Dial(dctx, t.wsURL(path), &websocket.DialOptions{HTTPHeader: h, HTTPClient: t.wsHTTPClient(), Host: t.vhost()})
		cancel()
		if err == nil {
			c.SetReadLimit(-1)
			return c, resp, nil
		}
		if resp == nil || !throttled(ctx, resp, &waited) {
			return nil, resp, err
		}
	}
}

// maxThrottleWait bounds how long one request waits on Retry-After in all.
const maxThrottleWait = 30 * time.Second

// throttled reports whether resp is an admission refusal (429, 503) worth
// retrying, after waiting it out (see waitRetryAfter).
func throttled(ctx context.Context, resp *http.Response, waited *time.Duration) bool {
	if resp == nil {
		return false
	}
	return waitRetryAfter(ctx, resp.StatusCode, resp.Header.Get("Retry-After"), waited)
}

// waitRetryAfter reports whether status is an admission refusal (429, 503)
// worth retrying, after sleeping retryAfter (1 s when absent or odd, at
// most 10 s). It gives up once *waited would exceed maxThrottleWait.
func waitRetryAfter(ctx context.Context, status int, retryAfter string, waited *time.Duration) bool {
	if status != http.StatusTooManyRequests && status != http.StatusServiceUnavailable {
		return false
	}
	d := time.Second
	if n, err := strconv.Atoi(strings.TrimSpace(retryAfter)); err == nil && n > 0 {
		d = min(time.Duration(n)*time.Second, 10*time.Second)
	}
	if *waited+d > maxThrottleWait {
		return false
	}
	*waited += d
	select {
	case <-time.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

// envelope is the binary leg's routing envelope (protocol §5).
type envelope struct {
	ConnID    string          `json:"conn_id,omitempty"`
	Frame     json.RawMessage `json:"frame,omitempty"`
	CloseCode int             `json:"close_code,omitempty"`
	Token     *string         `json:"token,omitempty"`
	Raw       []byte          `json:"-"`
}

// reader drains one WebSocket in a goroutine (which also answers pings)
// and hands messages to a channel.
type reader struct {
	msgs   chan []byte
	done   chan struct{}
	mu     sync.Mutex
	err    error
	closed time.Time
}

func startReader(ctx context.Context, c *websocket.Conn) *reader {
	r := &reader{msgs: make(chan []byte, 8192), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			_, data, err := c.Read(ctx)
			if err != nil {
				r.mu.Lock()
				r.err, r.closed = err, time.Now()
				r.mu.Unlock()
				return
			}
			select {
			case r.msgs <- data:
			default: // an attacker's reader never blocks the connection; overflow is dropped
			}
		}
	}()
	return r
}

// next returns the next message, or nil when d passes or the connection ends.
func (r *reader) next(d time.Duration) []byte {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case m := <-r.msgs:
		return m
	case <-timer.C:
		return nil
	case <-r.done:
		select {
		case m := <-r.msgs:
			return m
		default:
			return nil
		}
	}
}

// closeCode waits up to d for the connection to end and returns its close
// status (-1: ended without a close frame; 0: still open). closeCode(0)
// asks without waiting.
func (r *reader) closeCode(d time.Duration) int {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-r.done:
	case <-timer.C:
		select { // both may be ready (d == 0): an ended connection wins
		case <-r.done:
		default:
			return 0
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return int(websocket.CloseStatus(r.err))
}

// waitEnvelope reads binary-leg envelopes until match returns true or d
// passes; every envelope read is appended to *seen.
func (r *reader) waitEnvelope(d time.Duration, seen *[]envelope, match func(envelope) bool) (envelope, bool) {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return envelope{}, false
		}
		m := r.next(left)
		if m == nil {
			return envelope{}, false
		}
		var e envelope
		_ = json.Unmarshal(m, &e)
		e.Raw = m
		if seen != nil {
			*seen = append(*seen, e)
		}
		if match(e) {
			return e, true
		}
	}
}

// session is one binary and its phones on one server-id.
type session struct {
	t        *Target
	ctx      context.Context
	ServerID string
	Bin      *websocket.Conn
	BinR     *reader
	Seen     []envelope // everything the binary received
	Phones   []*phone
}

type phone struct {
	C      *websocket.Conn
	ConnID string
	R      *reader // nil until StartReading
	ctx    context.Context
}

func (p *phone) StartReading() *reader {
	if p.R == nil {
		p.R = startReader(p.ctx, p.C)
	}
	return p.R
}

// newSession claims a fresh server-id. The binary's reader runs at once so
// it answers the relay's pings.
func newSession(ctx context.Context, t *Target) (*session, error) {
	id := newServerID()
	c, _, err := t.dial(ctx, "/v1/server", binaryHeaders(id))
	if err != nil {
		return nil, fmt.Errorf("binary dial: %w", err)
	}
	return &session{t: t, ctx: ctx, ServerID: id, Bin: c, BinR: startReader(ctx, c)}, nil
}

// Close closes every connection of the session.
func (s *session) Close() {
	for _, p := range s.Phones {
		_ = p.C.CloseNow()
	}
	_ = s.Bin.CloseNow()
}

// addPhone joins a phone and learns its conn_id by sending a hello frame
// through to the binary. A phone that arrives before the claim is
// registered is refused 4404; it retries a few times.
func (s *session) addPhone(h http.Header) (*phone, error) {
	if h == nil {
		h = phoneHeaders(s.ServerID, "tok-"+randHex(8))
	}
	var lastErr error
	for attempt := 0; attempt < 6; attempt++ {
		c, _, err := s.t.dial(s.ctx, "/v1/client", h)
		if err != nil {
			lastErr = err
			time.Sleep(100 * time.Millisecond)
			continue
		}
		nonce := randHex(8)
		if err := writeJSON(s.ctx, c, map[string]string{"hello": nonce}); err != nil {
			lastErr = err
			_ = c.CloseNow()
			time.Sleep(100 * time.Millisecond)
			continue
		}
		e, ok := s.BinR.waitEnvelope(2*time.Second, &s.Seen, func(e envelope) bool { return bytes.Contains(e.Frame, []byte(nonce)) })
		if ok && e.ConnID != "" {
			p := &phone{C: c, ConnID: e.ConnID, ctx: s.ctx}
			s.Phones = append(s.Phones, p)
			return p, nil
		}
		lastErr = errors.New("hello frame not delivered to the binary")
		_ = c.CloseNow()
	}
	return nil, fmt.Errorf("phone join: %w", lastErr)
}

// drain moves every envelope already received into Seen, without waiting.
func (s *session) drain() {
	for {
		select {
		case m := <-s.BinR.msgs:
			var e envelope
			_ = json.Unmarshal(m, &e)
			e.Raw = m
			s.Seen = append(s.Seen, e)
		default:
			return
		}
	}
}

// send addresses frame to a phone through the binary.
func (s *session) send(connID string, frame any) error {
	f, err := json.Marshal(frame)
	if err != nil {
		return err
	}
	return writeJSON(s.ctx, s.Bin, envelope{ConnID: connID, Frame: f})
}

// roundTrip proves the pair relays both ways within d.
func (s *session) roundTrip(p *phone, d time.Duration) (time.Duration, error) {
	start := time.Now()
	n := randHex(8)
	if err := writeJSON(s.ctx, p.C, map[string]string{"ping": n}); err != nil {
		return 0, fmt.Errorf("phone write: %w", err)
	}
	if _, ok := s.BinR.waitEnvelope(d, &s.Seen, func(e envelope) bool { return bytes.Contains(e.Frame, []byte(n)) }); !ok {
		return 0, errors.New("phone->binary frame not delivered")
	}
	if err := s.send(p.ConnID, map[string]string{"pong": n}); err != nil {
		return 0, fmt.Errorf("binary write: %w", err)
	}
	r := p.StartReading()
	for left := d - time.Since(start); left > 0; left = d - time.Since(start) {
		m := r.next(left)
		if m == nil {
			break
		}
		if bytes.Contains(m, []byte(n)) {
			return time.Since(start), nil
		}
	}
	return 0, errors.New("binary->phone frame not delivered")
}

func writeJSON(ctx context.Context, c *websocket.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return c.Write(wctx, websocket.MessageText, b)
}

// health is the /healthz body (protocol §2: counts only).
type health struct {
	Status   string `json:"status"`
	Binaries int    `json:"binaries"`
	Phones   int    `json:"phones"`
	Grace    int    `json:"grace"`
}

func (t *Target) healthz(ctx context.Context) (health, []byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, t.httpURL("/healthz"), nil)
	req.Host = t.vhost() // the relay's name, also when --target names its address
	resp, err := t.httpClient().Do(req)
	if err != nil {
		return health{}, nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
	if resp.StatusCode != http.StatusOK {
		return health{}, body, fmt.Errorf("healthz status %d", resp.StatusCode)
	}
	var h health
	if err := json.Unmarshal(body, &h); err != nil {
		return health{}, body, fmt.Errorf("healthz body not JSON: %w", err)
	}
	return h, body, nil
}

// pollUntil calls cond every interval until it is true or d passes.
func pollUntil(ctx context.Context, d, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(interval)
	}
}

// genericBody reports whether body is empty or a short fixed phrase (no
// path, stack or detail). The canary check is separate and stricter.
func genericBody(body []byte) bool {
	if len(body) == 0 {
		return true
	}
	if len(body) > 64 {
		return false
	}
	s := string(body)
	for _, bad := range []string{"/", "goroutine", ".go", "panic", "runtime", "websocket", "error:", "{"} {
		if strings.Contains(strings.ToLower(s), bad) {
			return false
		}
	}
	return true
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
