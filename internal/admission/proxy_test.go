package admission

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// proxyServer serves echoIP through the middleware on a listener wrapped
// with WrapListener, trusting 127.0.0.2 as a PROXY sender. The http.Server
// has no timeouts of its own, so only the PROXY header timeout can cut off a
// silent peer.
func proxyServer(t *testing.T, headerTimeout time.Duration) string {
	return proxyServerReporting(t, headerTimeout, nil)
}

func proxyServerReporting(t *testing.T, headerTimeout time.Duration, onReject func(SocketReason, netip.Addr)) string {
	t.Helper()
	c := newController(t, testOptions())
	s := startServer(t, c.Middleware(echoIP), func(ln net.Listener) net.Listener {
		return WrapListener(ln, mustPrefixes(t, "127.0.0.2/32"), headerTimeout, onReject)
	})
	return s.Listener.Addr().String()
}

// refusalRecorder collects what WrapListener reports.
type refusalRecorder struct {
	mu  sync.Mutex
	got []string
}

func (r *refusalRecorder) record(reason SocketReason, a netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, string(reason)+" "+a.String())
}

func (r *refusalRecorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func v2Header(src string) *proxyproto.Header {
	return proxyproto.HeaderProxyFromAddrs(2,
		&net.TCPAddr{IP: net.ParseIP(src), Port: 40000},
		&net.TCPAddr{IP: net.ParseIP("192.0.2.80"), Port: 443})
}

const plainGET = "GET / HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n"

// roundTrip sends prefix then a GET and returns the echoed client address.
func roundTrip(t *testing.T, conn net.Conn, prefix []byte) (status int, body string) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(append(prefix, plainGET...)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no HTTP response: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// wantCutOff asserts the server closes conn without answering, well before
// the client's own 5 s deadline. It returns how long that took.
func wantCutOff(t *testing.T, conn net.Conn, send []byte) time.Duration {
	t.Helper()
	start := time.Now()
	conn.SetDeadline(start.Add(5 * time.Second))
	if len(send) > 0 {
		if _, err := conn.Write(send); err != nil {
			t.Fatal(err)
		}
	}
	b, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("server kept the connection open; want it closed")
	}
	if len(b) != 0 {
		t.Fatalf("server answered %q; want the connection closed unanswered", firstLine(b))
	}
	return time.Since(start)
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\r\n")
	return s
}

func headerBytes(t *testing.T, h *proxyproto.Header) []byte {
	t.Helper()
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestProxyV2_TrustedPeer_SourceAddressHonoured(t *testing.T) {
	addr := proxyServer(t, time.Second)
	conn := dialFrom(t, "127.0.0.2", addr)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := v2Header("203.0.113.7").WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	if st, body := roundTrip(t, conn, nil); st != http.StatusOK || body != "203.0.113.7" {
		t.Fatalf("got %d %q, want 200 charged to 203.0.113.7", st, body)
	}
}

func TestProxyV2_TrustedPeer_IPv6Source(t *testing.T) {
	addr := proxyServer(t, time.Second)
	h := proxyproto.HeaderProxyFromAddrs(2,
		&net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 40000},
		&net.TCPAddr{IP: net.ParseIP("2001:db8::80"), Port: 443})
	if st, body := roundTrip(t, dialFrom(t, "127.0.0.2", addr), headerBytes(t, h)); st != http.StatusOK || body != "2001:db8::7" {
		t.Fatalf("got %d %q, want 200 charged to 2001:db8::7", st, body)
	}
}

func TestProxyV2_UntrustedPeer_Rejected(t *testing.T) {
	addr := proxyServer(t, time.Second)
	wantCutOff(t, dialFrom(t, "127.0.0.3", addr), append(headerBytes(t, v2Header("203.0.113.7")), plainGET...))
	// The listener keeps serving others.
	if st, body := roundTrip(t, dialFrom(t, "127.0.0.3", addr), nil); st != http.StatusOK || body != "127.0.0.3" {
		t.Fatalf("plain request after a rejection: %d %q", st, body)
	}
}

func TestProxy_UntrustedPeer_PlainRequest_ChargedToSocket(t *testing.T) {
	addr := proxyServer(t, time.Second)
	if st, body := roundTrip(t, dialFrom(t, "127.0.0.3", addr), nil); st != http.StatusOK || body != "127.0.0.3" {
		t.Fatalf("got %d %q, want 200 charged to 127.0.0.3", st, body)
	}
}

func TestProxy_TrustedPeer_NoHeader_Rejected(t *testing.T) {
	addr := proxyServer(t, time.Second)
	wantCutOff(t, dialFrom(t, "127.0.0.2", addr), []byte(plainGET))
}

func TestProxy_TrustedPeer_Silent_CutOffAtHeaderTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	addr := proxyServer(t, timeout)
	took := wantCutOff(t, dialFrom(t, "127.0.0.2", addr), nil)
	if took < timeout-50*time.Millisecond {
		t.Fatalf("cut off after %v, before the %v header timeout", took, timeout)
	}
}

func TestProxyV1_TrustedPeer_Rejected(t *testing.T) {
	addr := proxyServer(t, time.Second)
	h := v2Header("203.0.113.7")
	h.Version = 1
	wantCutOff(t, dialFrom(t, "127.0.0.2", addr), append(headerBytes(t, h), plainGET...))
}

