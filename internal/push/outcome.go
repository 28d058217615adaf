package push

// Outcome is what became of one push wake. It doubles as the "outcome" label
// of relay_push_wakes_total, so it is a closed set: never build one from
// input (an FCM error body, a platform name) or the series set would grow
// with whatever a binary or FCM sends.
type Outcome string

const (
	// OutcomeSent: FCM accepted the message (200).
	OutcomeSent Outcome = "sent"
	// OutcomeUnregistered: FCM answered 404 with errorCode UNREGISTERED: the
	// app was uninstalled or the token expired. The daemon should forget it.
	OutcomeUnregistered Outcome = "unregistered"
	// OutcomeInvalidToken: FCM answered 400 (INVALID_ARGUMENT: the body is
	// fixed, so it is the token), or the wake could never be an FCM wake
	// (platform other than "fcm", a token over MaxTokenBytes or holding
	// bytes outside printable ASCII). Nothing is sent for the latter.
	OutcomeInvalidToken Outcome = "invalid_token"
	// OutcomeRateLimited: FCM answered 429 or 503, or the wake came while a
	// Retry-After FCM gave is still running (relay-wide): nothing is sent
	// until it ends.
	OutcomeRateLimited Outcome = "rate_limited"
	// OutcomeFailed: anything else: a transport error, the per-request
	// timeout, no access token, 401/403 (the service account lacks the
	// role), another 4xx or a 5xx.
	OutcomeFailed Outcome = "failed"
	// OutcomeDroppedRate: the binary's server-id has used its token bucket
	// (Options.Interval, Options.Burst), or the bucket table is full.
	OutcomeDroppedRate Outcome = "dropped_rate"
	// OutcomeDroppedInflight: Options.MaxInFlight sends are already running
	// relay-wide. The wake is dropped, never queued.
	OutcomeDroppedInflight Outcome = "dropped_inflight"
	// OutcomeDisabled: push is off (no --fcm-credentials) or the relay is
	// shutting down.
	OutcomeDisabled Outcome = "disabled"
)

// AllOutcomes lists every Outcome, so metrics can pre-register labels and a
// dashboard sees zeros rather than missing series.
var AllOutcomes = []Outcome{
	OutcomeSent, OutcomeUnregistered, OutcomeInvalidToken, OutcomeRateLimited,
	OutcomeFailed, OutcomeDroppedRate, OutcomeDroppedInflight, OutcomeDisabled,
}
