package relay

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/pyrycode/relay/internal/logging"
)

// Fuzz targets for every parser on the relay's attack surface. Each asserts
// properties against an independent oracle (encoding/json with exact-key
// maps, a regexp, unicode tables), not merely "no panic". Seeds live in
// testdata/fuzz/<FuzzName> (every envelope shape of protocol §5, the edge
// close codes, nulls, duplicate and case-variant keys, deep nesting, invalid
// UTF-8, UUIDs, 128/129-byte ids; regress_* files are found bugs). `go test`
// replays them; `make fuzz` explores.

// oracleEnvelope is an independent reading of protocol §5 (envelope validity): exact
// keys, unknown keys ignored, integer close codes only, frames are objects.
func oracleEnvelope(data []byte) (binaryEnvelope, bool) {
	if !utf8.Valid(data) {
		return binaryEnvelope{}, false
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(data, &top) != nil || top == nil {
		return binaryEnvelope{}, false
	}
	rawConn, hasConn := top["conn_id"]
	if rawWake, ok := top["push_wake"]; ok {
		if hasConn {
			return binaryEnvelope{}, false
		}
		var w map[string]json.RawMessage
		if json.Unmarshal(rawWake, &w) != nil || w == nil {
			return binaryEnvelope{}, false
		}
		platform, ok1 := jsonString(w["platform"])
		token, ok2 := jsonString(w["token"])
		if !ok1 || !ok2 || platform == "" || token == "" {
			return binaryEnvelope{}, false
		}
		return binaryEnvelope{Kind: kindPushWake, PushPlatform: platform, PushToken: token}, true
	}
	connID, ok := jsonString(rawConn)
	if !hasConn || !ok || connID == "" {
		return binaryEnvelope{}, false
	}
	env := binaryEnvelope{Kind: kindRoute, ConnID: connID}
	if raw, ok := top["close_code"]; ok && string(raw) != "null" {
		if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
			return binaryEnvelope{}, false // "4401" is a string, not a code
		}
		var n json.Number
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		if d.Decode(&n) != nil {
			return binaryEnvelope{}, false // not a number
		}
		code, err := n.Int64() // 4401.0, 4.401e3 are not integers on the wire
		if err != nil || code < -1<<31 || code > 1<<31-1 {
			return binaryEnvelope{}, false
		}
		c := int(code)
		if !(c == 0 || c == 1000 || c == 1001 || (c >= 4000 && c <= 4999)) {
			return binaryEnvelope{}, false
		}
		env.CloseCode = c
	}
	if raw, ok := top["frame"]; ok && string(raw) != "null" {
		var obj map[string]json.RawMessage
		if json.Unmarshal(raw, &obj) != nil || obj == nil {
			return binaryEnvelope{}, false
		}
		env.Frame = raw
	}
	if env.Frame == nil && env.CloseCode == 0 {
		return binaryEnvelope{}, false
	}
	return env, true
}

