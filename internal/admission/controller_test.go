package admission

import (
	"errors"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestPerIPCap_OneAddressFull_OtherStillConnects(t *testing.T) {
	o := testOptions()
	o.MaxConnsPerIP = 2
	c := newController(t, o)
	b := newBlocker()
	s := startServer(t, c.Middleware(b), nil)
	t.Cleanup(b.Release) // before the server's Close, so a failing test cannot hang
	a, other := clientFrom("127.0.0.2"), clientFrom("127.0.0.3")

	held := []<-chan result{getAsync(t, a, s.URL), getAsync(t, a, s.URL)}
	b.waitEntered(t, 2)

	wantResult(t, get(t, a, s.URL), http.StatusTooManyRequests, "10")

	held = append(held, getAsync(t, other, s.URL))
	b.waitEntered(t, 1)
	if st := c.Stats(); st.OpenConns != 3 {
		t.Fatalf("OpenConns = %d, want 3", st.OpenConns)
	}

	b.Release()
	for _, ch := range held {
		if r := <-ch; r.status != http.StatusOK {
			t.Fatalf("held request finished with %d, want 200", r.status)
		}
	}
	// Slots are given back when the handler returns.
	eventually(t, func() bool { return c.Stats().OpenConns == 0 }, "open count back to 0")
	wantResult(t, get(t, a, s.URL), http.StatusOK, "")
}

func TestGlobalCap_ManyAddresses_503WithRetryAfter(t *testing.T) {
	o := testOptions()
	o.MaxConns = 5
	o.MaxConnsPerIP = 2
	o.CapRetryAfter = 2500 * time.Millisecond // rounded up to 3
	c := newController(t, o)
	b := newBlocker()
	s := startServer(t, c.Middleware(b), nil)
	t.Cleanup(b.Release) // before the server's Close, so a failing test cannot hang

	var held []<-chan result
	for _, ip := range []string{"127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3", "127.0.0.4"} {
		held = append(held, getAsync(t, clientFrom(ip), s.URL))
	}
	b.waitEntered(t, 5)

	// A fresh address, under its own per-IP cap, finds the relay full.
	wantResult(t, get(t, clientFrom("127.0.0.5"), s.URL), http.StatusServiceUnavailable, "3")
	// An address at its per-IP cap is told it is the problem.
	wantResult(t, get(t, clientFrom("127.0.0.2"), s.URL), http.StatusTooManyRequests, "3")

	b.Release()
	for _, ch := range held {
		<-ch
	}
	eventually(t, func() bool { return c.Stats().OpenConns == 0 }, "open count back to 0")
	wantResult(t, get(t, clientFrom("127.0.0.5"), s.URL), http.StatusOK, "")
}

func TestRateLimit_BucketEmpty_429WithRetryAfter_RefillsWithClock(t *testing.T) {
	clk := newFakeClock()
	o := testOptions()
	o.UpgradeRate = 1
	o.UpgradeBurst = 3
	o.Now = clk.Now
	c := newController(t, o)
	s := startServer(t, c.Middleware(echoIP), nil)
	a, other := clientFrom("127.0.0.2"), clientFrom("127.0.0.3")

	for i := 0; i < 3; i++ {
		wantResult(t, get(t, a, s.URL), http.StatusOK, "")
	}
	wantResult(t, get(t, a, s.URL), http.StatusTooManyRequests, "1")
	// Refused requests do not borrow from the future: hammering keeps the
	// answer at "1 s", it does not grow.
	wantResult(t, get(t, a, s.URL), http.StatusTooManyRequests, "1")
	// Another address has its own bucket.
	wantResult(t, get(t, other, s.URL), http.StatusOK, "")

	clk.Advance(999 * time.Millisecond)
	wantResult(t, get(t, a, s.URL), http.StatusTooManyRequests, "1")
	clk.Advance(time.Millisecond)
	wantResult(t, get(t, a, s.URL), http.StatusOK, "")
	wantResult(t, get(t, a, s.URL), http.StatusTooManyRequests, "1")

	clk.Advance(time.Hour) // refills to the burst, not beyond
	for i := 0; i < 3; i++ {
		wantResult(t, get(t, a, s.URL), http.StatusOK, "")
	}
	wantResult(t, get(t, a, s.URL), http.StatusTooManyRequests, "1")
}

func TestRateLimit_RetryAfter_RoundedUpFromReservationDelay(t *testing.T) {
	clk := newFakeClock()
	o := testOptions()
	o.UpgradeRate = rate.Every(10 * time.Second / 3) // a token every 3.33 s
	o.UpgradeBurst = 1
	o.Now = clk.Now
	c := newController(t, o)
	s := startServer(t, c.Middleware(echoIP), nil)
	a := clientFrom("127.0.0.2")

	wantResult(t, get(t, a, s.URL), http.StatusOK, "")
	wantResult(t, get(t, a, s.URL), http.StatusTooManyRequests, "4")
	clk.Advance(2 * time.Second)
	wantResult(t, get(t, a, s.URL), http.StatusTooManyRequests, "2")
	clk.Advance(1300 * time.Millisecond) // 33 ms short
	wantResult(t, get(t, a, s.URL), http.StatusTooManyRequests, "1")
}

func TestRateLimit_RequestRefusedByCap_StillPaysToken(t *testing.T) {
	clk := newFakeClock()
	o := testOptions()
	o.MaxConnsPerIP = 1
	o.UpgradeRate = 1
	o.UpgradeBurst = 3
	o.Now = clk.Now
	c := newController(t, o)
	ip := netip.MustParseAddr("192.0.2.1")

	e, reason, _ := c.admit(ip)
	if reason != "" {
		t.Fatalf("first admit refused: %s", reason)
	}
	for _, want := range []Reason{ReasonPerIPCap, ReasonPerIPCap, ReasonRateLimited} {
		if _, got, _ := c.admit(ip); got != want {
			t.Fatalf("admit = %q, want %q", got, want)
		}
	}
	c.release(e)
	if _, got, _ := c.admit(ip); got != ReasonRateLimited {
		t.Fatalf("after release, admit = %q, want rate_limited (bucket drained by refused requests)", got)
	}
}

func TestMiddleware_HandlerPanics_SlotReleased(t *testing.T) {
	o := testOptions()
	o.MaxConnsPerIP = 1
	c := newController(t, o)
	s := startServer(t, c.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("boom")
	})), nil)
	a := clientFrom("127.0.0.2")
	for i := 0; i < 3; i++ {
		if _, err := a.Get(s.URL); err == nil {
			t.Fatal("want the aborted response to fail")
		}
	}
	eventually(t, func() bool { return c.Stats().OpenConns == 0 }, "open count back to 0")
}

