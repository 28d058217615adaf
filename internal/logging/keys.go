// Package logging is the relay's only log sink: a log/slog JSON handler that
// writes nothing but a closed allowlist of attribute keys, strips control and
// bidi characters from every string, caps every string's length, and never
// dumps a structured value (which could be a payload or a token).
//
// The allowlist is enforced twice: at run time by Handler, which drops any
// other key, and at test time by TestSourceLogKeysAllowlisted, which fails on
// any slog call in the module whose key is off the list or not a constant.
package logging

import (
	"log/slog"
	"slices"
)

// Keys the handler itself writes. A caller attribute with one of these keys is
// dropped: a second "level" or "msg" in a JSON line would let a logged value
// forge the line's level or message for parsers that keep the last duplicate.
const (
	KeyTime  = slog.TimeKey    // record time, RFC 3339
	KeyLevel = slog.LevelKey   // DEBUG | INFO | WARN | ERROR
	KeyMsg   = slog.MessageKey // the record message, sanitised and capped like any value

	// KeyDroppedAttrs counts attributes removed from the line (off the
	// allowlist, grouped, duplicated, or a kind that is never written). The
	// count says something was removed without printing what.
	KeyDroppedAttrs = "dropped_attrs"
)

// Keys callers may attach. Each value is still sanitised and capped; the "why"
// says what the key is for so that a new key has to argue its case here.
const (
	KeyEvent      = "event"       // stable machine-readable event name from a closed set in code
	KeyListener   = "listener"    // which listener a line is about: public | acme | metrics
	KeyAddr       = "addr"        // a local bound listener address (operator-chosen), never a peer's
	KeyMode       = "mode"        // serving mode: insecure | static | autocert
	KeyDomain     = "domain"      // operator-configured autocert domain
	KeyServerID   = "server_id"   // public pairing id (protocol §4), validated to [A-Za-z0-9._~-]{1,128}
	KeyConnID     = "conn_id"     // relay-minted connection id, to correlate lines
	KeyRole       = "role"        // binary | phone
	KeyRemote     = "remote"      // client IP as admission resolved it, for abuse triage
	KeyDevice     = "device"      // phone's x-pyrycode-device-name, Sanitize'd (protocol §3 allows it)
	KeyVersion    = "version"     // binary's x-pyrycode-version, Sanitize'd (protocol §3 allows it)
	KeyUserAgent  = "user_agent"  // client user-agent, Sanitize'd and capped
	KeyCloseCode  = "close_code"  // WebSocket close code (protocol §6)
	KeyReason     = "reason"      // close/drop reason from a closed set in code, never error text
	KeyCount      = "count"       // a number of things (phones evicted, frames dropped)
	KeyDurationMS = "duration_ms" // elapsed whole milliseconds
	KeyIncident   = "incident"    // random panic incident id; joins the 500 to the log line
	KeyError      = "error"       // start-up, listener, certificate reload and CA errors only: request-path errors can carry peer input
	KeyOutcome    = "outcome"     // push wake outcome from push.Outcome's closed set
	KeyTokenFP    = "token_fp"    // 8 hex digits of a push token's SHA-256 (push.Fingerprint), never the token
	KeyHTTPStatus = "http_status" // status of an outbound call's answer (FCM); never its body
	KeyNotAfter   = "not_after"   // expiry (RFC 3339) of the relay's own TLS certificate

	KeyInstanceID    = "instance_id"    // this cluster instance's id (--instance-id or random at start)
	KeyPeer          = "peer"           // another cluster instance's id, as published on NATS
	KeyClusterName   = "cluster_name"   // operator-configured --cluster-name
	KeyLeaseMS       = "lease_ms"       // the configured cluster claim lease, whole milliseconds
	KeyNATSConnected = "nats_connected" // whether the NATS connection is up, a bool

	KeySetting      = "setting"       // a relay serve flag's name, from the closed set of flags
	KeySettingValue = "setting_value" // that flag's operator-chosen value (a URL's password redacted; never a file's contents)
	KeySettingFrom  = "setting_from"  // where the value came from: flag, env, FILE:LINE, default
	KeyFCMProject   = "fcm_project"   // the Firebase project id push wakes go to (validated [a-z0-9.:-]); never the key
)

// callerKeys is the closed set behind IsCallerKey. Unexported so that no
// package can widen it at run time.
var callerKeys = map[string]struct{}{
	KeyEvent: {}, KeyListener: {}, KeyAddr: {}, KeyMode: {}, KeyDomain: {},
	KeyServerID: {}, KeyConnID: {}, KeyRole: {}, KeyRemote: {}, KeyDevice: {},
	KeyVersion: {}, KeyUserAgent: {}, KeyCloseCode: {}, KeyReason: {}, KeyCount: {},
	KeyDurationMS: {}, KeyIncident: {}, KeyError: {},
	KeyOutcome: {}, KeyTokenFP: {}, KeyHTTPStatus: {}, KeyNotAfter: {},
	KeyInstanceID: {}, KeyPeer: {}, KeyClusterName: {}, KeyLeaseMS: {}, KeyNATSConnected: {},
	KeySetting: {}, KeySettingValue: {}, KeySettingFrom: {}, KeyFCMProject: {},
}

// reservedKeys are written by the handler (or by slog itself) and refused as
// caller attributes. "source" is listed so that it stays out even if someone
// later turns on AddSource: file paths say more about the build than needed.
var reservedKeys = map[string]struct{}{
	KeyTime: {}, KeyLevel: {}, KeyMsg: {}, KeyDroppedAttrs: {}, slog.SourceKey: {},
}

// AllowedKeys returns, sorted, every key that can appear in a log line: the
// handler's own keys (time, level, msg, dropped_attrs) and the caller keys.
// It returns a fresh slice; the set itself cannot be changed.
func AllowedKeys() []string {
	keys := make([]string, 0, len(callerKeys)+4)
	for k := range callerKeys {
		keys = append(keys, k)
	}
	keys = append(keys, KeyTime, KeyLevel, KeyMsg, KeyDroppedAttrs)
	slices.Sort(keys)
	return keys
}

// IsCallerKey reports whether a caller may attach an attribute with key k.
// The handler's own keys are not caller keys.
func IsCallerKey(k string) bool {
	_, ok := callerKeys[k]
	return ok
}

func isReservedKey(k string) bool {
	_, ok := reservedKeys[k]
	return ok
}