func TestProxyV2_TrustedPeer_UDPTransport_Rejected(t *testing.T) {
	addr := proxyServer(t, time.Second)
	h := proxyproto.HeaderProxyFromAddrs(2,
		&net.UDPAddr{IP: net.ParseIP("203.0.113.7"), Port: 40000},
		&net.UDPAddr{IP: net.ParseIP("192.0.2.80"), Port: 443})
	wantCutOff(t, dialFrom(t, "127.0.0.2", addr), append(headerBytes(t, h), plainGET...))
}

func TestProxyV2_TrustedPeer_Local_KeepsPeerAddress(t *testing.T) {
	addr := proxyServer(t, time.Second)
	h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	if st, body := roundTrip(t, dialFrom(t, "127.0.0.2", addr), headerBytes(t, h)); st != http.StatusOK || body != "127.0.0.2" {
		t.Fatalf("got %d %q, want 200 charged to the proxy 127.0.0.2", st, body)
	}
}

func TestValidateProxyHeader(t *testing.T) {
	ok := v2Header("203.0.113.7")
	if err := validateProxyHeader(ok); err != nil {
		t.Fatalf("valid v2 header refused: %v", err)
	}
	unspecified := v2Header("0.0.0.0")
	if err := validateProxyHeader(unspecified); err == nil {
		t.Fatal("unspecified source accepted")
	}
	noSrc := v2Header("203.0.113.7")
	noSrc.SourceAddr = nil
	if err := validateProxyHeader(noSrc); err == nil {
		t.Fatal("header without source accepted")
	}
}

// Every refusal of the header stage is reported once, with its reason and
// the socket peer (the proxy, or the untrusted sender); a request served
// and a trusted peer that closes without a byte (a TCP health check) are
// not refusals.
func TestProxy_Refusals_ReportedWithReasonAndPeer(t *testing.T) {
	const timeout = 200 * time.Millisecond
	v1 := v2Header("203.0.113.7")
	v1.Version = 1
	cases := []struct {
		name string
		src  string
		send []byte // nil: stay silent; empty: close at once
		want []string
	}{
		{"untrusted sender", "127.0.0.3", append(headerBytes(t, v2Header("203.0.113.7")), plainGET...), []string{"proxy_header_untrusted 127.0.0.3"}},
		{"trusted, no header", "127.0.0.2", []byte(plainGET), []string{"proxy_header_missing 127.0.0.2"}},
		{"trusted, silent", "127.0.0.2", nil, []string{"proxy_header_timeout 127.0.0.2"}},
		{"trusted, stalled mid-header", "127.0.0.2", headerBytes(t, v2Header("203.0.113.7"))[:14], []string{"proxy_header_timeout 127.0.0.2"}},
		{"trusted, v1 header", "127.0.0.2", append(headerBytes(t, v1), plainGET...), []string{"proxy_header_bad 127.0.0.2"}},
		{"trusted, closes without a byte", "127.0.0.2", []byte{}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var rec refusalRecorder
			addr := proxyServerReporting(t, timeout, rec.record)
			conn := dialFrom(t, tc.src, addr)
			if tc.send != nil && len(tc.send) == 0 {
				conn.Close()
			} else {
				wantCutOff(t, conn, tc.send)
			}
			// The report is made before the server closes the connection;
			// the health-check case has nothing to wait for, so give the
			// server the header timeout to (wrongly) report one.
			deadline := time.Now().Add(2 * time.Second)
			if tc.want == nil {
				deadline = time.Now().Add(2 * timeout)
			}
			for time.Now().Before(deadline) && len(rec.list()) < len(tc.want) {
				time.Sleep(10 * time.Millisecond)
			}
			if got := rec.list(); !slices.Equal(got, tc.want) {
				t.Fatalf("reported %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("served requests", func(t *testing.T) {
		var rec refusalRecorder
		addr := proxyServerReporting(t, timeout, rec.record)
		if st, _ := roundTrip(t, dialFrom(t, "127.0.0.2", addr), headerBytes(t, v2Header("203.0.113.7"))); st != http.StatusOK {
			t.Fatalf("proxied request: %d", st)
		}
		if st, _ := roundTrip(t, dialFrom(t, "127.0.0.3", addr), nil); st != http.StatusOK {
			t.Fatalf("direct request: %d", st)
		}
		if got := rec.list(); len(got) != 0 {
			t.Fatalf("served requests reported as refusals: %q", got)
		}
	})
}

// The routing core sets socket options on the TCP socket under a PROXY
// connection by following NetConn (tls.Conn's convention) or Raw
// (go-proxyproto's): the refusal reporting wrapper must keep that path
// open, over the socket cap's wrapper too, within three hops: the core
// follows four, and TLS takes one.
func TestWrapListener_TCPSocketReachableByNetConn(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	capped, err := LimitListener(tcp, DefaultSocketLimits())
	if err != nil {
		t.Fatal(err)
	}
	ln := WrapListener(capped, mustPrefixes(t, "127.0.0.2/32"), time.Second, func(SocketReason, netip.Addr) {})
	defer ln.Close()
	client := dialFrom(t, "127.0.0.3", tcp.Addr().String())
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var hops int
	for hops = 0; hops < 3; hops++ {
		if _, ok := c.(*net.TCPConn); ok {
			break
		}
		switch v := c.(type) {
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		case interface{ Raw() net.Conn }:
			c = v.Raw()
		default:
			t.Fatalf("%T exposes neither NetConn nor Raw", c)
		}
	}
	if _, ok := c.(*net.TCPConn); !ok {
		t.Fatalf("no *net.TCPConn within 3 hops, stopped at %T", c)
	}
}