func TestMiddleware_ContextCarriesClientIP(t *testing.T) {
	c := newController(t, testOptions())
	s := startServer(t, c.Middleware(echoIP), nil)
	if got := get(t, clientFrom("127.0.0.7"), s.URL); got.body != "127.0.0.7" {
		t.Fatalf("client IP in context = %q, want 127.0.0.7", got.body)
	}
	if _, ok := FromContext(t.Context()); ok {
		t.Fatal("FromContext outside the middleware reported ok")
	}
}

func TestOnReject_ReportsEachReason(t *testing.T) {
	var mu sync.Mutex
	got := map[Reason]int{}
	o := testOptions()
	o.MaxConns = 2
	o.MaxConnsPerIP = 1
	o.UpgradeRate = 1
	o.UpgradeBurst = 2
	clk := newFakeClock()
	o.Now = clk.Now
	o.OnReject = func(r Reason, _ netip.Addr) { mu.Lock(); got[r]++; mu.Unlock() }
	c := newController(t, o)
	b := newBlocker()
	s := startServer(t, c.Middleware(b), nil)
	t.Cleanup(b.Release) // before the server's Close, so a failing test cannot hang

	h1 := getAsync(t, clientFrom("127.0.0.2"), s.URL)
	h2 := getAsync(t, clientFrom("127.0.0.3"), s.URL)
	b.waitEntered(t, 2)
	get(t, clientFrom("127.0.0.2"), s.URL) // per-IP cap, second token
	get(t, clientFrom("127.0.0.2"), s.URL) // bucket empty
	get(t, clientFrom("127.0.0.4"), s.URL) // global cap
	b.Release()
	<-h1
	<-h2

	mu.Lock()
	defer mu.Unlock()
	want := map[Reason]int{ReasonPerIPCap: 1, ReasonRateLimited: 1, ReasonGlobalCap: 1}
	for _, r := range AllReasons {
		if got[r] != want[r] {
			t.Fatalf("OnReject counts = %v, want %v", got, want)
		}
	}
}

