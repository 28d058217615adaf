package admission

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// PROXY protocol v2 (HAProxy spec §2.2), as written by a TCP load balancer in
// front of the relay before the client's first byte:
//
//	offset 0   12 bytes  signature \r\n\r\n\x00\r\nQUIT\n
//	offset 12  1 byte    version (high nibble, 2) | command (low: 0 LOCAL, 1 PROXY)
//	offset 13  1 byte    family (high: 1 INET, 2 INET6) | transport (low: 1 STREAM)
//	offset 14  2 bytes   length of the rest, big-endian
//	offset 16  12 or 36  src addr, dst addr, src port, dst port; then TLVs
//
// Parsing is go-proxyproto's; this file only decides who may send a header,
// which headers are acceptable, and how long to wait for one.

// DefaultProxyHeaderTimeout is used by WrapListener when headerTimeout is not
// positive: the header timeout is never disabled.
const DefaultProxyHeaderTimeout = 5 * time.Second

// errProxyHeader is the (internal) validation failure; the library turns it
// into a read error and the HTTP server closes the connection.
var errProxyHeader = errors.New("relay: admission: unacceptable PROXY header")

// ErrProxyHeaderRefused prefixes the read error of a connection whose PROXY
// header stage refused it (see the Reason* constants below). The TLS
// handshake error net/http logs then carries it, so the server can tell a
// PROXY refusal (already logged with its reason) from a handshake failure.
var ErrProxyHeaderRefused = errors.New("relay: PROXY header refused")

// Why the PROXY header stage refused a connection. They are SocketReasons:
// like the socket caps, they end a connection before any HTTP request.
const (
	// ReasonProxyMissing: a trusted proxy sent bytes that are not a PROXY
	// v2 header (the proxy is not configured to send one).
	ReasonProxyMissing SocketReason = "proxy_header_missing"
	// ReasonProxyTimeout: a trusted proxy sent no complete header within
	// the header timeout.
	ReasonProxyTimeout SocketReason = "proxy_header_timeout"
	// ReasonProxyBad: a trusted proxy sent a header the relay does not
	// accept (v1, malformed, not TCP, no usable source address).
	ReasonProxyBad SocketReason = "proxy_header_bad"
	// ReasonProxyUntrusted: a peer outside --trust-proxy sent a PROXY
	// header, trying to choose its own address.
	ReasonProxyUntrusted SocketReason = "proxy_header_untrusted"
)

// AllProxyReasons lists the PROXY header stage's SocketReasons, so metrics
// can pre-register them.
var AllProxyReasons = []SocketReason{ReasonProxyMissing, ReasonProxyTimeout, ReasonProxyBad, ReasonProxyUntrusted}

// WrapListener returns ln wrapped for the PROXY protocol, with a strict
// per-peer posture:
//
//   - A peer inside trusted MUST open with a PROXY v2 header, within
//     headerTimeout; otherwise its first read fails and the server closes it.
//     A trusted proxy that can send the header always does, so a missing one
//     means a misconfiguration, and guessing would let the proxy's own
//     address stand in for every client behind it.
//   - A peer outside trusted that sends a PROXY header is cut off: it is
//     trying to choose its own address. Without a header it is served
//     normally and charged to its socket address (direct clients and a
//     proxy can share the port).
//
// Only v2 is accepted: the issue asks for v2, and AWS NLB, HAProxy
// (send-proxy-v2), Envoy, Traefik and Caddy all send it. A v1 (text) header,
// even from a trusted peer, is refused; so is any PROXY command that does not
// carry a TCP over IPv4/IPv6 source. LOCAL (the proxy's own health checks)
// is accepted and keeps the proxy's socket address.
//
// headerTimeout bounds how long a trusted peer may stay silent before
// sending its header (and how long header detection waits on an untrusted
// peer before treating the stream as plain), so no peer can hold a
// goroutine indefinitely here. Non-positive means DefaultProxyHeaderTimeout.
//
// The header is read lazily, on the connection's first Read or RemoteAddr
// call. net/http does both in the per-connection goroutine, so the accept
// loop is never blocked; an http.Server ConnState or ConnContext hook must
// not call RemoteAddr, as those run in the accept loop.
//
// onReject, if set, is called once per connection the header stage refuses,
// with the reason and the socket peer's address (the proxy's, or the
// untrusted peer's own). A trusted peer that closes without sending a byte
// (a balancer's TCP health check) is not a refusal and is not reported.
func WrapListener(ln net.Listener, trusted []netip.Prefix, headerTimeout time.Duration, onReject func(SocketReason, netip.Addr)) net.Listener {
	if headerTimeout <= 0 {
		headerTimeout = DefaultProxyHeaderTimeout
	}
	// Invalid prefixes are dropped rather than reported: New validates the
	// same list from Options, and an entry dropped here only makes the
	// listener stricter (that peer's headers are then refused).
	norm := make([]netip.Prefix, 0, len(trusted))
	for _, p := range trusted {
		if n, err := normalizePrefixes([]netip.Prefix{p}); err == nil {
			norm = append(norm, n...)
		}
	}
	pl := &proxyproto.Listener{
		Listener:          spyListener{ln},
		ConnPolicy:        proxyPolicy(norm),
		ValidateHeader:    validateProxyHeader,
		ReadHeaderTimeout: headerTimeout,
	}
	return &refusingListener{Listener: pl, onReject: onReject}
}

