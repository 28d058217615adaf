package admission

import "net/http"

// Reason says why the middleware refused a request. It doubles as the
// "reason" label of relay_requests_rejected_total (relay.RejectReason is the
// rest of that label set), so it is a closed set: never build one from input.
// Sockets refused at accept are not requests: see SocketReason.
type Reason string

const (
	// ReasonRateLimited: the client's upgrade token bucket is empty (429).
	ReasonRateLimited Reason = "rate_limited"
	// ReasonPerIPCap: the client already holds MaxConnsPerIP connections (429).
	ReasonPerIPCap Reason = "per_ip_cap"
	// ReasonGlobalCap: the relay holds MaxConns connections (503).
	ReasonGlobalCap Reason = "global_cap"
	// ReasonTableFull: no per-IP entry could be made for a new address (503).
	// Unreachable while MaxTrackedIPs > MaxConns (enforced by New): at most
	// MaxConns entries are pinned by open connections, so an unpinned one
	// can always be evicted. Kept so that a broken invariant fails closed.
	ReasonTableFull Reason = "table_full"
)

// AllReasons lists every Reason, so metrics can pre-register labels.
var AllReasons = []Reason{ReasonRateLimited, ReasonPerIPCap, ReasonGlobalCap, ReasonTableFull}

// status is the HTTP status a rejection is answered with: 429 when the
// client in particular is over its share, 503 when the relay as a whole
// is full.
func (r Reason) status() int {
	switch r {
	case ReasonRateLimited, ReasonPerIPCap:
		return http.StatusTooManyRequests
	default:
		return http.StatusServiceUnavailable
	}
}