func TestIPv6_SamePrefix_SharesLimits(t *testing.T) {
	o := testOptions()
	o.MaxConnsPerIP = 1
	c := newController(t, o)
	if _, r, _ := c.admit(netip.MustParseAddr("2001:db8:1:2::1")); r != "" {
		t.Fatalf("first admit refused: %s", r)
	}
	// Same /64, different interface id: the same client.
	if _, r, _ := c.admit(netip.MustParseAddr("2001:db8:1:2:ffff::9")); r != ReasonPerIPCap {
		t.Fatalf("same /64 admit = %q, want per_ip_cap", r)
	}
	// Neighbouring /64: another client.
	if _, r, _ := c.admit(netip.MustParseAddr("2001:db8:1:3::1")); r != "" {
		t.Fatalf("other /64 refused: %s", r)
	}
}

func TestNew_InvalidOptions_Refused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Options)
		want   error
	}{
		{"ZeroMaxConns", func(o *Options) { o.MaxConns = 0 }, ErrInvalidLimit},
		{"NegativePerIP", func(o *Options) { o.MaxConnsPerIP = -1 }, ErrInvalidLimit},
		{"ZeroRate", func(o *Options) { o.UpgradeRate = 0 }, ErrInvalidLimit},
		{"ZeroBurst", func(o *Options) { o.UpgradeBurst = 0 }, ErrInvalidLimit},
		{"ZeroTable", func(o *Options) { o.MaxTrackedIPs = 0 }, ErrInvalidLimit},
		{"TableNotAboveMaxConns", func(o *Options) { o.MaxTrackedIPs = o.MaxConns }, ErrTableTooSmall},
		{"ZeroIdleTTL", func(o *Options) { o.IdleTTL = 0 }, ErrInvalidDuration},
		{"ZeroCapRetryAfter", func(o *Options) { o.CapRetryAfter = 0 }, ErrInvalidDuration},
		{"IPv6PrefixTooShort", func(o *Options) { o.IPv6PrefixLen = 16 }, ErrInvalidIPv6PrefixLen},
		{"IPv6PrefixTooLong", func(o *Options) { o.IPv6PrefixLen = 129 }, ErrInvalidIPv6PrefixLen},
		{"TrustEveryIPv4", func(o *Options) { o.TrustedProxies = mustPrefixes(t, "0.0.0.0/0") }, ErrInvalidTrustedProxy},
		{"TrustEveryIPv6", func(o *Options) { o.TrustedProxies = mustPrefixes(t, "::/0") }, ErrInvalidTrustedProxy},
		{"TrustEveryMappedIPv4", func(o *Options) { o.TrustedProxies = mustPrefixes(t, "::ffff:0.0.0.0/96") }, ErrInvalidTrustedProxy},
		{"InvalidPrefix", func(o *Options) { o.TrustedProxies = []netip.Prefix{{}} }, ErrInvalidTrustedProxy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			tc.mutate(&o)
			c, err := New(o)
			if !errors.Is(err, tc.want) || c != nil {
				t.Fatalf("New = %v, %v; want nil, %v", c, err, tc.want)
			}
		})
	}
}

func TestDefaultOptions_Valid(t *testing.T) {
	c := newController(t, DefaultOptions())
	if st := c.Stats(); st != (Stats{}) {
		t.Fatalf("fresh Stats = %+v", st)
	}
}

func TestRetryAfterSeconds_RoundsUpAtLeastOne(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                       "1",
		time.Nanosecond:         "1",
		time.Second:             "1",
		time.Second + 1:         "2",
		10 * time.Second:        "10",
		rate.InfDuration:        "86400",
		-5 * time.Second:        "1",
		2500 * time.Millisecond: "3",
	} {
		if got := retryAfterSeconds(d); got != want {
			t.Errorf("retryAfterSeconds(%v) = %q, want %q", d, got, want)
		}
	}
}
