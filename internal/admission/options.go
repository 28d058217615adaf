package admission

import (
	"errors"
	"math"
	"net/netip"
	"time"

	"golang.org/x/time/rate"

	"github.com/pyrycode/relay/internal/fielderr"
)

// Options configures a Controller. Every limit is per relay process.
type Options struct {
	// MaxConns caps connections admitted by the middleware and not yet
	// finished, across all clients. Over it the relay answers 503 with
	// Retry-After: "the relay is full, try later". It is the backstop that
	// bounds goroutines, file descriptors and buffers however many
	// addresses an attacker controls. Remember to raise the process's
	// file-descriptor limit (ulimit -n) above it.
	MaxConns int

	// MaxConnsPerIP caps open connections charged to one client address
	// (one IPv4 address, or one IPv6 prefix of IPv6PrefixLen bits). Over it
	// the relay answers 429: "you in particular have enough". Too low and
	// everyone behind one NAT (an office, carrier-grade NAT) shares a
	// small allowance; too high and one host can take a large slice of
	// MaxConns.
	MaxConnsPerIP int

	// UpgradeRate is the sustained number of requests per second one
	// client address may make through the middleware (each WebSocket
	// upgrade attempt is one request), refilled continuously.
	// rate.Inf disables the limit. Every request consumes a token, even one
	// that is then refused by a cap or fails header validation, so that
	// hammering a full relay or sending garbage drains the bucket too.
	UpgradeRate rate.Limit

	// UpgradeBurst is the bucket size: how many requests one address may
	// make back to back before UpgradeRate applies. It should cover a
	// household's devices reconnecting together after a network change.
	UpgradeBurst int

	// MaxTrackedIPs caps the per-IP state table (token bucket and open
	// count per address). It is the memory bound: about 250 bytes per
	// entry (see table.go), so 65536 entries are about 16 MiB. It must
	// exceed MaxConns, so that a new address can always evict an entry not
	// held by an open connection.
	MaxTrackedIPs int

	// IdleTTL lets an entry with no open connection be evicted after this
	// long without a request even if its bucket has not refilled. Entries
	// whose bucket is full are evictable at once (a full bucket is what a
	// new entry gets, so dropping it forgives nothing). Set it to at least
	// UpgradeBurst/UpgradeRate, or eviction forgives part of a drained
	// bucket early.
	IdleTTL time.Duration

	// IPv6PrefixLen is how many leading bits of an IPv6 address identify
	// one client for the per-IP limits. A single subscriber is routinely
	// given a /64 (or more) and can rotate through it at will, so keying by
	// full /128 addresses would make every per-IP limit free to evade.
	// IPv4 addresses are always keyed in full. ClientIP and the request
	// context still carry the full address.
	IPv6PrefixLen int

	// CapRetryAfter is the Retry-After sent with a connection-cap refusal
	// (429 per-IP cap, 503 global cap), rounded up to whole seconds. A
	// slot frees when some connection ends, which the relay cannot
	// predict; too short invites a reconnect storm against a full relay.
	// Rate-limit refusals compute their own Retry-After from the bucket.
	CapRetryAfter time.Duration

	// TrustedProxies are the reverse proxies whose X-Forwarded-For the
	// relay believes. A request whose socket peer is outside these prefixes
	// is charged to the peer, whatever headers it sends. Empty means trust
	// nobody (the relay faces clients directly). A prefix covering every
	// address (/0) is refused: it would let any client choose its address.
	TrustedProxies []netip.Prefix

	// Now is the clock for rate limiting and eviction; nil means time.Now.
	// Tests inject a fake clock.
	Now func() time.Time

	// OnReject, if set, is called once per refused request with the reason
	// and the client address it was charged to (after the answer is
	// decided, outside any lock). Use it to count and log rejections; it
	// must be safe for concurrent use and fast.
	OnReject func(Reason, netip.Addr)
}

// Defaults, sized for a small VPS (1–2 vCPU, 1–2 GiB RAM).
const (
	// DefaultMaxConns: one WebSocket costs roughly 50–100 KiB (goroutines,
	// TLS and bufio buffers), so 4096 connections stay well under 1 GiB
	// before message queues, which the routing core caps separately.
	DefaultMaxConns = 4096
	// DefaultMaxConnsPerIP: one person is one daemon and a few phones; 64
	// leaves room for a NAT'd household or small office, while one host
	// can take at most 1/64 of the relay.
	DefaultMaxConnsPerIP = 64
	// DefaultUpgradeRate: a well-behaved client reconnects with backoff,
	// far below 2 per second; 2/s sustained is ~170k upgrades a day per
	// address, cheap to serve, and TLS handshakes beyond that are refused.
	DefaultUpgradeRate rate.Limit = 2
	// DefaultUpgradeBurst: after a relay restart or a network change every
	// device behind one address reconnects at once; 20 covers a household,
	// a bigger NAT drains at 2/s, guided by Retry-After.
	DefaultUpgradeBurst = 20
	// DefaultMaxTrackedIPs: 65536 entries ≈ 16 MiB, and as many distinct
	// recent addresses as a small relay will legitimately see; beyond it
	// the least recently used idle entries are recycled.
	DefaultMaxTrackedIPs = 65536
	// DefaultIdleTTL: far above the 10 s a default bucket takes to refill,
	// so it only matters for very low configured rates.
	DefaultIdleTTL = 5 * time.Minute
	// DefaultIPv6PrefixLen: a /64 is the smallest IPv6 allocation one
	// subscriber normally gets.
	DefaultIPv6PrefixLen = 64
	// DefaultCapRetryAfter: long enough that a full relay is not hammered,
	// short enough that a phone comes back promptly once a slot frees.
	DefaultCapRetryAfter = 10 * time.Second
)