// spyListener hands the PROXY library connections that remember what the
// header stage saw: go-proxyproto reports a timeout, a silent close and
// bytes without a header all as ErrNoProxyProtocol.
type spyListener struct{ net.Listener }

func (l spyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &spyConn{Conn: c}, nil
}

type spyConn struct {
	net.Conn
	gotBytes atomic.Bool // a byte arrived
	timedOut atomic.Bool // a read hit its deadline
}

func (c *spyConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.gotBytes.Store(true)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.timedOut.Store(true)
	}
	return n, err
}

// refusingListener reports the header stage's refusals (onReject).
type refusingListener struct {
	net.Listener // *proxyproto.Listener
	onReject     func(SocketReason, netip.Addr)
}

func (l *refusingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc, ok := c.(*proxyproto.Conn)
	if !ok {
		return c, nil
	}
	spy, ok := pc.Raw().(*spyConn)
	if !ok {
		return c, nil
	}
	return &refusingConn{Conn: pc, spy: spy, onReject: l.onReject}, nil
}

// refusingConn classifies the first read error: the header stage's errors
// (go-proxyproto's sentinels, possibly wrapping the read error that stopped
// the parser, and errProxyHeader) are never themselves io.EOF or a
// net.Error, and are returned by every read, the first included.
type refusingConn struct {
	net.Conn // *proxyproto.Conn
	spy      *spyConn
	onReject func(SocketReason, netip.Addr)

	checked atomic.Bool
	refused atomic.Bool
}

// NetConn exposes the socket under the PROXY layer (socket options;
// tls.Conn's convention).
func (c *refusingConn) NetConn() net.Conn { return c.spy.Conn }

func (c *refusingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err == nil {
		c.checked.Store(true)
		return n, nil
	}
	if !c.checked.Swap(true) {
		if reason, ok := c.classify(err); ok {
			c.refused.Store(true)
			if c.onReject != nil {
				c.onReject(reason, addrOf(c.spy.Conn.RemoteAddr()))
			}
		}
	}
	if c.refused.Load() {
		return n, fmt.Errorf("%w: %w", ErrProxyHeaderRefused, err)
	}
	return n, err
}

// classify maps the first read error to a refusal reason; ok is false for
// errors that are not refusals (the peer went away, the socket failed).
func (c *refusingConn) classify(err error) (SocketReason, bool) {
	// Only the top-level error tells: the header parser wraps the read
	// error that stopped it (a timeout, an EOF mid-header) in its own.
	if _, ok := err.(net.Error); ok || err == io.EOF {
		return "", false
	}
	switch {
	case errors.Is(err, proxyproto.ErrSuperfluousProxyHeader):
		return ReasonProxyUntrusted, true
	case c.spy.timedOut.Load(): // silent, or stalled mid-header
		return ReasonProxyTimeout, true
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		if c.spy.gotBytes.Load() {
			return ReasonProxyMissing, true
		}
		return "", false // closed without a byte: a TCP health check
	}
	return ReasonProxyBad, true
}

// proxyPolicy: REQUIRE a header from trusted peers, REJECT one from anyone
// else. An unclassifiable peer address drops just that connection
// (ErrInvalidUpstream keeps the listener accepting).
func proxyPolicy(trusted []netip.Prefix) proxyproto.ConnPolicyFunc {
	return func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
		peer := addrOf(o.Upstream)
		if !peer.IsValid() {
			return proxyproto.REJECT, fmt.Errorf("%w: unparseable peer", proxyproto.ErrInvalidUpstream)
		}
		if isTrusted(peer, trusted) {
			return proxyproto.REQUIRE, nil
		}
		return proxyproto.REJECT, nil
	}
}

func addrOf(a net.Addr) netip.Addr {
	if a == nil {
		return netip.Addr{}
	}
	if t, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(t.IP); ok {
			return normalize(ip)
		}
		return netip.Addr{}
	}
	return parsePeer(a.String())
}

// validateProxyHeader accepts v2 LOCAL, and v2 PROXY over TCPv4/TCPv6 with a
// usable source address.
func validateProxyHeader(h *proxyproto.Header) error {
	if h.Version != 2 {
		return errProxyHeader
	}
	if h.Command.IsLocal() {
		return nil
	}
	if !h.Command.IsProxy() {
		return errProxyHeader
	}
	if h.TransportProtocol != proxyproto.TCPv4 && h.TransportProtocol != proxyproto.TCPv6 {
		return errProxyHeader
	}
	src, ok := h.SourceAddr.(*net.TCPAddr)
	if !ok {
		return errProxyHeader
	}
	ip, ok := netip.AddrFromSlice(src.IP)
	if !ok || normalize(ip).IsUnspecified() {
		return errProxyHeader
	}
	return nil
}
