package relay

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// The exhaustive half of the scanner's differential check (the fuzz targets
// are the exploring half): every byte value in every grammatical position,
// inside and outside strings, at every lane of the string scan's 32- and
// 8-byte fast paths and in its byte-at-a-time tail, and every byte after a
// backslash and in every digit of a \u escape. The oracle is
// encoding/json.Valid, plus the one rule the relay adds: a phone frame or a
// binary envelope must also be valid UTF-8 (protocol §5; 1007 for a phone),
// which json.Valid does not check (it accepts any byte >= 0x80 inside a
// string). Every case is checked three ways: jsonValid without and with the
// UTF-8 rule, and validJSONObject (the phone-frame rule).

// laneSpan is the string length that puts a byte in every lane of the
// first 32-byte block, of the 8-byte block after it, and of the tail.
const laneSpan = 32 + 8 + 7

// inString returns the strings of n filler bytes with b at each position.
func inString(b []byte, n int) []string {
	var out []string
	for p := 0; p <= n-len(b); p++ {
		out = append(out, strings.Repeat("a", p)+string(b)+strings.Repeat("a", n-p-len(b)))
	}
	return out
}

// stringContexts wraps a string body (without quotes) in every place a
// string can stand: a document, an array element, an object value, and an
// object key (a key is scanned by skipMemberKey, a value by skipValue).
func stringContexts(body string) []string {
	q := `"` + body + `"`
	return []string{q, "[" + q + "]", `{"k":` + q + `}`, `{` + q + `:1}`, `{"a":[1,{"b":` + q + `}]}`}
}

// exhaustiveJSONCases is the table: about 120k documents.
func exhaustiveJSONCases() []string {
	var cases []string
	add := func(s ...string) { cases = append(cases, s...) }

	for b := 0; b < 256; b++ {
		c := string([]byte{byte(b)})
		// Inside a string: short (tail loop only) and at every lane.
		for _, body := range append(inString([]byte{byte(b)}, 3), inString([]byte{byte(b)}, laneSpan)...) {
			add(stringContexts(body)...)
		}
		// After a backslash, at every lane: only " \ / b f n r t are escapes
		// by themselves, and u needs four hex digits.
		for _, body := range inString([]byte{'\\', byte(b)}, laneSpan) {
			add(stringContexts(body)...)
		}
		add(`"\`+c+`"`, `"\`+c, `"\u`+c+`"`)
		// Every digit of a \u escape, including surrogate halves.
		for d := 0; d < 4; d++ {
			for _, base := range []string{"0041", "d800", "DC00", "dbff", "ffff"} {
				hex := base[:d] + c + base[d+1:]
				add(`"\u`+hex+`"`, `"\u`+hex+`\udc00"`, `{"k`+strings.Repeat("x", 30)+`\u`+hex+`":1}`)
			}
		}
		// Outside strings: alone, as a value, around and between tokens.
		for _, f := range []string{
			"%s", "%s{}", "{}%s", "{%s}", "[%s]", `{"a"%s:1}`, `{"a":%s1}`, `{"a":1%s}`, `{"a":1%s,"b":2}`,
			`{"a":1,%s"b":2}`, `[1%s,2]`, `[1,%s2]`, `[1%s]`, `[%s1]`, `{"a":%s}`, `{%s"a":1}`,
			// Numbers: every byte after each prefix of the grammar.
			"-%s", "0%s", "1%s", "12%s", "1.%s", "1.5%s", "1e%s", "1E+%s", "1e-5%s", "-0%s", "[0%s1]", "[-%s1]", "[1.%s5]", "[1e%s5]",
			// Literals: every byte after and inside each one.
			"t%s", "tr%s", "tru%s", "true%s", "f%s", "fals%s", "false%s", "n%s", "nul%s", "null%s", "[true%s]", "[nul%sl]",
		} {
			add(fmt.Sprintf(f, c))
		}
	}
	// Two-byte sequences inside a string, in the 32-byte block and the tail:
	// every UTF-8 lead byte with every continuation byte and more.
	for b0 := 0x80; b0 < 0x100; b0++ {
		for b1 := 0; b1 < 0x100; b1++ {
			s := []byte{byte(b0), byte(b1)}
			add(`"`+string(s)+`"`, `"`+strings.Repeat("a", 5)+string(s)+strings.Repeat("a", 40)+`"`)
		}
	}
	// Three- and four-byte sequences: every lead byte with the boundary
	// continuations (overlongs, surrogates encoded in UTF-8, past U+10FFFF).
	for b0 := 0xe0; b0 < 0x100; b0++ {
		for _, b1 := range []byte{0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0} {
			for _, b2 := range []byte{0x7f, 0x80, 0xbf, 0xc0} {
				for _, tail := range []string{"", "\x80", "\xbf", "\x7f"} {
					add(`"` + string([]byte{byte(b0), b1, b2}) + tail + `"`)
				}
			}
		}
	}
	// A sequence cut by the closing quote, the 8-byte boundary or the end.
	for _, s := range []string{"\xc3", "\xe2\x82", "\xf0\x9f\x98", "\xed\xa0\x80", "\xef\xbb\xbf"} {
		for p := 0; p < 10; p++ {
			add(`"`+strings.Repeat("a", p)+s+`"`, `"`+strings.Repeat("a", p)+s)
		}
	}
	// Whole strings of every length around the block sizes, closed and not.
	for n := 0; n <= 80; n++ {
		add(`"`+strings.Repeat("a", n)+`"`, `"`+strings.Repeat("a", n), `{"k":"`+strings.Repeat("a", n)+`"}`)
	}
	return append(cases, jsonScanCases()...)
}

