package admission

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// Fuzz targets for what an attacker controls before admission: the socket
// peer's X-Forwarded-For header and the first bytes of a connection (a PROXY
// header or not). The properties are the anti-spoofing ones: an untrusted
// peer is charged to its socket address whatever it sends, and a trusted
// chain yields only an address somebody actually wrote into it.

// fuzzTrustSets are the trusted-proxy configurations the targets choose from.
var fuzzTrustSets = [][]string{
	nil,
	{"127.0.0.0/8"},
	{"10.0.0.0/8", "127.0.0.1/32"},
	{"::1/128", "2001:db8::/32"},
	{"192.0.2.0/24", "10.0.0.0/8", "::ffff:198.51.100.0/120"},
}

func fuzzControllers(f *testing.F) []*Controller {
	cs := make([]*Controller, len(fuzzTrustSets))
	for i, set := range fuzzTrustSets {
		o := testOptions()
		o.TrustedProxies = mustPrefixes(f, set...)
		cs[i] = newController(f, o)
	}
	return cs
}

// xffEntries lists the header's elements left to right, as written.
func xffEntries(values []string) []string {
	var out []string
	for _, v := range values {
		for _, e := range strings.Split(v, ",") {
			if e = strings.TrimSpace(e); e != "" {
				out = append(out, e)
			}
		}
	}
	return out
}

func isNormal(a netip.Addr) bool { return !a.Is4In6() && a.Zone() == "" }

func FuzzClientIP(f *testing.F) {
	cs := fuzzControllers(f)
	f.Fuzz(func(t *testing.T, remote, xff1, xff2 string, set uint8) {
		c := cs[int(set)%len(cs)]
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = remote
		var values []string
		for _, v := range []string{xff1, xff2} {
			if v != "" {
				r.Header.Add("X-Forwarded-For", v)
				values = append(values, v)
			}
		}
		got := c.ClientIP(r)
		peer := parsePeer(remote)

		if got.IsValid() && !isNormal(got) {
			t.Fatalf("ClientIP = %v: not normalised", got)
		}
		// An untrusted (or unparseable) peer is charged to itself: XFF from
		// it is never believed.
		if !peer.IsValid() || !isTrusted(peer, c.trusted) {
			if got != peer {
				t.Fatalf("untrusted peer %q spoofed %v via XFF %q", remote, got, values)
			}
			return
		}
		if got == peer {
			return
		}
		// Otherwise the answer was written into the header, and every entry
		// to its right is a well-formed trusted proxy.
		entries := xffEntries(values)
		for i := len(entries) - 1; i >= 0; i-- {
			a, ok := parseXFFEntry(entries[i])
			if !ok {
				t.Fatalf("ClientIP = %v, but a malformed entry %q was met first in %q", got, entries[i], values)
			}
			if a == got {
				if isTrusted(a, c.trusted) && i != 0 {
					// Only an all-trusted chain returns a trusted address: its left-most.
					t.Fatalf("ClientIP = trusted %v from the middle of %q", got, values)
				}
				return
			}
			if !isTrusted(a, c.trusted) {
				t.Fatalf("ClientIP = %v skipped untrusted %v in %q", got, a, values)
			}
		}
		t.Fatalf("ClientIP = %v appears nowhere in %q (peer %v)", got, values, peer)
	})
}

// FuzzXFF: whatever the client writes to the left of what our trusted
// proxies appended cannot change the answer once it is an untrusted hop;
// and every accepted entry parses to a normalised address that round-trips.
func FuzzXFF(f *testing.F) {
	cs := fuzzControllers(f)
	f.Fuzz(func(t *testing.T, forged, xff string, set uint8) {
		c := cs[int(set)%len(cs)]
		if len(c.trusted) == 0 {
			c = cs[1]
		}
		peer := c.trusted[0].Addr() // the request arrives from a trusted proxy
		remote := netip.AddrPortFrom(peer, 443).String()
		base := resolveClientIP(remote, []string{xff}, c.trusted)
		if base != peer && !isTrusted(base, c.trusted) {
			// base came from an untrusted hop: the client's forgeries to
			// its left, as list elements or as an earlier header line, are
			// never consulted.
			for _, values := range [][]string{{forged + "," + xff}, {forged, xff}} {
				if got := resolveClientIP(remote, values, c.trusted); got != base {
					t.Fatalf("forged %q turned %v into %v (xff %q)", forged, base, got, xff)
				}
			}
		}
		for _, e := range xffEntries([]string{forged, xff}) {
			a, ok := parseXFFEntry(e)
			if !ok {
				continue
			}
			if !a.IsValid() || !isNormal(a) {
				t.Fatalf("parseXFFEntry(%q) = %v: not a normalised address", e, a)
			}
			if b, ok := parseXFFEntry(a.String()); !ok || b != a {
				t.Fatalf("parseXFFEntry(%q) = %v does not round-trip (%v, %v)", e, a, b, ok)
			}
		}
	})
}

