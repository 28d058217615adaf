package attacks

// allowedLogKeys is the relay's log-key allowlist, copied as data because
// this package is a black box (internal/logging/keys.go is the source;
// TestLogAllowlistMatchesSource keeps the two equal). Any other key in a
// log line fails ATK-LOG-SCRAPE.
var allowedLogKeys = map[string]bool{
	// written by the handler
	"time": true, "level": true, "msg": true, "dropped_attrs": true,
	// caller keys
	"event": true, "listener": true, "addr": true, "mode": true, "domain": true,
	"server_id": true, "conn_id": true, "role": true, "remote": true, "device": true,
	"version": true, "user_agent": true, "close_code": true, "reason": true, "count": true,
	"duration_ms": true, "incident": true, "error": true,
	"outcome": true, "token_fp": true, "http_status": true, "not_after": true,
	"instance_id": true, "peer": true, "cluster_name": true, "lease_ms": true, "nats_connected": true,
	"setting": true, "setting_value": true, "setting_from": true, "fcm_project": true,
}
