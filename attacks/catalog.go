// Package attacks is the relay's executable threat model: a catalog of
// attack scenarios, each proving one or more defences listed in
// docs/threat-model.md by attacking a running relay from outside.
//
// The package is a black box on purpose. It imports nothing from the
// relay's internal packages and reaches the relay only over the network
// (and, for local-only scenarios, through the process it starts), so the
// same scenarios run in `go test ./attacks` against a freshly built binary
// and, through `relay attack --target URL`, against a deployed relay.
//
// Adding a scenario is one file named after its ID (ATK-PER-IP-FLOOD lives
// in scenario_peripflood.go) holding a func returning a Scenario, plus one
// line in Catalog. Reach the target through target.go, set up "a relay + a
// binary + phones" with newStage (stage.go), and give the threat a
// **Defence** line and a mutant (attacks/mutants/README.md); the tests in
// coverage_test.go say what is missing.
package attacks

import (
	"context"
	"fmt"
	"time"
)

// Mode says where a scenario may run.
type Mode int

const (
	// RemoteSafe scenarios open a bounded number of connections and bytes
	// (documented on each scenario as Bounds) and may run against a
	// deployed relay.
	RemoteSafe Mode = iota
	// LocalOnly scenarios need the relay's process: they start their own
	// relay with chosen flags, read its log, or use a test-only build.
	LocalOnly
)

func (m Mode) String() string {
	switch m {
	case RemoteSafe:
		return "remote-safe"
	case LocalOnly:
		return "local-only"
	}
	return "unknown"
}

// Verdict is a scenario's outcome.
type Verdict int

const (
	// Pass: the attack was made and the defence held.
	Pass Verdict = iota
	// Fail: the defence did not hold (or the relay misbehaved).
	Fail
	// Skip: the scenario does not apply here (a local-only scenario against
	// a remote target, a TLS check against plain HTTP); Evidence says why.
	Skip
	// CouldNotRun: the target could not be reached before the scenario
	// started, an output file could not be written, or the run's deadline
	// ran out first: nothing was attacked, so nothing is known about the
	// defence. Not a finding; `relay attack` exits 3 when nothing failed.
	CouldNotRun
)

func (v Verdict) String() string {
	switch v {
	case Pass:
		return "PASS"
	case Fail:
		return "FAIL"
	case Skip:
		return "SKIP"
	case CouldNotRun:
		return "COULD-NOT-RUN"
	}
	return "UNKNOWN"
}

// MarshalText renders the verdict as its name in JSON reports.
func (v Verdict) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// MarshalText renders the mode as its name in JSON reports.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText parses a verdict name, so JSON reports round-trip.
func (v *Verdict) UnmarshalText(b []byte) error {
	for _, c := range []Verdict{Pass, Fail, Skip, CouldNotRun} {
		if c.String() == string(b) {
			*v = c
			return nil
		}
	}
	return fmt.Errorf("attacks: unknown verdict %q", b)
}

// UnmarshalText parses a mode name, so JSON reports round-trip.
func (m *Mode) UnmarshalText(b []byte) error {
	for _, c := range []Mode{RemoteSafe, LocalOnly} {
		if c.String() == string(b) {
			*m = c
			return nil
		}
	}
	return fmt.Errorf("attacks: unknown mode %q", b)
}

// Scenario is one attack. Run must return Fail when the defence it names is
// removed: a scenario that cannot fail proves nothing.
type Scenario struct {
	ID      string   // stable, e.g. "ATK-SLOWLORIS"
	Title   string   // one line
	Threats []string // threat IDs in docs/threat-model.md, e.g. "TM-DOS-1"
	Mode    Mode
	// Bounds states the load the scenario puts on a remote relay (connections
	// and bytes at most). Required for RemoteSafe scenarios.
	Bounds string
	// LocalOnly says why a LocalOnly scenario cannot run against a
	// deployment (what it needs that a client does not have, or the harm
	// it would do). `relay attack --list` prints it in place of the bounds.
	LocalOnly string
	// TLSOnly scenarios attack the relay's own TLS listener. Against a
	// plain-HTTP target they report Skip; `go test ./attacks` runs them
	// against a relay in static-certificate mode.
	TLSOnly bool
	// BehindProxy says what this scenario proves when the target is a
	// TLS-terminating (layer-7) proxy in front of the relay (`relay attack
	// --profile behind-proxy`). The zero value: the relay, as when reached
	// directly.
	BehindProxy ProxyNote
	Run         func(ctx context.Context, t *Target) Result
}