// jsonString decodes raw as a JSON string (not null, not a number).
func jsonString(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// encodeEnvelope writes env back onto the wire in its canonical shape.
func encodeEnvelope(env binaryEnvelope) []byte {
	if env.Kind == kindPushWake {
		b := []byte(`{"push_wake":{"platform":`)
		b = appendJSONString(b, env.PushPlatform)
		b = append(b, `,"token":`...)
		b = appendJSONString(b, env.PushToken)
		return append(b, `}}`...)
	}
	b := []byte(`{"conn_id":`)
	b = appendJSONString(b, env.ConnID)
	if env.CloseCode != 0 {
		b = append(b, `,"close_code":`...)
		b = strconv.AppendInt(b, int64(env.CloseCode), 10)
	}
	if env.Frame != nil {
		b = append(b, `,"frame":`...)
		b = append(b, env.Frame...)
	}
	return append(b, '}')
}

// FuzzDecodeBinaryEnvelope: the envelope scanner against encoding/json's
// reading (oracleEnvelope). Besides testdata/fuzz, the seeds put every byte
// value, control bytes included, in the frame, conn_id, a key and the
// wake's token, inside a string, after a backslash and outside strings.
func FuzzDecodeBinaryEnvelope(f *testing.F) {
	for b := 0; b < 256; b++ {
		c := string([]byte{byte(b)})
		for _, s := range []string{
			`{"conn_id":"client-0f3a9c2e7b1d4e55","frame":{"k":"` + c + `"}}`,
			`{"conn_id":"client-0f3a9c2e7b1d4e55","frame":{"k":"\` + c + `"}}`,
			`{"conn_id":"client-0f3a9c2e7b1d4e55","frame":{"k":` + c + `}}`,
			`{"conn_id":"client-` + c + `","frame":{}}`,
			`{"conn_id":"client-0f3a9c2e7b1d4e55","k` + c + `":1,"frame":{}}`,
			`{"conn_id":"client-0f3a9c2e7b1d4e55","close_code":440` + c + `}`,
			`{"push_wake":{"platform":"fcm","token":"t` + c + `"}}`,
		} {
			f.Add([]byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := decodeBinaryEnvelope(data)
		want, wantOK := oracleEnvelope(data)
		if (err == nil) != wantOK {
			t.Fatalf("decode(%q): err=%v, oracle accepts=%v", data, err, wantOK)
		}
		if err != nil {
			if err != ErrMalformedEnvelope {
				t.Fatalf("decode(%q): error %v is not ErrMalformedEnvelope", data, err)
			}
			if !reflect.DeepEqual(env, binaryEnvelope{}) {
				t.Fatalf("decode(%q): rejected but returned %+v", data, env)
			}
			return
		}
		if !reflect.DeepEqual(env, want) {
			t.Fatalf("decode(%q) = %+v, oracle %+v", data, env, want)
		}
		switch env.Kind {
		case kindPushWake:
			if env.PushPlatform == "" || env.PushToken == "" || env.ConnID != "" || env.Frame != nil || env.CloseCode != 0 {
				t.Fatalf("push_wake %q decoded with a routing field: %+v", data, env)
			}
		case kindRoute:
			if env.ConnID == "" || !validDirectiveCode(env.CloseCode) || env.PushPlatform != "" || env.PushToken != "" {
				t.Fatalf("route %q decoded badly: %+v", data, env)
			}
			if env.Frame == nil && env.CloseCode == 0 {
				t.Fatalf("route %q with nothing to do accepted", data)
			}
			if env.Frame != nil {
				var obj map[string]json.RawMessage
				if !utf8.Valid(env.Frame) || json.Unmarshal(env.Frame, &obj) != nil || obj == nil {
					t.Fatalf("route %q: frame %q is not a JSON object", data, env.Frame)
				}
			}
		default:
			t.Fatalf("unknown kind %d", env.Kind)
		}
		// Re-encoding is stable: what the relay understood survives a trip
		// back onto the wire unchanged.
		again, err := decodeBinaryEnvelope(encodeEnvelope(env))
		if err != nil || !reflect.DeepEqual(again, env) {
			t.Fatalf("re-encoded %q -> %q decodes to %+v, %v; want %+v", data, encodeEnvelope(env), again, err, env)
		}
	})
}

// oraclePhoneFrame: valid UTF-8, and exactly one JSON object.
func oraclePhoneFrame(data []byte) bool {
	var m map[string]json.RawMessage
	return utf8.Valid(data) && json.Unmarshal(data, &m) == nil && m != nil
}

func FuzzValidPhoneFrame(f *testing.F) {
	for _, s := range everyByteSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := validPhoneFrame(data), oraclePhoneFrame(data); got != want {
			t.Fatalf("validPhoneFrame(%q) = %v, oracle %v", data, got, want)
		}
	})
}

func FuzzAppendPhoneEnvelope(f *testing.F) {
	f.Fuzz(func(t *testing.T, token, frame string) {
		if !validPhoneFrame([]byte(frame)) {
			return // the read loop closes such a phone 1007 before wrapping
		}
		connID := newConnID()
		prefix := []byte("stale bytes from the previous envelope")
		out := appendPhoneEnvelope(prefix[:len(prefix):len(prefix)], connID, token, []byte(frame))
		if !bytes.HasPrefix(out, prefix) {
			t.Fatalf("appendPhoneEnvelope clobbered dst: %q", out)
		}
		out = out[len(prefix):]
		var m map[string]json.RawMessage
		if !utf8.Valid(out) || json.Unmarshal(out, &m) != nil {
			t.Fatalf("envelope %q is not valid JSON", out)
		}
		wantKeys := 2
		if token != "" {
			wantKeys = 3
			got, ok := jsonString(m["token"])
			// encoding/json turns each invalid UTF-8 byte into U+FFFD, which
			// is exactly what converting to []rune does.
			if !ok || got != string([]rune(token)) {
				t.Fatalf("token %q came back as %q (%s)", token, got, m["token"])
			}
		} else if _, ok := m["token"]; ok {
			t.Fatalf("empty token added to %q", out)
		}
		if len(m) != wantKeys {
			t.Fatalf("envelope %q has keys %v", out, reflect.ValueOf(m).MapKeys())
		}
		if got, ok := jsonString(m["conn_id"]); !ok || got != connID {
			t.Fatalf("conn_id %q came back as %s", connID, m["conn_id"])
		}
		if got := m["frame"]; !bytes.Equal(got, bytes.Trim([]byte(frame), " \t\r\n")) {
			t.Fatalf("frame %q came back as %q", frame, got)
		}
		// The binary's answer to this phone, routed back through the
		// decoder, reaches the same conn_id with the same frame.
		back := []byte(`{"conn_id":` + string(m["conn_id"]) + `,"frame":` + string(m["frame"]) + `}`)
		env, err := decodeBinaryEnvelope(back)
		if err != nil || env.ConnID != connID || !bytes.Equal(env.Frame, m["frame"]) {
			t.Fatalf("reply %q decodes to %+v, %v", back, env, err)
		}
		// The close notice for this conn_id is well-formed too.
		notice := appendCloseNotice(nil, connID, int(CodeGoingAway))
		var n struct {
			ConnID    string `json:"conn_id"`
			CloseCode int    `json:"close_code"`
		}
		if json.Unmarshal(notice, &n) != nil || n.ConnID != connID || n.CloseCode != 1001 {
			t.Fatalf("close notice %q", notice)
		}
	})
}

