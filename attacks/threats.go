package attacks

// Status says how a threat in docs/threat-model.md is checked.
type Status int

const (
	// Verified: one or more scenarios in Catalog attack the defence.
	Verified Status = iota
	// NotExecutable: the threat is operational or cannot be attacked from
	// outside in bounded time; Note says why.
	NotExecutable
	// Pending: the defence is executable but its scenario is not written
	// yet; Note names the planned scenario. `relay attack --list` and the
	// coverage test show these so the gap cannot hide.
	Pending
)

func (s Status) String() string {
	switch s {
	case Verified:
		return "verified"
	case NotExecutable:
		return "not executable"
	case Pending:
		return "NOT YET VERIFIED"
	}
	return "unknown"
}

// Threat is one entry of the threat model's index. The list is kept in Go,
// not read from docs/, because `relay attack --list` runs on an operator's
// machine without the repository; TestThreatModelCoverage keeps it equal
// to docs/threat-model.md.
type Threat struct {
	ID     string
	Title  string
	Status Status
	Note   string // reason (NotExecutable) or planned scenario (Pending)
}

// Threats is the threat model's index, in document order.
func Threats() []Threat {
	return []Threat{
		{"TM-DEP-1", "Rooted host sees every byte", NotExecutable, "operational: whoever controls the host controls the process"},
		{"TM-DEP-2", "Access and SSH keys", NotExecutable, "operational: host access policy, outside the binary"},
		{"TM-DEP-3", "OS updates and intrusion detection", NotExecutable, "operational: host maintenance, outside the binary"},
		{"TM-SUP-1", "Malicious dependency release", NotExecutable, "build-time: reviewed per dependency, see the module table"},
		{"TM-SUP-2", "Unverified or vulnerable modules", NotExecutable, "build-time: verified in CI by the offline `make vulncheck` gate (pinned vulndb), not by a runtime scenario"},
		{"TM-DOS-1", "Slow-loris request headers", Verified, ""},
		{"TM-DOS-2", "Slow message body", Verified, ""},
		{"TM-DOS-3", "Oversized frames", Verified, ""},
		{"TM-DOS-4", "Slow consumer", Verified, ""},
		{"TM-DOS-5", "Connection flood (global cap)", Verified, ""},
		{"TM-DOS-6", "Per-IP flood and upgrade rate", Verified, ""},
		{"TM-DOS-7", "Client retry storm", Verified, ""},
		{"TM-DOS-8", "Relay-wide queued bytes", Verified, ""},
		{"TM-DOS-9", "Bandwidth amplification", Verified, ""},
		{"TM-DOS-10", "Dead peers hold resources", Verified, ""},
		{"TM-DOS-11", "Phones get their binary closed", Verified, ""},
		{"TM-LOG-1", "Secrets and payloads in logs", Verified, ""},
		{"TM-LOG-2", "Log injection", Verified, ""},
		{"TM-LOG-3", "Log rotation and retention", NotExecutable, "operational: journald/logrotate policy on the host"},
		{"TM-CERT-1", "Insecure certificate cache directory", Verified, ""},
		{"TM-CERT-2", "Certificate and key rotation", NotExecutable, "autocert renews about 30 days before expiry; not compressible into a black-box run"},
		{"TM-TLS-1", "TLS protocol downgrade", Verified, ""},
		{"TM-TLS-2", "Weak cipher suites", Verified, ""},
		{"TM-LEAK-1", "Internal detail in 500 responses", Verified, ""},
		{"TM-LEAK-2", "Echoed input in 4xx responses", Verified, ""},
		{"TM-LEAK-3", "Health and metrics exposure", Verified, ""},
		{"TM-ROUTE-1", "Cross-tenant routing", Verified, ""},
		{"TM-ROUTE-2", "Upgrade header and server-id abuse", Verified, ""},
		{"TM-ROUTE-3", "conn_id guessing", Verified, ""},
		{"TM-ROUTE-4", "Device tokens forwarded to a squatter", Verified, ""},
		{"TM-ROUTE-5", "Smuggled envelope fields in a malformed frame", Verified, ""},
		{"TM-NET-1", "Spoofed client address (PROXY, X-Forwarded-For)", Verified, ""},
		{"TM-HOST-1", "Host or SNI mismatch", Verified, ""},
		{"TM-OUT-1", "A claimer wakes arbitrary FCM tokens", Verified, ""},
		{"TM-OUT-2", "Colluding binaries fill the push in-flight slots", Verified, ""},
		{"TM-OUT-3", "Push tokens and FCM credentials in logs, metrics or errors", Verified, ""},
		{"TM-OUT-4", "Slow or failing FCM", Verified, ""},
		{"TM-OUT-5", "Insecure FCM credentials file", Verified, ""},
		{"TM-OUT-6", "Push credentials sent in the clear", Verified, ""},
		{"TM-CLU-1", "Cross-tenant routing across instances", Verified, ""},
		{"TM-CLU-2", "A dead owner holds its server-ids", Verified, ""},
		{"TM-CLU-3", "A compromised or sniffed NATS sees every frame", NotExecutable, "operational: whether a deployment runs NATS with TLS and credentials, and who can reach or run NATS, is outside the binary (the relay's side is tested, see Mitigation)"},
		{"TM-CLU-4", "A rogue instance", Verified, ""},
		{"TM-CLU-5", "Lease split brain", Verified, ""},
	}
}
