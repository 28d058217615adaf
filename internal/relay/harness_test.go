package relay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// harness runs the real routing core behind a real HTTP server on loopback.
type harness struct {
	t  *testing.T
	rl *Relay
	ws string // ws://host of the relay
	// client dials WebSockets (nil: http.DefaultClient); dial opens a raw
	// connection to addr. newMemHarness replaces both with in-memory pipes.
	client *http.Client
	dial   func() (net.Conn, error)
	addr   string
	// logs is the relay's JSON log (newMemHarness only).
	logs *logBuffer
}

// logBuffer is a goroutine-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fastOptions are protocol defaults shrunk so time-based behaviour shows up
// in milliseconds.
func fastOptions() Options {
	o := Defaults()
	o.PingInterval = time.Hour // heartbeat off unless a test turns it on
	o.PongTimeout = time.Second
	o.CloseTimeout = 200 * time.Millisecond
	o.GracePeriod = time.Hour
	o.ProbeTimeout = 300 * time.Millisecond
	o.MaxMessageBytes = 16 << 10
	o.PhoneQueueBytes = 64 << 10
	o.MaxQueuedBytes = 0
	o.SocketSendBuffer = 16 << 10 // stalled peers block after little kernel buffering
	return o
}

func newHarness(t *testing.T, mutate func(*Options)) *harness {
	t.Helper()
	return newHarnessDeps(t, mutate, Deps{})
}

// newHarnessDeps is newHarness with collaborators (a Waker, metrics).
func newHarnessDeps(t *testing.T, mutate func(*Options), d Deps) *harness {
	t.Helper()
	o := fastOptions()
	if mutate != nil {
		mutate(&o)
	}
	rl, err := New(o, d)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/server", rl.ServeBinary)
	mux.HandleFunc("/v1/client", rl.ServePhone)
	srv := httptest.NewServer(mux)
	addr := srv.Listener.Addr().String()
	h := &harness{t: t, rl: rl, ws: "ws://" + addr, addr: addr,
		dial: func() (net.Conn, error) { return net.Dial("tcp", addr) }}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rl.Shutdown(ctx)
		srv.Close()
	})
	return h
}

// claims counts successful binary claims (takeovers included).
func (h *harness) claims() int {
	return int(testutil.ToFloat64(h.rl.m.Upgrades.WithLabelValues("binary")))
}

// rawUpgrade performs a WebSocket handshake by hand and returns the socket,
// for tests that must send what no well-behaved client library would.
func (h *harness) rawUpgrade(path string, hdr http.Header) net.Conn {
	t, addr := h.t, h.addr
	t.Helper()
	c, err := h.dial()
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", path, addr)
	req.WriteString("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
	for k, vs := range hdr {
		for _, v := range vs {
			fmt.Fprintf(&req, "%s: %s\r\n", k, v)
		}
	}
	req.WriteString("\r\n")
	_, err = c.Write([]byte(req.String()))
	require.NoError(t, err)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	return c
}

// maskedFrameHeader is a client frame header (RFC 6455 §5.2) with a zero
// mask key, so the payload bytes that follow go on the wire as they are.
func maskedFrameHeader(opcode byte, fin bool, length int) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	h := []byte{b0}
	switch {
	case length < 126:
		h = append(h, 0x80|byte(length))
	case length < 1<<16:
		h = append(h, 0x80|126, byte(length>>8), byte(length))
	default:
		h = append(h, 0x80|127)
		for i := 7; i >= 0; i-- {
			h = append(h, byte(length>>(8*i)))
		}
	}
	return append(h, 0, 0, 0, 0)
}

func binaryHeaders(id string) http.Header {
	return http.Header{HeaderServerID: {id}, HeaderVersion: {"0.9.0-test"}, HeaderUserAgent: {"pyry-test"}}
}

func phoneHeaders(id string) http.Header {
	return http.Header{HeaderServerID: {id}, HeaderToken: {"tok-" + id}, HeaderUserAgent: {"phone-test"}, HeaderDeviceName: {"Pixel"}}
}

// peer is a test client. With a background reader it answers pings (a live
// peer) and queues what arrives; without one it is a peer that has stopped
// reading (no pongs, a filling TCP window).
type peer struct {
	t    *testing.T
	c    *websocket.Conn
	msgs chan []byte
	end  chan error // the read error that ended the connection
}