// serverIDPattern is protocol §3's server-id grammar, written independently
// of ValidServerID.
var serverIDPattern = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,128}$`)

// headerInput builds an upgrade's headers from fuzzed values. An empty value
// means "header absent"; dup adds a second x-pyrycode-server line.
func headerInput(id, ver, ua, tok, dev string, dup bool) http.Header {
	h := http.Header{}
	set := func(k, v string) {
		if v != "" {
			h[k] = append(h[k], v)
		}
	}
	set(HeaderServerID, id)
	if dup {
		h[HeaderServerID] = append(h[HeaderServerID], id)
	}
	set(HeaderVersion, ver)
	set(HeaderUserAgent, ua)
	set(HeaderToken, tok)
	set(HeaderDeviceName, dev)
	return h
}

func FuzzParseHeaders(f *testing.F) {
	// One relay for the whole run: its handlers must answer every rejected
	// upgrade 400 with an empty body and leave the registry untouched.
	rl, err := New(fastOptions(), Deps{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, id, ver, ua, tok, dev string, dup bool) {
		h := headerInput(id, ver, ua, tok, dev, dup)
		idOK := !dup && serverIDPattern.MatchString(id)

		bh, berr := ParseBinaryHeaders(h)
		if wantOK := idOK && ver != "" && ua != ""; (berr == nil) != wantOK {
			t.Fatalf("ParseBinaryHeaders(%q) err=%v, want ok=%v", h, berr, wantOK)
		}
		ph, perr := ParsePhoneHeaders(h)
		if wantOK := idOK && tok != "" && ua != ""; (perr == nil) != wantOK {
			t.Fatalf("ParsePhoneHeaders(%q) err=%v, want ok=%v", h, perr, wantOK)
		}
		if berr == nil {
			if bh.ServerID != id || bh.Version != logging.Sanitize(ver, maxVersionRunes) || bh.UserAgent != logging.Sanitize(ua, maxUserAgentRunes) {
				t.Fatalf("binary headers %+v from %q", bh, h)
			}
		} else if berr != ErrBadUpgradeHeaders || bh != (BinaryHeaders{}) {
			t.Fatalf("binary rejection returned %+v, %v", bh, berr)
		}
		if perr == nil {
			if ph.ServerID != id || ph.Token != tok || ph.DeviceName != logging.Sanitize(dev, MaxDeviceNameRunes) {
				t.Fatalf("phone headers %+v from %q", ph, h)
			}
		} else if perr != ErrBadUpgradeHeaders || ph != (PhoneHeaders{}) {
			t.Fatalf("phone rejection returned %+v, %v", ph, perr)
		}

		// A real registry only ever sees ids that passed the parser.
		reg := newRegistry(fastOptions().GracePeriod, 4, manualNever, nil)
		if berr == nil {
			if res := reg.claim(&binaryConn{serverID: bh.ServerID}); !res.ok {
				t.Fatalf("claim of a fresh registry failed")
			}
		}
		if perr == nil {
			_ = reg.join(&phoneConn{serverID: ph.ServerID}) // 4404 unless the binary claimed it
		}
		for key, s := range reg.slots {
			if !serverIDPattern.MatchString(key) || s.id != key {
				t.Fatalf("registry holds server-id %q", key)
			}
		}
		if berr != nil && len(reg.slots) != 0 {
			t.Fatalf("rejected id reached the registry: %q", h)
		}

		// The handlers: a rejected upgrade is 400, empty body, no state.
		for path, serve := range map[string]http.HandlerFunc{"/v1/server": rl.ServeBinary, "/v1/client": rl.ServePhone} {
			rejected := berr != nil
			if path == "/v1/client" {
				rejected = perr != nil
			}
			if !rejected {
				continue // accepting needs a real socket: routing_test.go covers it
			}
			req := httptest.NewRequest(http.MethodGet, path, nil)
			req.Header = h.Clone()
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			w := httptest.NewRecorder()
			serve(w, req)
			if w.Code != http.StatusBadRequest || w.Body.Len() != 0 {
				t.Fatalf("%s with %q answered %d %q; want 400 and an empty body", path, h, w.Code, w.Body.String())
			}
			if st := rl.Stats(); st != (RegistryStats{}) {
				t.Fatalf("rejected upgrade changed the registry: %+v", st)
			}
		}
	})
}

// manualNever is a timerFunc whose timers never fire.
func manualNever(time.Duration, func()) func() bool { return func() bool { return true } }
