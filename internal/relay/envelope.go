package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"unicode/utf8"
)

// The routing envelope exists on the binary leg only (protocol §5); phones
// see raw inner frames.
//
// Phone -> relay -> binary (token only on a phone's first envelope, and only
// with ForwardV1Token):
//
//	{"conn_id":"client-<16 hex>","token":"<x-pyrycode-token>","frame":<phone JSON verbatim>}
//
// Binary -> relay -> phone: the relay writes only frame to conn_id. A
// close_code (1000, 1001, 4000–4999) turns it into a close directive: frame
// first (absent or null means none), then the close.
//
//	{"conn_id":"client-<16 hex>","close_code":4401,"frame":{...}}
//
// Close notice, relay -> binary, when a phone leaves on its own:
//
//	{"conn_id":"client-<16 hex>","close_code":1001}
//
// Push wake, binary -> relay (no conn_id, no frame):
//
//	{"push_wake":{"platform":"fcm","token":"<secret>"}}

// ErrMalformedEnvelope reports a binary-leg message the relay cannot route.
// The message is dropped and counted; the binary stays connected.
var ErrMalformedEnvelope = errors.New("relay: malformed envelope")

// envelopeKind says what a decoded binary message asks for.
type envelopeKind int

const (
	kindRoute    envelopeKind = iota // frame and/or close directive to a phone
	kindPushWake                     // wake request addressed to the relay
)

// binaryEnvelope is a decoded binary -> relay message.
type binaryEnvelope struct {
	Kind      envelopeKind
	ConnID    string
	Frame     []byte // the inner frame verbatim; nil when none
	CloseCode int    // 0 when not a close directive
	// PushPlatform and PushToken are set for kindPushWake. The token is a
	// secret: it is handed to the Waker and kept nowhere else.
	PushPlatform, PushToken string
}

// validDirectiveCode reports whether a binary may ask the relay to close a
// phone with code. 0 means "no close".
func validDirectiveCode(code int) bool {
	return code == 0 || code == 1000 || code == 1001 || (code >= 4000 && code <= 4999)
}

// decodeBinaryEnvelope parses one binary message. Keys match exactly (not
// encoding/json's case-insensitive struct matching) and unknown keys are
// ignored, so a future field never breaks routing and "Conn_Id" is not an
// alias for conn_id.
func decodeBinaryEnvelope(data []byte) (binaryEnvelope, error) {
	if !utf8.Valid(data) {
		return binaryEnvelope{}, ErrMalformedEnvelope
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil || fields == nil {
		return binaryEnvelope{}, ErrMalformedEnvelope
	}
	rawConnID, hasConnID := fields["conn_id"]
	rawWake, hasWake := fields["push_wake"]

	if hasWake {
		if hasConnID {
			return binaryEnvelope{}, ErrMalformedEnvelope // ambiguous: a wake is addressed to the relay
		}
		// A map, not a struct: struct decoding would match "PLATFORM" or
		// "plAtform" too, and let a later case variant override the field.
		var w map[string]json.RawMessage
		var platform, token string
		if json.Unmarshal(rawWake, &w) != nil || w == nil ||
			json.Unmarshal(w["platform"], &platform) != nil || platform == "" ||
			json.Unmarshal(w["token"], &token) != nil || token == "" {
			return binaryEnvelope{}, ErrMalformedEnvelope
		}
		return binaryEnvelope{Kind: kindPushWake, PushPlatform: platform, PushToken: token}, nil
	}

	if !hasConnID {
		return binaryEnvelope{}, ErrMalformedEnvelope
	}
	var env binaryEnvelope
	if err := json.Unmarshal(rawConnID, &env.ConnID); err != nil || env.ConnID == "" {
		return binaryEnvelope{}, ErrMalformedEnvelope
	}
	if raw, ok := fields["close_code"]; ok && !isNull(raw) {
		code, err := strconv.Atoi(string(raw)) // integers only: 4401.0 or "4401" are malformed
		if err != nil || !validDirectiveCode(code) {
			return binaryEnvelope{}, ErrMalformedEnvelope
		}
		env.CloseCode = code
	}
	if raw, ok := fields["frame"]; ok && !isNull(raw) {
		if !isObject(raw) {
			return binaryEnvelope{}, ErrMalformedEnvelope // application frames are JSON objects
		}
		env.Frame = raw
	}
	if env.Frame == nil && env.CloseCode == 0 {
		return binaryEnvelope{}, ErrMalformedEnvelope // nothing to do
	}
	return env, nil
}

func isNull(raw json.RawMessage) bool { return bytes.Equal(raw, []byte("null")) }

func isObject(raw []byte) bool {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	return len(raw) > 0 && raw[0] == '{'
}

// validPhoneFrame reports whether a phone message is one JSON object in
// valid UTF-8. Anything else closes the phone 1007.
func validPhoneFrame(data []byte) bool {
	return utf8.Valid(data) && json.Valid(data) && isObject(data)
}

// appendPhoneEnvelope wraps a validated phone frame for the binary. The
// frame is embedded verbatim; token is added only when non-empty.
func appendPhoneEnvelope(dst []byte, connID, token string, frame []byte) []byte {
	dst = append(dst, `{"conn_id":`...)
	dst = strconv.AppendQuote(dst, connID) // relay-minted hex: quoting is exact JSON
	if token != "" {
		dst = append(dst, `,"token":`...)
		dst = appendJSONString(dst, token)
	}
	dst = append(dst, `,"frame":`...)
	dst = append(dst, frame...)
	return append(dst, '}')
}

// appendCloseNotice builds the relay -> binary notice for a phone that left.
func appendCloseNotice(dst []byte, connID string, code int) []byte {
	dst = append(dst, `{"conn_id":`...)
	dst = strconv.AppendQuote(dst, connID)
	dst = append(dst, `,"close_code":`...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	return append(dst, '}')
}

// appendJSONString appends s as a JSON string. Header values are arbitrary
// bytes, so this goes through encoding/json rather than strconv.Quote (whose
// escapes are Go's, not JSON's).
func appendJSONString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s) // marshalling a string cannot fail
	return append(dst, b...)
}
