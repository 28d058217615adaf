package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
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

// envelopeView is a scanned binary message. Its byte fields alias the
// message (or, for an escaped conn_id, a fresh copy), so the read loop can
// route without allocating; whatever outlives the read must be copied.
type envelopeView struct {
	kind      envelopeKind
	connID    []byte // unescaped
	frame     []byte // raw inner object; nil when none
	closeCode int
	platform  []byte // unescaped; kindPushWake only
	token     []byte // unescaped; kindPushWake only (a secret: never logged)
}

// scanBinaryEnvelope reads one binary message in a single pass, without a
// map: the whole message is validated (JSON and UTF-8) and the four
// envelope keys picked out as it goes. Keys match exactly after JSON
// unescaping (encoding/json's map semantics: "conn\u005fid" is conn_id,
// "Conn_Id" is an unknown key and ignored), and a repeated key's last value
// wins, as in the map-based reading the fuzz oracle keeps.
func scanBinaryEnvelope(data []byte) (envelopeView, bool) {
	i := skipWS(data, 0)
	if i >= len(data) || data[i] != '{' {
		return envelopeView{}, false // null, arrays, scalars: not an envelope
	}
	var rawConnID, rawWake, rawCode, rawFrame []byte // nil: key absent
	it := newMemberIter(data, i, 1)
	for {
		k, v, ok := it.next()
		if !ok {
			break
		}
		switch envelopeKey(k) {
		case "conn_id":
			rawConnID = v
		case "push_wake":
			rawWake = v
		case "close_code":
			rawCode = v
		case "frame":
			rawFrame = v
		}
	}
	if it.err || skipWS(data, it.i) != len(data) {
		return envelopeView{}, false
	}

	if rawWake != nil {
		if rawConnID != nil {
			return envelopeView{}, false // ambiguous: a wake is addressed to the relay
		}
		if rawWake[0] != '{' {
			return envelopeView{}, false
		}
		var rawPlatform, rawToken []byte
		w := newMemberIter(rawWake, 0, 2)
		for {
			k, v, ok := w.next()
			if !ok {
				break
			}
			switch envelopeKey(k) { // exact keys: "PLATFORM" is not platform
			case "platform":
				rawPlatform = v
			case "token":
				rawToken = v
			}
		}
		if w.err || !nonEmptyString(rawPlatform) || !nonEmptyString(rawToken) {
			return envelopeView{}, false
		}
		return envelopeView{kind: kindPushWake, platform: jsonUnquote(rawPlatform), token: jsonUnquote(rawToken)}, true
	}

	if !nonEmptyString(rawConnID) {
		return envelopeView{}, false // absent, null, "", or not a string
	}
	v := envelopeView{kind: kindRoute, connID: jsonUnquote(rawConnID)}
	if rawCode != nil && !isNull(rawCode) {
		code, ok := parseCloseCode(rawCode)
		if !ok {
			return envelopeView{}, false
		}
		v.closeCode = code
	}
	if rawFrame != nil && !isNull(rawFrame) {
		if rawFrame[0] != '{' {
			return envelopeView{}, false // application frames are JSON objects
		}
		v.frame = rawFrame
	}
	if v.frame == nil && v.closeCode == 0 {
		return envelopeView{}, false // nothing to do
	}
	return v, true
}

// decodeBinaryEnvelope is scanBinaryEnvelope with owned fields: the form
// the fuzz oracle and tests compare against.
func decodeBinaryEnvelope(data []byte) (binaryEnvelope, error) {
	v, ok := scanBinaryEnvelope(data)
	if !ok {
		return binaryEnvelope{}, ErrMalformedEnvelope
	}
	return v.owned(), nil
}

// owned copies v's string fields out of the message (Frame still aliases it).
func (v envelopeView) owned() binaryEnvelope {
	return binaryEnvelope{Kind: v.kind, ConnID: string(v.connID), Frame: v.frame,
		CloseCode: v.closeCode, PushPlatform: string(v.platform), PushToken: string(v.token)}
}

// maxEnvelopeKeyRaw bounds the raw (quoted, escaped) length of a key that
// can unescape to one of the envelope's names (10 bytes at most): every
// escape sequence yields at least one byte per six raw bytes, so a longer
// raw key is an unknown key and needs no decoding.
const maxEnvelopeKeyRaw = 2 + 6*len("close_code")

// envelopeKey returns the envelope name the raw key k (quotes included)
// spells after unescaping, or "" for any other key. Only an escaped key
// allocates.
func envelopeKey(k []byte) string {
	inner := k[1 : len(k)-1]
	if bytes.IndexByte(inner, '\\') >= 0 {
		if len(k) > maxEnvelopeKeyRaw {
			return ""
		}
		var s string
		if json.Unmarshal(k, &s) != nil {
			return ""
		}
		inner = []byte(s)
	}
	switch string(inner) {
	case "conn_id":
		return "conn_id"
	case "push_wake":
		return "push_wake"
	case "close_code":
		return "close_code"
	case "frame":
		return "frame"
	case "platform":
		return "platform"
	case "token":
		return "token"
	}
	return ""
}

// nonEmptyString reports whether raw is a JSON string with at least one
// character (every escape decodes to at least one byte).
func nonEmptyString(raw []byte) bool { return len(raw) > 2 && raw[0] == '"' }

// jsonUnquote decodes a validated JSON string token. Without escapes it is
// the token's inside, uncopied.
func jsonUnquote(raw []byte) []byte {
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return inner
	}
	var s string
	_ = json.Unmarshal(raw, &s) // a validated string token always decodes
	return []byte(s)
}

// parseCloseCode reads close_code: a JSON integer (4401.0, 4.401e3 and
// "4401" are malformed) that is a valid directive code.
func parseCloseCode(raw []byte) (int, bool) {
	digits := raw
	neg := raw[0] == '-'
	if neg {
		digits = raw[1:]
	}
	if len(digits) == 0 || len(digits) > 9 {
		return 0, false // no valid code has more digits
	}
	n := 0
	for _, c := range digits {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if neg {
		n = -n
	}
	return n, validDirectiveCode(n)
}

func isNull(raw []byte) bool { return string(raw) == "null" }

// validPhoneFrame reports whether a phone message is one JSON object in
// valid UTF-8. Anything else closes the phone 1007.
func validPhoneFrame(data []byte) bool { return validJSONObject(data) }

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
