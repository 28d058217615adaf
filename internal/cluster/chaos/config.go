package chaos

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is one run. The zero value of a field is its default (Defaults).
type Config struct {
	// Seed fixes the fault schedule and every actor's random choices
	// (which instance, how long, how big). Timing on a real machine is not
	// replayed: a seed reproduces the schedule, not the interleaving.
	Seed int64
	// Duration bounds the traffic and fault phase; the schedule repeats
	// rounds of its fault variants until it is over (at least one round).
	Duration time.Duration
	// Relay is the relay binary to run (built by the caller).
	Relay string
	// Faults are the kinds the schedule injects (default AllFaults).
	Faults []FaultKind
	// Tenants and PhonesPerTenant size the traffic.
	Tenants, PhonesPerTenant int
	// Timers of the relays (short, so faults play out in seconds).
	Lease, Grace, Probe, PingInterval, PongTimeout time.Duration
	// Sizes of the relays.
	MaxMessage, PhoneQueue, MaxQueued, SocketSendBuffer int
	// Slack is the checker's allowance for a loaded machine (Params.Slack).
	Slack time.Duration
	// ClaimAt101: Params.ClaimAt101 (default claimAt101; CHAOS_CLAIM_AT_101
	// sets it).
	ClaimAt101 *bool
	// Waivers excuse known defects (KnownDefects; Strict: none).
	Waivers []Waiver
	Strict  bool
	// Logf receives progress lines (nil: none).
	Logf func(format string, a ...any)
	// Tamper, when set, sees every delivery before it is recorded and
	// returns what to record instead (nil: drop it). Only the checker's
	// own tests set it: it injects a fault into the history the cluster
	// did not make (a reordered delivery), which the checker must catch.
	Tamper func(Delivery) []Delivery
}

// Defaults fills zero fields.
func (c Config) Defaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defi := func(d *int, v int) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Duration, 45*time.Second)
	def(&c.Lease, 4*time.Second)
	def(&c.Grace, 2*time.Second)
	def(&c.Probe, 500*time.Millisecond)
	def(&c.PingInterval, 3*time.Second)
	def(&c.PongTimeout, 3*time.Second)
	def(&c.Slack, time.Second)
	defi(&c.Tenants, 8)
	defi(&c.PhonesPerTenant, 3)
	defi(&c.MaxMessage, 8<<10)
	defi(&c.PhoneQueue, 48<<10)
	defi(&c.MaxQueued, 160<<10)
	defi(&c.SocketSendBuffer, 16<<10)
	if c.Faults == nil {
		c.Faults = AllFaults
	}
	if c.ClaimAt101 == nil {
		on := claimAt101
		c.ClaimAt101 = &on
	}
	if c.Waivers == nil && !c.Strict {
		c.Waivers = KnownDefects
	}
	if c.Strict {
		c.Waivers = nil
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	return c
}

// clientRcvBuf is SO_RCVBUF of the harness's binaries and phones: small,
// so that a client that stops reading leaves little in its kernel buffer
// and the relay's queues hold the rest (checkBudgets).
const clientRcvBuf = 8 << 10

// Params is what the checker holds this run to.
func (c Config) Params() Params {
	return Params{Instances: 3, Lease: c.Lease, Grace: c.Grace, Slack: c.Slack, MaxQueued: c.MaxQueued, PhoneQueue: c.PhoneQueue,
		// Both kernel buffers (doubled by the kernel), the libraries'
		// buffers and two largest messages.
		KernelSlack: 2*c.SocketSendBuffer + 2*clientRcvBuf + 32<<10 + 2*c.MaxMessage,
		ClaimAt101:  c.ClaimAt101 != nil && *c.ClaimAt101}
}

// FromEnv applies the CHAOS_* variables `make chaos` documents:
// CHAOS_SEED, CHAOS_DURATION, CHAOS_FAULTS (comma-separated kinds),
// CHAOS_TENANTS, CHAOS_PHONES, CHAOS_LEASE, CHAOS_SLACK, CHAOS_CLAIM_AT_101,
// CHAOS_STRICT (no waivers).
func (c Config) FromEnv() (Config, error) {
	var err error
	get := func(k string) string { return strings.TrimSpace(os.Getenv(k)) }
	if v := get("CHAOS_SEED"); v != "" {
		if c.Seed, err = strconv.ParseInt(v, 10, 64); err != nil {
			return c, fmt.Errorf("CHAOS_SEED: %w", err)
		}
	}
	for k, d := range map[string]*time.Duration{"CHAOS_DURATION": &c.Duration, "CHAOS_LEASE": &c.Lease, "CHAOS_SLACK": &c.Slack} {
		if v := get(k); v != "" {
			if *d, err = time.ParseDuration(v); err != nil {
				return c, fmt.Errorf("%s: %w", k, err)
			}
		}
	}
	for k, d := range map[string]*int{"CHAOS_TENANTS": &c.Tenants, "CHAOS_PHONES": &c.PhonesPerTenant} {
		if v := get(k); v != "" {
			if *d, err = strconv.Atoi(v); err != nil {
				return c, fmt.Errorf("%s: %w", k, err)
			}
		}
	}
	if v := get("CHAOS_FAULTS"); v != "" {
		if c.Faults, err = ParseFaults(v); err != nil {
			return c, err
		}
	}
	if v := get("CHAOS_CLAIM_AT_101"); v != "" {
		on := v == "1" || v == "true"
		c.ClaimAt101 = &on
	}
	if v := get("CHAOS_STRICT"); v != "" {
		c.Strict = v == "1" || v == "true"
	}
	return c, nil
}

// ParseFaults reads a comma-separated list of fault kinds ("all" for
// every one).
func ParseFaults(s string) ([]FaultKind, error) {
	if s == "all" {
		return AllFaults, nil
	}
	var out []FaultKind
	for _, f := range strings.Split(s, ",") {
		k := FaultKind(strings.TrimSpace(f))
		ok := false
		for _, a := range AllFaults {
			ok = ok || a == k
		}
		if !ok {
			return nil, fmt.Errorf("chaos: unknown fault kind %q (kinds: %v)", k, AllFaults)
		}
		out = append(out, k)
	}
	return out, nil
}

// Replay is the command that reruns c's schedule.
func (c Config) Replay() string {
	kinds := make([]string, len(c.Faults))
	for i, k := range c.Faults {
		kinds[i] = string(k)
	}
	return fmt.Sprintf("make chaos CHAOS_SEED=%d CHAOS_DURATION=%v CHAOS_FAULTS=%s CHAOS_TENANTS=%d CHAOS_PHONES=%d CHAOS_LEASE=%v CHAOS_SLACK=%v CHAOS_CLAIM_AT_101=%v CHAOS_STRICT=%v",
		c.Seed, c.Duration, strings.Join(kinds, ","), c.Tenants, c.PhonesPerTenant, c.Lease, c.Slack, c.Params().ClaimAt101, c.Strict)
}