func (h *harness) connect(path string, hdr http.Header, reading bool) *peer {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, h.ws+path, &websocket.DialOptions{HTTPHeader: hdr, HTTPClient: h.client})
	require.NoError(h.t, err)
	require.Equal(h.t, http.StatusSwitchingProtocols, resp.StatusCode)
	c.SetReadLimit(1 << 22)
	h.t.Cleanup(func() { _ = c.CloseNow() })
	p := &peer{t: h.t, c: c, msgs: make(chan []byte, 4096), end: make(chan error, 1)}
	if reading {
		go p.readLoop()
	}
	return p
}

func (p *peer) readLoop() {
	for {
		typ, b, err := p.c.Read(context.Background())
		if err != nil {
			p.end <- err
			return
		}
		if typ != websocket.MessageText {
			b = append([]byte("BINARY:"), b...)
		}
		p.msgs <- b
	}
}

// dialBinary connects a reading binary and waits until it holds its slot.
func (h *harness) dialBinary(id string) *peer {
	h.t.Helper()
	before := h.rl.Stats().Binaries
	b := h.connect("/v1/server", binaryHeaders(id), true)
	h.eventually(func() bool { return h.rl.Stats().Binaries > before }, "binary %s never claimed", id)
	return b
}

// dialPhone connects a reading phone, says hello, and returns it with the
// conn_id the binary saw on the hello's envelope.
func (h *harness) dialPhone(id string, bin *peer) (*peer, string) {
	h.t.Helper()
	p := h.connect("/v1/client", phoneHeaders(id), true)
	p.send(`{"type":"hello"}`)
	env := bin.envelope()
	require.JSONEq(h.t, `{"type":"hello"}`, string(env.Frame))
	require.Regexp(h.t, `^client-[0-9a-f]{16}$`, env.ConnID)
	return p, env.ConnID
}

func (h *harness) eventually(cond func() bool, msg string, args ...any) {
	h.t.Helper()
	require.Eventuallyf(h.t, cond, 5*time.Second, 5*time.Millisecond, msg, args...)
}

func (p *peer) send(s string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(p.t, p.c.Write(ctx, websocket.MessageText, []byte(s)))
}

// next returns the next message, failing if none arrives or the connection ends.
func (p *peer) next() string {
	p.t.Helper()
	select {
	case b := <-p.msgs: // what arrived before a close comes first
		return string(b)
	default:
	}
	select {
	case b := <-p.msgs:
		return string(b)
	case err := <-p.end:
		p.end <- err
		select {
		case b := <-p.msgs: // the reader queues a message before it reports the end
			return string(b)
		default:
		}
		p.t.Fatalf("connection ended while waiting for a message: %v", err)
	case <-time.After(5 * time.Second):
		p.t.Fatal("no message within 5s")
	}
	return ""
}

// wireEnvelope is what the binary receives.
type wireEnvelope struct {
	ConnID    string          `json:"conn_id"`
	Token     *string         `json:"token"`
	Frame     json.RawMessage `json:"frame"`
	CloseCode int             `json:"close_code"`
}

func (p *peer) envelope() wireEnvelope {
	p.t.Helper()
	raw := p.next()
	var env wireEnvelope
	require.NoError(p.t, json.Unmarshal([]byte(raw), &env), raw)
	return env
}

// closed waits for the connection to end and asserts its close code. Queued
// messages are skipped.
func (p *peer) closed(code websocket.StatusCode) {
	p.t.Helper()
	select {
	case err := <-p.end:
		p.end <- err
		require.Equalf(p.t, code, websocket.CloseStatus(err), "close error: %v", err)
	case <-time.After(8 * time.Second):
		p.t.Fatalf("connection still open; want close %d", code)
	}
}

// closedOrDropped is closed for a peer that stopped reading: it may get the
// close code, or only see its socket end (-1) if the close frame could not
// be written before the relay dropped it.
func (p *peer) closedOrDropped(code websocket.StatusCode) {
	p.t.Helper()
	select {
	case err := <-p.end:
		p.end <- err
		got := websocket.CloseStatus(err)
		require.Truef(p.t, got == code || got == -1, "close %d (%v); want %d or a dropped socket", got, err, code)
	case <-time.After(8 * time.Second):
		p.t.Fatalf("connection still open; want close %d", code)
	}
}

// silent asserts that nothing arrives and the connection stays up for d.
func (p *peer) silent(d time.Duration) {
	p.t.Helper()
	select {
	case b := <-p.msgs:
		p.t.Fatalf("unexpected message %q", b)
	case err := <-p.end:
		p.end <- err
		p.t.Fatalf("connection ended: %v", err)
	case <-time.After(d):
	}
}
