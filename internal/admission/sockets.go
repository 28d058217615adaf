package admission

import (
	"errors"
	"net"
	"net/netip"
	"sync"

	"github.com/pyrycode/relay/internal/fielderr"
)

// SocketLimits caps TCP connections at accept time, before a byte is read.
// The HTTP-level caps (Options.MaxConns, MaxConnsPerIP) count only requests
// that reached a WebSocket handler; without a socket cap, idle keep-alive
// connections, slow header reads, TLS handshakes and /healthz requests from
// one host could exhaust the process's file descriptors and lock everyone
// out. Set both caps above their HTTP-level counterparts: a WebSocket holds
// one socket, and the headroom serves /healthz and handshakes in progress.
type SocketLimits struct {
	// Max caps open sockets on the listener. At the cap a new connection is
	// closed at once: no HTTP exists yet to answer 503 with.
	Max int
	// MaxPerIP caps open sockets per socket peer (IPv4 address or IPv6
	// /IPv6PrefixLen prefix). Trusted proxies are exempt: all their clients
	// share their address, and the HTTP-level per-IP caps see the real one.
	MaxPerIP int
	// IPv6PrefixLen groups IPv6 peers as Options.IPv6PrefixLen does.
	IPv6PrefixLen int
	// Trusted are the proxy prefixes exempt from MaxPerIP (--trust-proxy).
	Trusted []netip.Prefix
	// OnReject, if set, is called once per refused socket with the
	// socket peer's address.
	OnReject func(SocketReason, netip.Addr)
}

// SocketReason says why a socket was closed at accept. A refused socket is
// not a request (no byte of it was read), so it has its own type and metric
// label set (relay_sockets_refused_total), apart from Reason. A closed set:
// never build one from input.
type SocketReason string

const (
	// ReasonSocketCap: the listener holds SocketLimits.Max sockets.
	ReasonSocketCap SocketReason = "socket_cap"
	// ReasonSocketPerIP: the peer holds SocketLimits.MaxPerIP sockets.
	ReasonSocketPerIP SocketReason = "socket_per_ip_cap"
)

// AllSocketReasons lists every SocketReason, so metrics can pre-register labels.
var AllSocketReasons = []SocketReason{ReasonSocketCap, ReasonSocketPerIP}

// Socket cap defaults. Sockets are counted before any byte is read (idle
// keep-alives, slow headers, TLS handshakes, /healthz): twice the WebSocket
// caps leaves room for those while one host still cannot hold the
// process's file descriptors.
const (
	DefaultMaxSockets      = 2 * DefaultMaxConns
	DefaultMaxSocketsPerIP = 2 * DefaultMaxConnsPerIP
)

// DefaultSocketLimits returns the defaults above, with no trusted proxies.
func DefaultSocketLimits() SocketLimits {
	return SocketLimits{Max: DefaultMaxSockets, MaxPerIP: DefaultMaxSocketsPerIP, IPv6PrefixLen: DefaultIPv6PrefixLen}
}

// ErrInvalidSocketLimits reports unusable SocketLimits; Validate wraps it in
// a *fielderr.Error naming the field.
var ErrInvalidSocketLimits = errors.New("relay: admission: invalid socket limits")

// Validate reports the first unusable limit. A zero IPv6PrefixLen means
// DefaultIPv6PrefixLen (LimitListener fills it in).
func (l SocketLimits) Validate() error {
	switch {
	case l.Max < 1:
		return &fielderr.Error{Field: "Max", Value: l.Max, Want: "at least 1", Err: ErrInvalidSocketLimits}
	case l.MaxPerIP < 1:
		return &fielderr.Error{Field: "MaxPerIP", Value: l.MaxPerIP, Want: "at least 1", Err: ErrInvalidSocketLimits}
	case l.MaxPerIP > l.Max:
		return &fielderr.Error{Field: "MaxPerIP", Value: l.MaxPerIP, Want: "at most", Than: "Max", ThanValue: l.Max, Err: ErrInvalidSocketLimits}
	case l.IPv6PrefixLen != 0 && (l.IPv6PrefixLen < 32 || l.IPv6PrefixLen > 128):
		return &fielderr.Error{Field: "IPv6PrefixLen", Value: l.IPv6PrefixLen, Want: "32..128", Err: ErrInvalidSocketLimits}
	}
	return nil
}

// LimitListener wraps ln so that Accept enforces l. It must wrap the raw
// TCP listener, inside any PROXY-protocol or TLS wrapper: it keys on the
// socket peer and must never read from the connection.
func LimitListener(ln net.Listener, l SocketLimits) (net.Listener, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if l.IPv6PrefixLen == 0 {
		l.IPv6PrefixLen = DefaultIPv6PrefixLen
	}
	return &limitListener{Listener: ln, l: l, perIP: make(map[netip.Addr]int)}, nil
}

type limitListener struct {
	net.Listener
	l SocketLimits

	mu    sync.Mutex
	open  int
	perIP map[netip.Addr]int // entries exist only while > 0: bounded by Max
}

func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key, exempt := ll.key(c.RemoteAddr())
		if reason := ll.admit(key, exempt); reason != "" {
			// Counted before the close: whoever sees the socket closed
			// (the peer, a test scraping the metric) sees it counted.
			if ll.l.OnReject != nil {
				ll.l.OnReject(reason, normalize(addrOf(c.RemoteAddr())))
			}
			_ = c.Close()
			continue
		}
		return &countedConn{Conn: c, release: func() { ll.release(key, exempt) }}, nil
	}
}

func (ll *limitListener) key(a net.Addr) (netip.Addr, bool) {
	ip := normalize(addrOf(a))
	if !ip.IsValid() || isTrusted(ip, ll.l.Trusted) {
		return netip.Addr{}, true
	}
	if ip.Is6() && ll.l.IPv6PrefixLen < 128 {
		p, _ := ip.Prefix(ll.l.IPv6PrefixLen)
		ip = p.Addr()
	}
	return ip, false
}

func (ll *limitListener) admit(key netip.Addr, exempt bool) SocketReason {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	if ll.open >= ll.l.Max {
		return ReasonSocketCap
	}
	if !exempt && ll.perIP[key] >= ll.l.MaxPerIP {
		return ReasonSocketPerIP
	}
	ll.open++
	if !exempt {
		ll.perIP[key]++
	}
	return ""
}

func (ll *limitListener) release(key netip.Addr, exempt bool) {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	ll.open--
	if exempt {
		return
	}
	if n := ll.perIP[key] - 1; n > 0 {
		ll.perIP[key] = n
	} else {
		delete(ll.perIP, key)
	}
}

// countedConn releases its slot exactly once, on the first Close. net/http
// and the WebSocket library (after a hijack) both close what they accept.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// NetConn exposes the TCP connection (socket options; tls.Conn's convention).
func (c *countedConn) NetConn() net.Conn { return c.Conn }

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
