package attacks

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// What a scenario needs from a target, in one place: its names and
// addresses (one host:port helper), one raw dialer (TCP from a chosen
// loopback source, an optional PROXY preamble, then TLS when the target is
// https), one hand-written WebSocket upgrade, and raw HTTP requests.
// Scenarios never dial or build a request line themselves.

// Target is the relay under attack.
type Target struct {
	// Base is http://host:port or https://host:port; ws(s) URLs are derived.
	Base *url.URL
	// RootCAs verifies the relay's certificate (nil: system roots).
	RootCAs *x509.CertPool
	// ServerName overrides the TLS server name (empty: Base's host).
	ServerName string
	// Local is nil against a remote deployment.
	Local *Local
	// Profile is what stands in front of the relay (zero: Direct).
	Profile Profile
	// ReadTimeout and ReadHeaderTimeout are the remote relay's
	// --read-timeout and --read-header-timeout when the operator set them
	// (zero: the deployed defaults). ATK-SLOW-MESSAGE and ATK-SLOWLORIS
	// bound their attacks by them: a relay tuned tighter is attacked for
	// less time, and one tuned looser is not reported as failing.
	ReadTimeout, ReadHeaderTimeout time.Duration
	// The remote relay's heartbeat, conflict probe, write deadline and
	// cluster lease when the operator tuned them (zero: the deployed
	// defaults; see Tuning). ATK-DEAD-PEER, ATK-SLOW-BINARY and
	// ATK-CLUSTER-CROSS-TENANT wait for those timers.
	PingInterval, PongTimeout, ProbeTimeout, WriteTimeout, ClusterLease time.Duration
	// Peer is a second instance of the same deployed cluster (relay attack
	// --peer-target), with the same TLS settings; nil when there is none.
	// The cross-instance scenarios run against Target and Peer together.
	Peer *Target

	client *http.Client // overrides the WebSocket dialer's HTTP client
}

// The deployed relay's defaults (internal/relay/options.go,
// internal/cluster/cluster.go), which a remote target is assumed to run
// unless relay attack is told otherwise.
const (
	defaultPingInterval = 30 * time.Second
	defaultPongTimeout  = 30 * time.Second
	defaultCloseTimeout = time.Second
	defaultProbeTimeout = 10 * time.Second
	defaultWriteTimeout = 10 * time.Second
	defaultClusterLease = 2400 * time.Millisecond
)

// tuned is d when it is set, else def.
func tuned(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// hostPort is the target's host:port, with the scheme's default port. It
// is the one address every raw dial, TLS probe and scanner uses.
func (t *Target) hostPort() string {
	if t.Base.Port() != "" {
		return t.Base.Host
	}
	if t.Base.Scheme == "https" {
		return net.JoinHostPort(t.Base.Hostname(), "443")
	}
	return net.JoinHostPort(t.Base.Hostname(), "80")
}

// tlsName is the name the relay's certificate must carry: --server-name,
// else the URL's host.
func (t *Target) tlsName() string {
	if t.ServerName != "" {
		return t.ServerName
	}
	return t.Base.Hostname()
}

// vhost is the Host header a client of the relay sends: its TLS name, with
// the URL's port when it has one. In TLS modes the relay answers only its
// own names (421 otherwise), so a target given by IP address with
// --server-name must still say the name here.
func (t *Target) vhost() string { return t.withPort(t.tlsName()) }

// withPort is host with the target URL's port, when it has one.
func (t *Target) withPort(host string) string {
	if p := t.Base.Port(); p != "" {
		return net.JoinHostPort(host, p)
	}
	return host
}

// loopbackTarget reports whether t's host is a loopback address.
func (t *Target) loopbackTarget() bool {
	a, err := netip.ParseAddr(t.Base.Hostname())
	return err == nil && a.IsLoopback()
}

// tlsConfig is what a client of an https target verifies with (nil for http).
func (t *Target) tlsConfig() *tls.Config {
	if t.Base.Scheme != "https" {
		return nil
	}
	return &tls.Config{RootCAs: t.RootCAs, ServerName: t.tlsName(), MinVersion: tls.VersionTLS12}
}

func (t *Target) wsURL(path string) string {
	u := *t.Base
	if u.Scheme == "https" {
		u.Scheme = "wss"
	} else {
		u.Scheme = "ws"
	}
	u.Path = path
	return u.String()
}

func (t *Target) httpURL(path string) string {
	u := *t.Base
	u.Path = path
	return u.String()
}

// wsHTTPClient carries the TLS settings; coder/websocket wants no Timeout.
func (t *Target) wsHTTPClient() *http.Client {
	if t.client != nil {
		return t.client
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: t.tlsConfig(), Proxy: nil}}
}

// withClient is a copy of t whose WebSocket dials use hc.
func (t *Target) withClient(hc *http.Client) *Target {
	c := *t
	c.client = hc
	return &c
}

func (t *Target) httpClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: t.tlsConfig(), Proxy: nil, DisableKeepAlives: true}}
}

// errNotLoopback: a scenario tried to bind a simulated client address
// towards a target that is not on loopback. Simulated addresses are for
// local runs only.
var errNotLoopback = errors.New("attacks: simulated source addresses need a loopback target")

// dialTimeout bounds a TCP connect and, separately, a TLS handshake.
const dialTimeout = 10 * time.Second

