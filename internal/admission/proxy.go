package admission

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
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
func WrapListener(ln net.Listener, trusted []netip.Prefix, headerTimeout time.Duration) net.Listener {
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
	return &proxyproto.Listener{
		Listener:          ln,
		ConnPolicy:        proxyPolicy(norm),
		ValidateHeader:    validateProxyHeader,
		ReadHeaderTimeout: headerTimeout,
	}
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
