package relay

// RejectReason says why the routing core refused an upgrade request before
// any WebSocket existed. It is the routing core's share of the "reason" label
// of relay_requests_rejected_total (admission.Reason is the rest), so it is a
// closed set, pre-registered by New: never build one from input.
type RejectReason string

const (
	// RejectBadHeaders: a required upgrade header is missing, empty,
	// repeated or malformed (400, empty body; protocol §3).
	RejectBadHeaders RejectReason = "bad_headers"
	// RejectBadUpgrade: the headers passed but the request is not a valid
	// WebSocket handshake (no Upgrade, a bad key or version); the WebSocket
	// library answered it (426 or 400), with a body the server then empties.
	RejectBadUpgrade RejectReason = "bad_upgrade"
)

// AllRejectReasons lists every RejectReason, so New can pre-register them
// as labels: a reason never seen yet still reads 0 rather than missing.
var AllRejectReasons = []RejectReason{RejectBadHeaders, RejectBadUpgrade}