// dialTCP opens plain TCP to the target from src (the zero Addr: the
// system's choice). TLS probes speak their own handshake over it.
func (t *Target) dialTCP(ctx context.Context, src netip.Addr) (net.Conn, error) {
	d := &net.Dialer{Timeout: dialTimeout}
	if src.IsValid() {
		if !src.IsLoopback() || !t.loopbackTarget() {
			return nil, errNotLoopback
		}
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	return d.DialContext(ctx, "tcp", t.hostPort())
}

// dialFrom is the raw dialer: TCP from src, then preamble (a PROXY header,
// before any TLS), then TLS when the target is https.
func (t *Target) dialFrom(ctx context.Context, src netip.Addr, preamble []byte) (net.Conn, error) {
	c, err := t.dialTCP(ctx, src)
	if err != nil {
		return nil, err
	}
	if len(preamble) > 0 {
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(preamble); err != nil {
			c.Close()
			return nil, err
		}
		_ = c.SetWriteDeadline(time.Time{})
	}
	if cfg := t.tlsConfig(); cfg != nil {
		tc := tls.Client(c, cfg)
		hctx, cancel := context.WithTimeout(ctx, dialTimeout)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}
	return c, nil
}

// dialRaw is dialFrom with the system's source address and no preamble.
func (t *Target) dialRaw(ctx context.Context) (net.Conn, error) {
	return t.dialFrom(ctx, netip.Addr{}, nil)
}

// upgrade is one WebSocket upgrade attempt, never retried.
type upgrade struct {
	Status     int    // HTTP status; 0 when no response could be read
	RetryAfter string // the Retry-After header as sent
	WS         *rawWS // the open socket on 101 (the caller closes it), else nil
}

// retryAfterSecs parses Retry-After as whole seconds (-1 when absent or odd).
func (u upgrade) retryAfterSecs() int {
	n, err := strconv.Atoi(strings.TrimSpace(u.RetryAfter))
	if err != nil {
		return -1
	}
	return n
}

// Close closes the socket of an accepted upgrade.
func (u upgrade) Close() {
	if u.WS != nil {
		u.WS.c.Close()
	}
}

// upgradeFrom is the hand-written upgrade: one request for path from src,
// after preamble, with the WebSocket headers plus h, and the answer read.
// A transport error (refused, reset, no response) comes back as err with
// Status 0.
func (t *Target) upgradeFrom(ctx context.Context, src netip.Addr, preamble []byte, path string, h http.Header) (upgrade, error) {
	c, err := t.dialFrom(ctx, src, preamble)
	if err != nil {
		return upgrade{}, err
	}
	hdr := wsUpgradeHeaders()
	for k, vs := range h {
		for _, v := range vs {
			hdr = append(hdr, [2]string{k, v})
		}
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(t.buildRequest("GET", path, hdr)); err != nil {
		c.Close()
		return upgrade{}, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return upgrade{}, err
	}
	u := upgrade{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		_ = c.SetDeadline(time.Time{})
		u.WS = &rawWS{c: c, br: br}
		return u, nil
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	c.Close()
	return u, nil
}

// dialRawWS is upgradeFrom with admission refusals (429, 503) waited out,
// for scenarios that need an open raw socket rather than the refusal.
func (t *Target) dialRawWS(ctx context.Context, path string, h http.Header) (*rawWS, error) {
	var waited time.Duration
	for {
		u, err := t.upgradeFrom(ctx, netip.Addr{}, nil, path, h)
		if err != nil {
			return nil, err
		}
		if u.WS != nil {
			return u.WS, nil
		}
		if !waitRetryAfter(ctx, u.Status, u.RetryAfter, &waited) {
			return nil, fmt.Errorf("upgrade answered %d", u.Status)
		}
	}
}

// wsUpgradeHeaders are the headers of a valid WebSocket upgrade request.
func wsUpgradeHeaders() [][2]string {
	return [][2]string{
		{"Upgrade", "websocket"},
		{"Connection", "Upgrade"},
		{"Sec-WebSocket-Version", "13"},
		{"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
	}
}

// buildRequest renders an HTTP/1.1 request to the target's own name.
func (t *Target) buildRequest(method, path string, headers [][2]string) []byte {
	return requestWithHost(method, path, t.vhost(), headers)
}

// requestWithHost renders an HTTP/1.1 request with the given Host, with
// Connection: close added unless the headers name a Connection themselves.
func requestWithHost(method, path, host string, headers [][2]string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, path, host)
	hasConn := false
	for _, h := range headers {
		if strings.EqualFold(h[0], "Connection") {
			hasConn = true
		}
		fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
	}
	if !hasConn {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// rawResponse is what came back for a raw request: the parsed response (nil
// if unparseable), its body, and every byte received (headers included) so
// a canary check covers the whole answer.
type rawResponse struct {
	Resp *http.Response
	Body []byte
	All  []byte
}

// rawRequest writes req verbatim (concurrently with reading, so a server
// that answers early, as with 431, is still heard) and reads one response.
// Admission refusals (429, 503) are waited out and the request resent.
func (t *Target) rawRequest(ctx context.Context, req []byte) (rawResponse, error) {
	var waited time.Duration
	for {
		rr, err := t.rawRequestOnce(ctx, req)
		if err != nil || !throttled(ctx, rr.Resp, &waited) {
			return rr, err
		}
	}
}

func (t *Target) rawRequestOnce(ctx context.Context, req []byte) (rawResponse, error) {
	c, err := t.dialRaw(ctx)
	if err != nil {
		return rawResponse{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() { _, _ = c.Write(req) }()
	var all bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &all))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return rawResponse{All: all.Bytes()}, err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return rawResponse{Resp: resp, Body: body, All: all.Bytes()}, nil
}