// FuzzValidateProxyHeader runs go-proxyproto's parser and the package's
// acceptance rule over arbitrary bytes: whatever is accepted is a v2 LOCAL,
// or a v2 PROXY over TCP with a usable source that survives re-encoding.
func FuzzValidateProxyHeader(f *testing.F) {
	for _, s := range proxySeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(data)))
		if err != nil || h == nil {
			return
		}
		if validateProxyHeader(h) != nil {
			return
		}
		if h.Version != 2 {
			t.Fatalf("accepted a v%d header: %q", h.Version, data)
		}
		if h.Command.IsLocal() {
			return
		}
		if !h.Command.IsProxy() || (h.TransportProtocol != proxyproto.TCPv4 && h.TransportProtocol != proxyproto.TCPv6) {
			t.Fatalf("accepted command %v transport %v", h.Command, h.TransportProtocol)
		}
		src, ok := h.SourceAddr.(*net.TCPAddr)
		if !ok {
			t.Fatalf("accepted a non-TCP source %T", h.SourceAddr)
		}
		ip, ok := netip.AddrFromSlice(src.IP)
		if !ok || normalize(ip).IsUnspecified() {
			t.Fatalf("accepted source %v", src)
		}
		wire, err := h.Format()
		if err != nil {
			t.Fatalf("accepted header does not re-encode: %v", err)
		}
		h2, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(wire)))
		if err != nil || validateProxyHeader(h2) != nil || h2.SourceAddr.String() != h.SourceAddr.String() {
			t.Fatalf("re-encoded header reads back as %v, %v", h2, err)
		}
	})
}

