package relay

import (
	"errors"
	"net/http"

	"github.com/pyrycode/relay/internal/logging"
)

// Upgrade headers (protocol §3). Checked before the WebSocket accept; a
// failure answers 400 with an empty body and touches no state.
const (
	HeaderServerID   = "X-Pyrycode-Server"
	HeaderVersion    = "X-Pyrycode-Version"
	HeaderToken      = "X-Pyrycode-Token"
	HeaderDeviceName = "X-Pyrycode-Device-Name"
	HeaderUserAgent  = "User-Agent"
)

const (
	// MaxServerIDBytes is the longest accepted server-id. A UUIDv4 is 36.
	MaxServerIDBytes = 128
	// MaxDeviceNameRunes caps the device name as logged.
	MaxDeviceNameRunes = 64
	// maxVersionRunes and maxUserAgentRunes cap what is logged of those headers.
	maxVersionRunes   = 64
	maxUserAgentRunes = 128
)

// ErrBadUpgradeHeaders reports a missing, empty or malformed upgrade header.
// The caller answers 400 with an empty body; the error text is for tests
// and never leaves the process.
var ErrBadUpgradeHeaders = errors.New("relay: bad upgrade headers")

// ValidServerID reports whether id is 1–128 bytes of [A-Za-z0-9._~-]
// (stricter than the original relay's opaque key, so no control bytes,
// spaces or separators ever reach logs or the registry).
func ValidServerID(id string) bool {
	if len(id) == 0 || len(id) > MaxServerIDBytes {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '_', c == '~', c == '-':
		default:
			return false
		}
	}
	return true
}

// BinaryHeaders are the accepted headers of a /v1/server upgrade.
type BinaryHeaders struct {
	ServerID  string
	Version   string // sanitised for logging
	UserAgent string // sanitised for logging
}

// PhoneHeaders are the accepted headers of a /v1/client upgrade. The
// phone's user-agent must be present (protocol §3) but is neither logged nor
// kept.
type PhoneHeaders struct {
	ServerID   string
	Token      string // never logged, compared or echoed
	DeviceName string // sanitised, may be empty
}

// singleHeader returns the header's only value. Repeated headers are refused:
// two server-ids in one request would make "which one?" a parser question.
func singleHeader(h http.Header, name string) (string, bool) {
	v := h.Values(name)
	if len(v) != 1 || v[0] == "" {
		return "", false
	}
	return v[0], true
}

// ParseBinaryHeaders validates a /v1/server upgrade's headers.
func ParseBinaryHeaders(h http.Header) (BinaryHeaders, error) {
	id, ok := singleHeader(h, HeaderServerID)
	if !ok || !ValidServerID(id) {
		return BinaryHeaders{}, ErrBadUpgradeHeaders
	}
	ver, ok := singleHeader(h, HeaderVersion)
	if !ok {
		return BinaryHeaders{}, ErrBadUpgradeHeaders
	}
	ua, ok := singleHeader(h, HeaderUserAgent)
	if !ok {
		return BinaryHeaders{}, ErrBadUpgradeHeaders
	}
	return BinaryHeaders{ServerID: id, Version: logging.Sanitize(ver, maxVersionRunes), UserAgent: logging.Sanitize(ua, maxUserAgentRunes)}, nil
}

// ParsePhoneHeaders validates a /v1/client upgrade's headers. The token is
// only checked for presence.
func ParsePhoneHeaders(h http.Header) (PhoneHeaders, error) {
	id, ok := singleHeader(h, HeaderServerID)
	if !ok || !ValidServerID(id) {
		return PhoneHeaders{}, ErrBadUpgradeHeaders
	}
	tok, ok := singleHeader(h, HeaderToken)
	if !ok {
		return PhoneHeaders{}, ErrBadUpgradeHeaders
	}
	if _, ok := singleHeader(h, HeaderUserAgent); !ok {
		return PhoneHeaders{}, ErrBadUpgradeHeaders
	}
	if len(h.Values(HeaderDeviceName)) > 1 { // optional, but like every header at most once
		return PhoneHeaders{}, ErrBadUpgradeHeaders
	}
	return PhoneHeaders{
		ServerID:   id,
		Token:      tok,
		DeviceName: logging.Sanitize(h.Get(HeaderDeviceName), MaxDeviceNameRunes),
	}, nil
}
