package admission

import (
	"bufio"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// acceptAll serves ln, holding every accepted connection open until the
// client closes it (an idle keep-alive, as far as the listener can tell).
func acceptAll(t *testing.T, ln net.Listener) {
	t.Helper()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = bufio.NewReader(c).ReadByte() // returns when the client closes
			}()
		}
	}()
}

func dialSocketFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refusedSoon reports whether the server closed c without a byte.
func refusedSoon(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := c.Read(make([]byte, 1))
	ne, timeout := err.(net.Error)
	return err != nil && !(timeout && ne.Timeout())
}

func heldOpen(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func newLimited(t *testing.T, l SocketLimits) (net.Listener, *atomic.Int64) {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var rejected atomic.Int64
	l.OnReject = func(SocketReason, netip.Addr) { rejected.Add(1) }
	ln, err := LimitListener(raw, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	acceptAll(t, ln)
	return ln, &rejected
}

func TestSocketLimits_PerIPCap_OtherAddressStillAccepted(t *testing.T) {
	ln, rejected := newLimited(t, SocketLimits{Max: 100, MaxPerIP: 3})
	addr := ln.Addr().String()
	for i := range 3 {
		if c := dialSocketFrom(t, "127.0.0.2", addr); !heldOpen(c) {
			t.Fatalf("socket %d from 127.0.0.2 under the cap was closed", i+1)
		}
	}
	if !refusedSoon(dialSocketFrom(t, "127.0.0.2", addr)) {
		t.Fatal("4th idle socket from one address was kept: per-IP socket cap not enforced")
	}
	if !heldOpen(dialSocketFrom(t, "127.0.0.3", addr)) {
		t.Fatal("another address was refused")
	}
	if rejected.Load() != 1 {
		t.Fatalf("rejections counted %d, want 1", rejected.Load())
	}
}

func TestSocketLimits_GlobalCap_AndReleaseOnClose(t *testing.T) {
	ln, _ := newLimited(t, SocketLimits{Max: 4, MaxPerIP: 4})
	addr := ln.Addr().String()
	var held []net.Conn
	for i := range 4 {
		c := dialSocketFrom(t, "127.0.0."+string(rune('2'+i)), addr)
		if !heldOpen(c) {
			t.Fatalf("socket %d under the global cap was closed", i+1)
		}
		held = append(held, c)
	}
	if !refusedSoon(dialSocketFrom(t, "127.0.0.9", addr)) {
		t.Fatal("a socket over the global cap was kept")
	}
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if heldOpen(dialSocketFrom(t, "127.0.0.9", addr)) {
			break // the closed socket's slot was released
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed socket's slot was never released")
		}
	}
}

func TestSocketLimits_TrustedProxyExemptFromPerIP(t *testing.T) {
	ln, _ := newLimited(t, SocketLimits{Max: 100, MaxPerIP: 1, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	addr := ln.Addr().String()
	for i := range 5 {
		if !heldOpen(dialSocketFrom(t, "127.0.0.2", addr)) {
			t.Fatalf("socket %d from the trusted proxy was refused", i+1)
		}
	}
	dialSocketFrom(t, "127.0.0.3", addr)
	if !refusedSoon(dialSocketFrom(t, "127.0.0.3", addr)) {
		t.Fatal("an untrusted peer's 2nd socket was kept")
	}
}

func TestSocketLimits_Invalid(t *testing.T) {
	raw, _ := net.Listen("tcp", "127.0.0.1:0")
	defer raw.Close()
	for _, l := range []SocketLimits{{}, {Max: 1}, {Max: 2, MaxPerIP: 3}} {
		if _, err := LimitListener(raw, l); err == nil {
			t.Fatalf("%+v accepted", l)
		}
	}
}

// A refused socket is counted before it is closed, so whoever sees the
// close (the peer, an attack scenario scraping the metric at once) also
// sees the count. OnReject is held here: the socket must stay open until
// it returns.
func TestSocketLimits_CountedBeforeClosed(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inReject, release := make(chan struct{}), make(chan struct{})
	ln, err := LimitListener(raw, SocketLimits{Max: 1, MaxPerIP: 1, OnReject: func(SocketReason, netip.Addr) {
		close(inReject)
		<-release
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	acceptAll(t, ln)
	addr := ln.Addr().String()
	if !heldOpen(dialSocketFrom(t, "127.0.0.2", addr)) {
		t.Fatal("the first socket was closed")
	}
	over := dialSocketFrom(t, "127.0.0.2", addr)
	select {
	case <-inReject:
	case <-time.After(5 * time.Second):
		t.Fatal("the socket over the cap was never reported")
	}
	if !heldOpen(over) {
		t.Fatal("the refused socket was closed before OnReject returned: a peer can see the close before the count")
	}
	close(release)
	if !refusedSoon(over) {
		t.Fatal("the refused socket was not closed after OnReject returned")
	}
}
