package admission

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// proxyServer serves echoIP through the middleware on a listener wrapped
// with WrapListener, trusting 127.0.0.2 as a PROXY sender. The http.Server
// has no timeouts of its own, so only the PROXY header timeout can cut off a
// silent peer.
func proxyServer(t *testing.T, headerTimeout time.Duration) string {
	t.Helper()
	c := newController(t, testOptions())
	s := startServer(t, c.Middleware(echoIP), func(ln net.Listener) net.Listener {
		return WrapListener(ln, mustPrefixes(t, "127.0.0.2/32"), headerTimeout)
	})
	return s.Listener.Addr().String()
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
