package admission

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
)

// Client address resolution.
//
// X-Forwarded-For is a comma-separated list that every proxy on the way
// extends on the right with the address it received the request from:
//
//	X-Forwarded-For: <whatever the client sent>, <client as seen by proxy 1>, <proxy 1 as seen by proxy 2>
//
// Only the entries on the right, appended by proxies we trust, are facts; the
// client controls everything to the left of them. Taking the left-most entry
// ("the original client") therefore lets any client pick the address it is
// charged to, and so evade every per-IP limit, or exhaust someone else's. We
// walk from the right instead, skipping our own trusted proxies, and stop at
// the first address we do not trust: that is the host that connected to our
// outermost proxy, the last hop nobody upstream of us can forge.

// ClientIP returns the address r is charged to: the socket peer
// (r.RemoteAddr, which reflects a PROXY header when the listener is wrapped
// by WrapListener), unless that peer is one of TrustedProxies, in which case
// the right-most X-Forwarded-For entry that is not a trusted proxy.
//
// Decisions where the standard is silent:
//   - An entry that does not parse as an IP (optionally with a port or in
//     brackets) met before an untrusted entry makes the whole header
//     unusable: the peer address is returned. Only trusted proxies wrote
//     that part of the list, so garbage there is a proxy misconfiguration,
//     and charging the proxy is the fail-safe answer.
//   - If every entry is trusted, the left-most one is returned (the client
//     is itself inside a trusted range).
//   - Empty list elements are skipped (RFC 9110 §5.6.1); repeated header
//     lines are one list, in order. The Forwarded header is ignored.
//
// Addresses are normalised: IPv4-mapped IPv6 becomes IPv4, zones are
// dropped. If RemoteAddr does not parse, the zero Addr is returned and all
// such requests share one set of limits.
func (c *Controller) ClientIP(r *http.Request) netip.Addr {
	return resolveClientIP(r.RemoteAddr, r.Header.Values("X-Forwarded-For"), c.trusted)
}

func resolveClientIP(remoteAddr string, xff []string, trusted []netip.Prefix) netip.Addr {
	peer := parsePeer(remoteAddr)
	if !peer.IsValid() || !isTrusted(peer, trusted) {
		return peer
	}
	found := false
	var leftmost netip.Addr
	for i := len(xff) - 1; i >= 0; i-- {
		list := xff[i]
		for list != "" {
			var elem string
			if j := strings.LastIndexByte(list, ','); j >= 0 {
				elem, list = list[j+1:], list[:j]
			} else {
				elem, list = list, ""
			}
			elem = strings.TrimSpace(elem)
			if elem == "" {
				continue
			}
			a, ok := parseXFFEntry(elem)
			if !ok {
				return peer
			}
			if !isTrusted(a, trusted) {
				return a
			}
			found, leftmost = true, a
		}
	}
	if found {
		return leftmost
	}
	return peer
}

// parsePeer parses an http.Request.RemoteAddr ("ip:port", or a bare IP).
func parsePeer(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return normalize(ap.Addr())
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return normalize(a)
	}
	return netip.Addr{}
}

// parseXFFEntry accepts "1.2.3.4", "1.2.3.4:80", "2001:db8::1",
// "[2001:db8::1]" and "[2001:db8::1]:443". Anything else ("unknown",
// obfuscated identifiers, hostnames) is malformed.
func parseXFFEntry(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return normalize(a), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return normalize(ap.Addr()), true
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil && a.Is6() {
			return normalize(a), true
		}
	}
	return netip.Addr{}, false
}

func normalize(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

type ctxKey struct{}

// FromContext returns the client address the middleware resolved for the
// request carrying ctx, so handlers can log it. ok is false outside the
// middleware.
func FromContext(ctx context.Context) (addr netip.Addr, ok bool) {
	addr, ok = ctx.Value(ctxKey{}).(netip.Addr)
	return addr, ok
}

// NewContext returns a copy of ctx carrying addr for FromContext; the
// middleware uses it, and tests of downstream handlers may too.
func NewContext(ctx context.Context, addr netip.Addr) context.Context {
	return context.WithValue(ctx, ctxKey{}, addr)
}