// Profile says what stands between `relay attack` and the relay.
type Profile int

const (
	// Direct: the relay's own listener, or a layer-4 balancer that passes
	// TCP through (PROXY protocol v2); the relay terminates TLS and every
	// verdict is the relay's.
	Direct Profile = iota
	// BehindProxy: a TLS-terminating (layer-7) proxy such as nginx. The
	// proxy answers the TLS handshake, reads the request headers first and
	// picks the virtual host, so some verdicts are the proxy's: reports
	// label each scenario with what it tested (ProxyNote), and the few
	// checks whose exact answer is an implementation's choice rather than
	// the defence accept the proxy's documented answer (each scenario says
	// which).
	BehindProxy
)

func (p Profile) String() string {
	switch p {
	case Direct:
		return "direct"
	case BehindProxy:
		return "behind-proxy"
	}
	return "unknown"
}

// ParseProfile parses a --profile value ("" is Direct).
func ParseProfile(s string) (Profile, error) {
	switch s {
	case "", "direct":
		return Direct, nil
	case "behind-proxy":
		return BehindProxy, nil
	}
	return Direct, fmt.Errorf("--profile %s is not a profile: use direct or behind-proxy", s)
}

// What a scenario tests behind a TLS-terminating proxy.
const (
	TestsRelay = "relay"       // the relay's defence; the proxy only forwards
	TestsProxy = "proxy"       // the proxy's configuration; the relay is not reached, or not asked
	TestsBoth  = "relay+proxy" // some requests are answered by the proxy, the rest by the relay
)

// ProxyNote is what a scenario tests behind a TLS-terminating proxy, and why.
type ProxyNote struct {
	Tests string // TestsRelay (the zero value means it too), TestsProxy or TestsBoth
	Why   string
}

// Result is what a scenario observed.
type Result struct {
	Verdict  Verdict `json:"verdict"`
	Evidence string  `json:"evidence"` // short and human: what was attacked, what was seen
}

// Report is one scenario's run.
type Report struct {
	Scenario Scenario
	Result   Result
	Duration time.Duration
	// Proxy is set under --profile behind-proxy: what the verdict tested.
	Proxy *ProxyNote
}

// Passf, Failf, Skipf and CouldNotRunf build results.
func Passf(format string, a ...any) Result        { return Result{Pass, sprintf(format, a...)} }
func Failf(format string, a ...any) Result        { return Result{Fail, sprintf(format, a...)} }
func Skipf(format string, a ...any) Result        { return Result{Skip, sprintf(format, a...)} }
func CouldNotRunf(format string, a ...any) Result { return Result{CouldNotRun, sprintf(format, a...)} }

// Catalog lists every scenario in a stable order.
func Catalog() []Scenario {
	return []Scenario{
		slowLoris(),
		oversizedFrame(),
		slowConsumer(),
		slowBinary(),
		crossTenant(),
		headerAbuse(),
		bodyLeak(),
		forcedPanic(),
		logScrape(),
		slowMessage(),
		deadPeer(),
		clusterCrossTenant(),
		clusterDeadOwner(),
		clusterSplitBrain(),
		clusterRogueInstance(),
		tokenForward(),
		tlsVersion(),
		tlsSuites(),
		hostMismatch(),
		cacheDir(),
		connFlood(),
		perIPFlood(),
		retryStorm(),
		queueCeiling(),
		spoofIP(),
		socketFlood(),
		pushFlood(),
		pushTokenLeak(),
		fcmCredentials(),
		frameSmuggle(),
		pushCleartext(),
		pushTokenStall(),
	}
}
