package relay

import (
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// The scanner must accept exactly what encoding/json.Valid accepts: this is
// the differential oracle, byte for byte, with and without the UTF-8 rule.
// The rule is the relay's own, on top of JSON: json.Valid accepts any byte
// >= 0x80 inside a string (encoding/json only replaces invalid UTF-8 with
// U+FFFD when it decodes), while a phone frame or a binary envelope must
// also be valid UTF-8 (protocol §5: a phone is closed 1007), so with
// checkUTF8 the oracle is json.Valid && utf8.Valid. The seeds hold every
// control byte (and every other byte) inside a string, after a backslash
// and outside strings; jsonscan_table_test.go walks the same ground
// exhaustively.
func FuzzJSONValid_MatchesEncodingJSON(f *testing.F) {
	for _, s := range jsonScanCases() {
		f.Add([]byte(s))
	}
	for _, s := range everyByteSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want := json.Valid(data)
		if got := jsonValid(data, false); got != want {
			t.Fatalf("jsonValid(%q) = %v, json.Valid %v", data, got, want)
		}
		wantUTF8 := want && utf8.Valid(data)
		if got := jsonValid(data, true); got != wantUTF8 {
			t.Fatalf("jsonValid(%q, utf8) = %v, json.Valid && utf8.Valid %v", data, got, wantUTF8)
		}
		wantObj := wantUTF8 && oraclePhoneFrame(data)
		if got := validJSONObject(data); got != wantObj {
			t.Fatalf("validJSONObject(%q) = %v, oracle %v", data, got, wantObj)
		}
	})
}

// everyByteSeeds puts each byte value 0..255 inside a short and a long
// string (in the scanner's fast path), after a backslash, as a value and
// after one.
func everyByteSeeds() []string {
	var out []string
	for b := 0; b < 256; b++ {
		c := string([]byte{byte(b)})
		out = append(out, `{"k":"`+c+`"}`, `{"k":"`+strings.Repeat("a", 35)+c+`"}`, `{"k":"\`+c+`"}`, `{"k":`+c+`}`, `{"k":1`+c+`}`, c)
	}
	return out
}

// jsonScanCases are the grammar's corners: every literal, number shape,
// escape, control byte, UTF-8 edge, and the nesting limit on both sides.
func jsonScanCases() []string {
	cases := []string{
		``, ` `, `{}`, `[]`, `{ }`, `[ ]`, ` {} `, "\t{}\r\n", `{`, `}`, `[`, `]`, `{]`, `[}`,
		`null`, `true`, `false`, `nul`, `nulll`, `tru`, `True`, `"a"`, `"`, `"\"`, `"\\"`,
		`0`, `-0`, `-`, `01`, `1.`, `1.0`, `.5`, `1e`, `1e+`, `1e5`, `1E-5`, `-1.5e+10`, `1x`, `+1`,
		`"\u00e9"`, `"\u00G9"`, `"\u00e"`, `"\ud800"`, `"\x"`, `"\/"`, `"\b\f\n\r\t"`,
		"\"\x00\"", "\"\x1f\"", "\"\x7f\"", "\"\xff\"", "\"\xc3\xa9\"", "\"\xc3\"", "\"\xed\xa0\x80\"",
		"\"\xf4\x90\x80\x80\"", "\"\xe2\x80\xa8\"", "\xef\xbb\xbf{}",
		`{"a":1}`, `{"a":1,}`, `{"a" 1}`, `{"a":}`, `{a:1}`, `{"a":1 "b":2}`, `{"a":[1,2,{"b":null}]}`,
		`[1,]`, `[,1]`, `[1 2]`, `[[[]]]`, `{"a":{"b":{"c":{}}}}`, `{} {}`, `{}x`, `"abcdefghijklmnop"`,
		`"abcdefgh\"ijklmnop"`, "\"abcdefgh\x01ijklmnop\"", "\"abcdefghij\xc3\xa9klmnopqrs\"",
		`{"conn_id":"client-0f3a9c2e7b1d4e55","frame":{"v":2,"type":"noise_msg","data":"` + strings.Repeat("A", 200) + `"}}`,
	}
	for _, n := range []int{smallDepth - 1, smallDepth, smallDepth + 1, maxJSONDepth - 1, maxJSONDepth, maxJSONDepth + 1} {
		cases = append(cases, strings.Repeat("[", n)+strings.Repeat("]", n))
		cases = append(cases, strings.Repeat(`{"a":`, n-1)+`{}`+strings.Repeat("}", n-1))
	}
	return cases
}

func TestJSONValid_Corners(t *testing.T) {
	for _, s := range jsonScanCases() {
		d := []byte(s)
		if got, want := jsonValid(d, false), json.Valid(d); got != want {
			t.Errorf("jsonValid(%.40q) = %v, json.Valid %v", s, got, want)
		}
		if got, want := jsonValid(d, true), json.Valid(d) && utf8.Valid(d); got != want {
			t.Errorf("jsonValid(%.40q, utf8) = %v, want %v", s, got, want)
		}
	}
}

// The nesting limit is encoding/json's, counted from the root, including
// inside an envelope's top-level object.
func TestScanBinaryEnvelope_DepthLimitMatchesEncodingJSON(t *testing.T) {
	for _, n := range []int{maxJSONDepth - 2, maxJSONDepth - 1, maxJSONDepth} {
		msg := []byte(`{"conn_id":"a","frame":` + strings.Repeat(`{"a":`, n-1) + `{}` + strings.Repeat("}", n-1) + `}`)
		_, got := decodeBinaryEnvelope(msg)
		_, want := oracleEnvelope(msg)
		if (got == nil) != want {
			t.Errorf("depth %d: decode err %v, oracle ok %v", n+1, got, want)
		}
	}
}

// special flags every lane holding a byte the string scanner must stop at,
// and with high = msb no other lane: every byte value in every lane, next
// to every kind of neighbour (a borrow or carry across lanes would show as
// a lane flagged or missed because of its neighbour).
func TestSpecial_FlagsExactlyTheBytesTheScannerStopsAt(t *testing.T) {
	mustStop := func(c byte, utf8Check bool) bool {
		return c == '"' || c == '\\' || c < 0x20 || (utf8Check && c >= 0x80)
	}
	for _, utf8Check := range []bool{true, false} {
		high := uint64(0)
		if utf8Check {
			high = msb
		}
		for _, fill := range []byte{'A', 0x00, 0x1f, 0x20, '"', '\\', 0x7f, 0x80, 0xff} {
			for lane := range 8 {
				for c := range 256 {
					var w [8]byte
					for k := range w {
						w[k] = fill
					}
					w[lane] = byte(c)
					m := special(binary.LittleEndian.Uint64(w[:]), high)
					for k := range w {
						flagged := m&(0x80<<(8*k)) != 0
						if stop := mustStop(w[k], utf8Check); stop && !flagged || utf8Check && flagged && !stop {
							t.Fatalf("utf8=%v word % x: lane %d (%#x) flagged=%v", utf8Check, w, k, w[k], flagged)
						}
					}
				}
			}
		}
	}
}