// FuzzProxyListener sends arbitrary first bytes through WrapListener on
// loopback, from a trusted (127.0.0.2) or untrusted (127.0.0.3) peer.
// Untrusted: the peer keeps its socket address; bytes that are not a PROXY
// header pass through untouched; a PROXY header cuts it off. Trusted: either
// a valid v2 header is consumed and its source becomes the peer, or the
// connection fails. The header stage never outlasts the header timeout.
func FuzzProxyListener(f *testing.F) {
	for _, s := range proxySeeds() {
		f.Add(s, true, false)
		f.Add(s, false, false)
	}
	f.Add([]byte(plainGET), false, true)
	f.Add(proxySeeds()[0][:7], true, true)
	f.Add([]byte("PROXY TCP4 "), false, true)

	const headerTimeout = 30 * time.Millisecond // only stalled partial headers wait for it
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	var rejects atomic.Int32 // refusals reported for the current input
	ln := WrapListener(tcp, mustPrefixes(f, "127.0.0.2/32"), headerTimeout, func(SocketReason, netip.Addr) { rejects.Add(1) })
	f.Cleanup(func() { ln.Close() })
	addr := tcp.Addr().String()

	f.Fuzz(func(t *testing.T, data []byte, trusted, stall bool) {
		src := "127.0.0.3"
		if trusted {
			src = "127.0.0.2"
		}
		rejects.Store(0)
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		client, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		srv, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		if _, err := client.Write(data); err != nil {
			t.Fatal(err)
		}
		if !stall {
			client.(*net.TCPConn).CloseWrite() // EOF after data: nothing to wait for
		}
		// The header stage (run by RemoteAddr) must end by itself within
		// headerTimeout, even for a peer that stalls mid-header.
		start := time.Now()
		peerAddr := srv.RemoteAddr()
		if elapsed := time.Since(start); elapsed > headerTimeout+time.Second {
			t.Fatalf("header stage for %q (trusted=%v stall=%v) took %v", data, trusted, stall, elapsed)
		}
		if stall {
			client.(*net.TCPConn).CloseWrite()
		}
		srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, rerr := io.ReadAll(srv)
		if ne, ok := rerr.(net.Error); ok && ne.Timeout() {
			t.Fatalf("read of %q (trusted=%v stall=%v) hung", data, trusted, stall)
		}
		remote := addrOf(peerAddr)
		signed := bytes.HasPrefix(data, proxyproto.SIGV1) || bytes.HasPrefix(data, proxyproto.SIGV2)
		// A connection is reported at most once, and only when refused.
		reported := rejects.Load()
		if reported > 1 {
			t.Fatalf("%q (trusted=%v stall=%v) reported %d times", data, trusted, stall, reported)
		}

		socket := netip.MustParseAddr(src)
		if !trusted {
			if remote != socket {
				t.Fatalf("untrusted peer sent %q and became %v", data, remote)
			}
			if !signed {
				if rerr != nil || !bytes.Equal(got, data) {
					t.Fatalf("untrusted peer without a PROXY header: sent %q, read %q, %v", data, got, rerr)
				}
				if reported != 0 {
					t.Fatalf("untrusted peer without a PROXY header (%q) reported as refused", data)
				}
				return
			}
			// A signed stream is cut off (an error, or an EOF that swallows
			// it), or passed through whole when it is not a header after all.
			if rerr == nil && len(got) > 0 && (!bytes.Equal(got, data) || validHeaderPrefix(data)) {
				t.Fatalf("untrusted peer's PROXY bytes %q were served as %q", data, got)
			}
			return
		}

		h, herr := proxyproto.Read(bufio.NewReader(bytes.NewReader(data)))
		if herr != nil || h == nil || validateProxyHeader(h) != nil {
			// No acceptable header: nothing is served, the peer is not rewritten.
			if remote != socket || len(got) > 0 {
				t.Fatalf("trusted peer without a valid header (%q) served %q as %v", data, got, remote)
			}
			// Refused and reported, unless it closed without a byte (a TCP
			// health check).
			if want := int32(1); (len(data) == 0 && !stall) != (reported == 0) || reported > want {
				t.Fatalf("trusted peer without a valid header (%q, stall=%v): %d refusals reported", data, stall, reported)
			}
			return
		}
		if reported != 0 {
			t.Fatalf("trusted peer's valid header %q reported as refused", data)
		}
		want := socket
		if !h.Command.IsLocal() {
			want = addrOf(h.SourceAddr)
		}
		if rerr != nil || remote != want {
			t.Fatalf("trusted header %q gave peer %v (%v), want %v", data, remote, rerr, want)
		}
		if !bytes.HasSuffix(data, got) {
			t.Fatalf("bytes after the header changed: sent %q, read %q", data, got)
		}
	})
}

// validHeaderPrefix reports whether data begins with a complete PROXY
// header that go-proxyproto parses.
func validHeaderPrefix(data []byte) bool {
	h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(data)))
	return err == nil && h != nil
}

func proxySeeds() [][]byte {
	var out [][]byte
	add := func(h *proxyproto.Header, rest string) {
		b, err := h.Format()
		if err != nil {
			panic(err)
		}
		out = append(out, append(b, rest...))
	}
	add(v2Header("203.0.113.7"), plainGET)
	add(v2Header("2001:db8::7"), "")
	add(v2Header("0.0.0.0"), plainGET)
	add(v2Header("::ffff:203.0.113.7"), "")
	add(&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL}, plainGET)
	add(proxyproto.HeaderProxyFromAddrs(1, &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 1}, &net.TCPAddr{IP: net.ParseIP("192.0.2.80"), Port: 443}), plainGET)
	add(&proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.UDPv4,
		SourceAddr: &net.UDPAddr{IP: net.ParseIP("203.0.113.7"), Port: 1}, DestinationAddr: &net.UDPAddr{IP: net.ParseIP("192.0.2.80"), Port: 443}}, "")
	out = append(out,
		[]byte(plainGET), []byte(""), []byte("\r\n\r\n\x00\r\nQUIT\n"), []byte("PROXY UNKNOWN\r\n"),
		[]byte("PROXY TCP4 203.0.113.7 192.0.2.80 1 443\r\n"+plainGET), []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff"))
	return out
}
