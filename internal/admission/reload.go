package admission

import (
	"errors"
	"slices"
)

// ErrNotReloadable is returned by SetLimits when o changes an option that
// only New applies (the table size, IdleTTL, IPv6PrefixLen, CapRetryAfter,
// the trusted proxies): the caller keeps those and says so.
var ErrNotReloadable = errors.New("relay: admission: option cannot change while running")

// SetLimits applies o's MaxConns, MaxConnsPerIP, UpgradeRate and
// UpgradeBurst to a running Controller (SIGHUP). o must validate, and
// every other option must equal the Controller's (ErrNotReloadable).
// Connections already admitted stay: a lowered cap refuses new ones until
// enough have closed. Every tracked address's bucket takes the new rate
// and burst at once and keeps the tokens it has (up to the new burst), so
// a reload neither refills a drained bucket nor empties a full one.
func (c *Controller) SetLimits(o Options) error {
	trusted, err := o.validate()
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if o.MaxTrackedIPs != c.tab.max || int64(o.IdleTTL) != c.tab.ttl || o.IPv6PrefixLen != c.v6Bits ||
		retryAfterSeconds(o.CapRetryAfter) != c.capRetry || !slices.Equal(trusted, c.trusted) {
		return ErrNotReloadable
	}
	c.maxConns, c.perIP = o.MaxConns, o.MaxConnsPerIP
	t := c.tab
	if t.rate == o.UpgradeRate && t.burst == o.UpgradeBurst {
		return nil
	}
	t.rate, t.burst = o.UpgradeRate, o.UpgradeBurst
	now := c.now()
	for _, e := range t.m {
		e.lim.SetLimitAt(now, o.UpgradeRate)
		e.lim.SetBurstAt(now, o.UpgradeBurst)
	}
	return nil
}

// Limits reports the Controller's current caps and rate (tests, the log).
func (c *Controller) Limits() (maxConns, perIP int, upgradeRate float64, upgradeBurst int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxConns, c.perIP, float64(c.tab.rate), c.tab.burst
}

// SocketCaps is implemented by the listener LimitListener returns: its
// caps can change while it accepts (SIGHUP).
type SocketCaps interface {
	// SetCaps applies Max and MaxPerIP (validated as SocketLimits). Open
	// sockets stay; a lowered cap closes new ones at accept until enough
	// have closed.
	SetCaps(max, perIP int) error
}

func (ll *limitListener) SetCaps(max, perIP int) error {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	l := ll.l
	l.Max, l.MaxPerIP = max, perIP
	if err := l.Validate(); err != nil {
		return err
	}
	ll.l.Max, ll.l.MaxPerIP = max, perIP
	return nil
}

var _ SocketCaps = (*limitListener)(nil)