func TestJSONValid_EveryByteEveryEscape_MatchesEncodingJSON(t *testing.T) {
	cases := exhaustiveJSONCases()
	if len(cases) < 100000 {
		t.Fatalf("only %d cases: the table lost its loops", len(cases))
	}
	var accepted, rejected, bad int
	for _, s := range cases {
		d := []byte(s)
		want := json.Valid(d)
		wantUTF8 := want && utf8.Valid(d)
		wantObj := wantUTF8 && oraclePhoneFrame(d)
		got, gotUTF8, gotObj := jsonValid(d, false), jsonValid(d, true), validJSONObject(d)
		if got != want || gotUTF8 != wantUTF8 || gotObj != wantObj {
			if bad++; bad <= 20 {
				t.Errorf("%q: jsonValid %v, with UTF-8 %v, object %v; want %v, %v, %v", s, got, gotUTF8, gotObj, want, wantUTF8, wantObj)
			}
		}
		if wantUTF8 {
			accepted++
		} else {
			rejected++
		}
	}
	if bad > 20 {
		t.Errorf("... %d disagreements in all", bad)
	}
	// Both sides of the grammar are exercised, not only one.
	if accepted < 10000 || rejected < 10000 {
		t.Fatalf("%d accepted, %d rejected: the table is lopsided", accepted, rejected)
	}
}

