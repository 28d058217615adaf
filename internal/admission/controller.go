package admission

import (
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Controller enforces the connection caps and the per-IP upgrade rate limit.
// One Controller serves the whole relay; it is safe for concurrent use.
type Controller struct {
	trusted  []netip.Prefix
	perIP    int
	maxConns int
	v6Bits   int
	now      func() time.Time
	onReject func(Reason, netip.Addr)
	capRetry string // CapRetryAfter in whole seconds, preformatted

	mu   sync.Mutex
	open int // admitted requests whose handler has not returned
	tab  *table
}

// Stats is a point-in-time snapshot for metrics and tests.
type Stats struct {
	// OpenConns is the number of admitted requests still in their handler.
	OpenConns int
	// TrackedIPs is the number of per-IP entries held (≤ MaxTrackedIPs).
	TrackedIPs int
	// ForcedEvictions counts entries dropped before their bucket refilled
	// because the table was full: a sign of an address-rotation flood.
	ForcedEvictions uint64
}

// New validates o and returns a Controller. Errors wrap the Err* sentinels
// of this package.
func New(o Options) (*Controller, error) {
	trusted, err := o.validate()
	if err != nil {
		return nil, err
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	return &Controller{
		trusted:  trusted,
		perIP:    o.MaxConnsPerIP,
		maxConns: o.MaxConns,
		v6Bits:   o.IPv6PrefixLen,
		now:      now,
		onReject: o.OnReject,
		capRetry: retryAfterSeconds(o.CapRetryAfter),
		tab:      newTable(o.MaxTrackedIPs, o.UpgradeRate, o.UpgradeBurst, o.IdleTTL),
	}, nil
}

// Stats returns current counts.
func (c *Controller) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{OpenConns: c.open, TrackedIPs: c.tab.len(), ForcedEvictions: c.tab.forcedEvictions}
}

// Middleware admits or refuses each request before next sees it. A refusal
// is an empty-bodied 429 (rate limit, per-IP cap) or 503 (global cap) with
// Retry-After in seconds. An admitted request counts against the caps until
// next returns, so next must block for the life of the connection, as the
// relay's WebSocket handlers do. The resolved client address is in the
// request context (FromContext). The middleware looks at no path: routing
// /healthz around it is the server's job.
func (c *Controller) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip := c.ClientIP(r)
		e, reason, retry := c.admit(ip)
		if reason != "" {
			w.Header().Set("Retry-After", retry)
			w.WriteHeader(reason.status())
			if c.onReject != nil {
				c.onReject(reason, ip)
			}
			return
		}
		defer c.release(e)
		next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), ip)))
	})
}

// key maps a client address to its per-IP entry: IPv4 in full, IPv6 by
// its IPv6PrefixLen-bit prefix.
func (c *Controller) key(ip netip.Addr) netip.Addr {
	if ip.Is6() && c.v6Bits < 128 {
		p, _ := ip.Prefix(c.v6Bits)
		return p.Addr()
	}
	return ip
}

// admit is the whole decision for one request. On success it returns the
// pinned entry, to be passed to release; otherwise the reason and the
// Retry-After value.
//
// Order: the token is taken first, so every request pays, even one a cap
// then refuses; the per-IP cap is checked before the global one so that a
// host over its own share is told so (429) rather than "relay full".
func (c *Controller) admit(ip netip.Addr) (e *entry, reason Reason, retryAfter string) {
	now := c.now()
	key := c.key(ip)

	c.mu.Lock()
	defer c.mu.Unlock()

	e = c.tab.get(key, now)
	if e == nil {
		return nil, ReasonTableFull, c.capRetry
	}
	c.tab.touch(e, now)
	c.tab.sweep(sweepPerAdmit, now, e)

	if !e.lim.AllowN(now, 1) {
		// Ask the bucket when the next token is due, then hand the
		// reservation back: a refused request must not borrow from the
		// future, or a client hammering the relay would push its own
		// Retry-After ever later.
		res := e.lim.ReserveN(now, 1)
		d := res.DelayFrom(now)
		res.CancelAt(now)
		return nil, ReasonRateLimited, retryAfterSeconds(d)
	}
	if e.open >= c.perIP {
		return nil, ReasonPerIPCap, c.capRetry
	}
	if c.open >= c.maxConns {
		return nil, ReasonGlobalCap, c.capRetry
	}
	c.tab.pin(e)
	c.open++
	return e, "", ""
}

// release ends an admission made by admit.
func (c *Controller) release(e *entry) {
	now := c.now()
	c.mu.Lock()
	c.tab.unpin(e, now)
	c.open--
	c.mu.Unlock()
}

// retryAfterSeconds renders d as a Retry-After delay: whole seconds, rounded
// up, at least 1 (0 would invite an immediate retry that is refused again).
func retryAfterSeconds(d time.Duration) string {
	s := math.Ceil(d.Seconds())
	if s < 1 || math.IsNaN(s) {
		s = 1
	}
	if s > 86400 { // InfDuration (bucket can never refill) or absurd rates
		s = 86400
	}
	return strconv.Itoa(int(s))
}