// DefaultOptions returns the defaults above, with no trusted proxies.
func DefaultOptions() Options {
	return Options{
		MaxConns:      DefaultMaxConns,
		MaxConnsPerIP: DefaultMaxConnsPerIP,
		UpgradeRate:   DefaultUpgradeRate,
		UpgradeBurst:  DefaultUpgradeBurst,
		MaxTrackedIPs: DefaultMaxTrackedIPs,
		IdleTTL:       DefaultIdleTTL,
		IPv6PrefixLen: DefaultIPv6PrefixLen,
		CapRetryAfter: DefaultCapRetryAfter,
	}
}

// Option validation errors. Validate returns a *fielderr.Error naming the
// field and wrapping one of these, so callers (config validation, exit 2)
// can render it as a flag and test it with errors.Is.
var (
	// ErrInvalidLimit: a count (MaxConns, MaxConnsPerIP, UpgradeBurst,
	// MaxTrackedIPs) is below 1, or UpgradeRate is not a positive number.
	ErrInvalidLimit = errors.New("relay: admission: invalid limit")
	// ErrTableTooSmall: MaxTrackedIPs does not exceed MaxConns, so open
	// connections could pin every entry and lock out new addresses.
	ErrTableTooSmall = errors.New("relay: admission: max tracked IPs must exceed max conns")
	// ErrInvalidDuration: IdleTTL or CapRetryAfter is not positive.
	ErrInvalidDuration = errors.New("relay: admission: duration must be positive")
	// ErrInvalidIPv6PrefixLen: IPv6PrefixLen is outside 32..128; shorter
	// prefixes lump whole providers together.
	ErrInvalidIPv6PrefixLen = errors.New("relay: admission: IPv6 prefix length must be 32..128")
	// ErrInvalidTrustedProxy: a trusted prefix is invalid or covers every
	// address (/0).
	ErrInvalidTrustedProxy = errors.New("relay: admission: invalid trusted proxy prefix")
)

// Validate reports the first unusable value as a *fielderr.Error wrapping
// one of the Err* sentinels above. Options must start from DefaultOptions:
// a zero count or duration is refused, not read as a default.
func (o Options) Validate() error {
	_, err := o.validate()
	return err
}

// validate checks o and returns the normalised trusted prefixes.
func (o *Options) validate() ([]netip.Prefix, error) {
	bad := func(field string, v any, want string, sentinel error) error {
		return &fielderr.Error{Field: field, Value: v, Want: want, Err: sentinel}
	}
	for _, c := range []struct {
		name string
		v    int
	}{
		{"MaxConns", o.MaxConns},
		{"MaxConnsPerIP", o.MaxConnsPerIP},
		{"UpgradeBurst", o.UpgradeBurst},
		{"MaxTrackedIPs", o.MaxTrackedIPs},
	} {
		if c.v < 1 {
			return nil, bad(c.name, c.v, "at least 1", ErrInvalidLimit)
		}
	}
	if !(o.UpgradeRate > 0) || math.IsInf(float64(o.UpgradeRate), 1) { // NaN fails every comparison
		return nil, bad("UpgradeRate", float64(o.UpgradeRate), "a positive number", ErrInvalidLimit)
	}
	if o.MaxTrackedIPs <= o.MaxConns {
		return nil, &fielderr.Error{Field: "MaxTrackedIPs", Value: o.MaxTrackedIPs, Want: "more than", Than: "MaxConns", ThanValue: o.MaxConns, Err: ErrTableTooSmall}
	}
	if o.IdleTTL <= 0 {
		return nil, bad("IdleTTL", o.IdleTTL, "positive", ErrInvalidDuration)
	}
	if o.CapRetryAfter <= 0 {
		return nil, bad("CapRetryAfter", o.CapRetryAfter, "positive", ErrInvalidDuration)
	}
	if o.IPv6PrefixLen < 32 || o.IPv6PrefixLen > 128 {
		return nil, bad("IPv6PrefixLen", o.IPv6PrefixLen, "32..128", ErrInvalidIPv6PrefixLen)
	}
	return normalizePrefixes(o.TrustedProxies)
}

// normalizePrefixes masks each prefix and rewrites IPv4-mapped IPv6
// prefixes as IPv4, matching how addresses are normalised before lookup.
func normalizePrefixes(in []netip.Prefix) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if !p.IsValid() {
			return nil, &fielderr.Error{Field: "TrustedProxies", Value: p, Want: "a valid prefix", Err: ErrInvalidTrustedProxy}
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		if p.Bits() == 0 {
			return nil, &fielderr.Error{Field: "TrustedProxies", Value: p, Want: "narrower than /0 (it would trust every address)", Err: ErrInvalidTrustedProxy}
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
