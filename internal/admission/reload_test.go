package admission

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A reload changes the caps for new requests; what is admitted stays.
func TestSetLimits_CapsApplyToNewRequests(t *testing.T) {
	o := testOptions()
	o.MaxConnsPerIP = 2
	c := newController(t, o)
	ip := netip.MustParseAddr("127.0.0.2")
	e1, r, _ := c.admit(ip)
	require.Empty(t, r)
	e2, r, _ := c.admit(ip)
	require.Empty(t, r)
	_, r, _ = c.admit(ip)
	require.Equal(t, ReasonPerIPCap, r)

	o.MaxConnsPerIP = 3
	require.NoError(t, c.SetLimits(o))
	e3, r, _ := c.admit(ip)
	require.Empty(t, r, "a raised per-IP cap admits at once")

	o.MaxConnsPerIP, o.MaxConns = 1, 3
	require.NoError(t, c.SetLimits(o))
	require.Equal(t, 3, c.Stats().OpenConns, "a lowered cap closes nothing")
	c.release(e3)
	c.release(e2)
	_, r, _ = c.admit(ip)
	require.Equal(t, ReasonPerIPCap, r, "still one open for this address: at the new cap")
	c.release(e1)
	_, r, _ = c.admit(netip.MustParseAddr("127.0.0.3"))
	require.Empty(t, r)
	m, p, _, _ := c.Limits()
	require.Equal(t, [2]int{3, 1}, [2]int{m, p})
}

// A new rate and burst reach every tracked address at once, without
// refilling a drained bucket.
func TestSetLimits_RateAndBurst_NoRefill(t *testing.T) {
	clk := newFakeClock()
	o := testOptions()
	o.UpgradeRate, o.UpgradeBurst, o.Now = 1, 2, clk.Now
	c := newController(t, o)
	ip := netip.MustParseAddr("127.0.0.2")
	for i := 0; i < 2; i++ {
		e, r, _ := c.admit(ip)
		require.Empty(t, r)
		c.release(e)
	}
	_, r, _ := c.admit(ip)
	require.Equal(t, ReasonRateLimited, r)

	o.UpgradeBurst = 10
	require.NoError(t, c.SetLimits(o))
	_, r, _ = c.admit(ip)
	require.Equal(t, ReasonRateLimited, r, "a bigger burst does not refill a drained bucket")

	o.UpgradeRate = 100 // one token per 10 ms
	require.NoError(t, c.SetLimits(o))
	clk.Advance(50 * time.Millisecond)
	for i := 0; i < 5; i++ {
		e, r, _ := c.admit(ip)
		require.Empty(t, r, "token %d at the new rate", i)
		c.release(e)
	}
	_, r, _ = c.admit(ip)
	require.Equal(t, ReasonRateLimited, r)
	clk.Advance(time.Hour)
	for i := 0; i < 10; i++ {
		e, r, _ := c.admit(ip)
		require.Empty(t, r, "the new burst: %d", i)
		c.release(e)
	}
	_, r, _ = c.admit(ip)
	require.Equal(t, ReasonRateLimited, r)
}

// What only New applies is refused, and an invalid option changes nothing.
func TestSetLimits_NotReloadableOrInvalid_ChangesNothing(t *testing.T) {
	o := testOptions()
	c := newController(t, o)
	for name, mut := range map[string]func(*Options){
		"table":   func(o *Options) { o.MaxTrackedIPs++ },
		"ttl":     func(o *Options) { o.IdleTTL++ },
		"ipv6":    func(o *Options) { o.IPv6PrefixLen = 48 },
		"trusted": func(o *Options) { o.TrustedProxies = mustPrefixes(t, "10.0.0.0/8") },
	} {
		n := o
		n.MaxConns = 7
		mut(&n)
		require.ErrorIs(t, c.SetLimits(n), ErrNotReloadable, name)
	}
	n := o
	n.MaxConns = 0
	require.Error(t, c.SetLimits(n))
	m, _, _, _ := c.Limits()
	require.Equal(t, o.MaxConns, m)
}

// Socket caps change while the listener accepts; invalid ones are refused.
func TestSetCaps_SocketCapsApplyToNewSockets(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln, err := LimitListener(raw, SocketLimits{Max: 1, MaxPerIP: 1})
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	first := <-accepted
	defer first.Close()
	refused := dial() // over the cap: closed at accept
	_ = refused.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = refused.Read(make([]byte, 1))
	require.Error(t, err, "the second socket was closed at accept")

	caps := ln.(SocketCaps)
	require.Error(t, caps.SetCaps(2, 3), "per-IP above the total")
	require.NoError(t, caps.SetCaps(2, 2))
	dial()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("a raised socket cap did not admit the next socket")
	}
}

// SetLimits and SetCaps race with admissions: the race detector watches.
func TestSetLimits_ConcurrentWithAdmissions(t *testing.T) {
	o := testOptions()
	c := newController(t, o)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			ip := netip.AddrFrom4([4]byte{127, 0, 1, byte(g)})
			for {
				select {
				case <-stop:
					return
				default:
				}
				if e, r, _ := c.admit(ip); r == "" {
					c.release(e)
				}
			}
		}(g)
	}
	for i := 0; i < 200; i++ {
		n := o
		n.MaxConns, n.MaxConnsPerIP, n.UpgradeBurst = 50+i%10, 1+i%5, 1+i%3
		if err := c.SetLimits(n); err != nil && !errors.Is(err, ErrNotReloadable) {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	require.Zero(t, c.Stats().OpenConns)
}