// envelopeCases wraps each body of the string and byte table in every
// field of an envelope (the frame, a string inside it, conn_id, a key, the
// wake's platform and token, close_code) and adds the decoding rules the
// envelope adds on top of JSON: exact keys after unescaping, the last of
// duplicate keys, the types of each field.
func envelopeCases() []string {
	const conn = `"client-0f3a9c2e7b1d4e55"`
	var cases []string
	add := func(s ...string) { cases = append(cases, s...) }
	for b := 0; b < 256; b++ {
		c := string([]byte{byte(b)})
		var bodies []string
		bodies = append(bodies, inString([]byte{byte(b)}, laneSpan)...)
		bodies = append(bodies, inString([]byte{'\\', byte(b)}, 12)...)
		bodies = append(bodies, c, `\u00`+c+`0`)
		for _, body := range bodies {
			add(`{"conn_id":`+conn+`,"frame":{"k":"`+body+`"}}`,
				`{"conn_id":`+conn+`,"frame":{"`+body+`":1}}`,
				`{"conn_id":"`+body+`","frame":{}}`,
				`{"`+body+`":1,"conn_id":`+conn+`,"frame":{}}`,
				`{"push_wake":{"platform":"`+body+`","token":"t"}}`,
				`{"push_wake":{"platform":"fcm","token":"`+body+`"}}`)
		}
		for _, f := range []string{
			`{"conn_id":` + conn + `,"frame":%s}`, `{"conn_id":` + conn + `,"frame":{%s}}`, `{"conn_id":` + conn + `,"frame":{}%s}`,
			`{"conn_id":` + conn + `,"close_code":440%s}`, `{"conn_id":` + conn + `,"close_code":%s4401}`, `{"conn_id":` + conn + `,"close_code":4401%s,"frame":{}}`,
			`%s{"conn_id":` + conn + `,"frame":{}}`, `{"conn_id":` + conn + `,"frame":{}}%s`, `{%s"conn_id":` + conn + `,"frame":{}}`,
			`{"conn_id"%s:` + conn + `,"frame":{}}`, `{"push_wake":%s}`, `{"push_wake":{%s"platform":"fcm","token":"t"}}`,
		} {
			add(fmt.Sprintf(f, c))
		}
	}
	// Keys: exact after unescaping, case and look-alikes not, escapes yes.
	for _, k := range []string{"conn_id", "Conn_id", "CONN_ID", "conn_id ", " conn_id", "conn\\u005fid", "\\u0063onn_id", "conn_i\\u0064",
		"conn_id\\u0000", "conn\\/id", "connid", "conn-id", "conn_\u0131d", "conn_ıd", "conn_id\u200b", "conn\\u005Fid"} {
		add(`{"`+k+`":`+conn+`,"frame":{}}`, `{"conn_id":`+conn+`,"`+strings.ReplaceAll(k, "conn_id", "frame")+`":{}}`,
			`{"conn_id":`+conn+`,"`+strings.ReplaceAll(k, "conn_id", "close_code")+`":4401}`,
			`{"`+strings.ReplaceAll(k, "conn_id", "push_wake")+`":{"platform":"fcm","token":"t"}}`,
			`{"push_wake":{"`+strings.ReplaceAll(k, "conn_id", "platform")+`":"fcm","`+strings.ReplaceAll(k, "conn_id", "token")+`":"t"}}`)
	}
	// Duplicates: the last wins, whatever the first was.
	for _, v := range []string{`null`, `""`, `1`, `"x"`, `{}`, `[]`, `4401`, `{"a":1}`, `"client-1"`, `true`} {
		add(`{"conn_id":`+v+`,"conn_id":`+conn+`,"frame":{}}`, `{"conn_id":`+conn+`,"conn_id":`+v+`,"frame":{}}`,
			`{"conn_id":`+conn+`,"frame":`+v+`,"frame":{"b":2}}`, `{"conn_id":`+conn+`,"frame":{"b":2},"frame":`+v+`}`,
			`{"conn_id":`+conn+`,"close_code":`+v+`,"close_code":4401}`, `{"conn_id":`+conn+`,"close_code":4401,"close_code":`+v+`}`,
			`{"push_wake":`+v+`,"push_wake":{"platform":"fcm","token":"t"}}`, `{"push_wake":{"platform":"fcm","token":"t"},"push_wake":`+v+`}`,
			`{"push_wake":{"platform":`+v+`,"platform":"fcm","token":"t"}}`, `{"push_wake":{"platform":"fcm","token":"t","token":`+v+`}}`,
			`{"conn_id":`+conn+`,"frame":{},"push_wake":`+v+`}`)
		// Types of every field.
		add(`{"conn_id":`+v+`,"frame":{}}`, `{"conn_id":`+conn+`,"frame":`+v+`}`, `{"conn_id":`+conn+`,"close_code":`+v+`}`,
			`{"conn_id":`+conn+`,"close_code":`+v+`,"frame":{}}`, `{"push_wake":`+v+`}`,
			`{"push_wake":{"platform":`+v+`,"token":"t"}}`, `{"push_wake":{"platform":"fcm","token":`+v+`}}`, v)
	}
	// A wake is addressed to the relay: with a conn_id of any value, even
	// null, it is ambiguous.
	for _, v := range []string{`null`, `""`, `1`, conn, `{}`} {
		add(`{"conn_id":`+v+`,"push_wake":{"platform":"fcm","token":"t"}}`, `{"push_wake":{"platform":"fcm","token":"t"},"conn_id":`+v+`}`)
	}
	// Every key spelled with escapes only: the longest raw spelling of an
	// envelope key must still be read as that key.
	for _, k := range []string{"conn_id", "push_wake", "close_code", "frame", "platform", "token"} {
		var esc strings.Builder
		for _, r := range k {
			fmt.Fprintf(&esc, `\u%04x`, r)
		}
		e := esc.String()
		add(`{"`+e+`":`+conn+`,"frame":{}}`, `{"conn_id":`+conn+`,"`+e+`":{"a":1}}`, `{"conn_id":`+conn+`,"`+e+`":4401}`,
			`{"`+e+`":{"platform":"fcm","token":"t"}}`, `{"push_wake":{"`+e+`":"fcm","token":"t"}}`, `{"push_wake":{"platform":"fcm","`+e+`":"t"}}`,
			`{"`+e+`x":`+conn+`,"frame":{}}`, `{"conn_id":`+conn+`,"`+e+`\u0000":{"a":1}}`)
	}
	// Numbers that are not integers, whatever digits they hold.
	for n := 0; n <= 60; n++ {
		for d := 0; d <= 9; d++ {
			for _, f := range []string{"%d.%d", "%d%d.0", "%de%d", "%dE+%d", "-%d.%d"} {
				add(`{"conn_id":` + conn + `,"close_code":` + fmt.Sprintf(f, n, d) + `,"frame":{}}`)
			}
		}
	}
	// Close codes: every edge and number shape.
	for _, code := range []string{"0", "-0", "999", "1000", "1001", "1002", "3999", "4000", "4999", "5000", "-4401", "4401.0", "4.401e3",
		"4401e0", "04401", "44010", "4294971697", "-4294962895", "9223372036854779809", "1e400", `"4401"`, "4401 ", " 4401"} {
		add(`{"conn_id":`+conn+`,"close_code":`+code+`}`, `{"conn_id":`+conn+`,"close_code":`+code+`,"frame":{"a":1}}`)
	}
	return cases
}

func TestScanBinaryEnvelope_EveryByteKeyDuplicateAndType_MatchesEncodingJSON(t *testing.T) {
	cases := envelopeCases()
	var accepted, rejected, bad int
	for _, s := range cases {
		d := []byte(s)
		got, err := decodeBinaryEnvelope(d)
		want, ok := oracleEnvelope(d)
		if (err == nil) != ok || (ok && !reflect.DeepEqual(got, want)) {
			if bad++; bad <= 20 {
				t.Errorf("%q: decoded %+v, %v; encoding/json reads %+v, ok %v", s, got, err, want, ok)
			}
		}
		if ok {
			accepted++
		} else {
			rejected++
		}
	}
	if bad > 20 {
		t.Errorf("... %d disagreements in all", bad)
	}
	if accepted < 5000 || rejected < 5000 {
		t.Fatalf("%d accepted, %d rejected: the table is lopsided", accepted, rejected)
	}
}
