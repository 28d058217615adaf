package attacks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Frame smuggling: the relay embeds a phone's frame verbatim in the
// binary's envelope ({"conn_id":...,"frame":<frame>}) and hands a binary's
// frame verbatim to a phone, so what it passes on must be exactly one JSON
// object in valid UTF-8: what encoding/json.Valid accepts, plus the UTF-8
// rule json.Valid leaves out (protocol §5). A frame with bytes after its
// object could append members to its own envelope, a second conn_id the
// binary's last-key-wins parser would believe (speaking as another phone),
// and anything else the relay lets through is a parser differential at the
// other end. The attacker, on a server-id of its own:
//
//  1. As a binary, sends one envelope per case to a reading phone: every
//     byte value inside a string (at a lane of the relay's 32-byte and
//     8-byte fast scan, and in its tail), after a backslash, in each digit
//     of a \u escape, and outside strings; UTF-8 edges (overlongs,
//     surrogates, truncations, past U+10FFFF). The phone must receive
//     exactly the frames encoding/json and utf8.Valid accept, byte for
//     byte and in order, and nothing else; the binary stays connected.
//  2. As a phone, sends every valid frame of step 1: each must reach the
//     binary verbatim in an envelope of exactly one conn_id and frame.
//  3. As one phone per case, sends a frame that is not exactly one JSON
//     object in valid UTF-8, the trailing-member smuggle first: each phone
//     must be closed 1007 with a close notice, and none of its bytes may
//     reach the binary.
func frameSmuggle() Scenario {
	return Scenario{
		ID:      "ATK-FRAME-SMUGGLE",
		Title:   "Frames that are not exactly one JSON object in valid UTF-8 (every byte in and out of strings, every escape, a trailing conn_id) never reach the other side; every valid one arrives byte for byte",
		Threats: []string{"TM-ROUTE-5"},
		Mode:    RemoteSafe,
		Bounds: fmt.Sprintf("1 binary and %d phones (one at a time after the first) on a server-id of its own; %d envelopes and %d phone frames of at most 200 bytes, and one frame of 50 KiB (nesting one past the limit)",
			1+len(phoneSmuggles("client-0000000000000000")), len(smuggleCases()), smuggleValidCount()),
		Run: runFrameSmuggle,
	}
}

// smuggleCase is one frame and whether it may be passed on.
type smuggleCase struct {
	name  string
	frame []byte
}

// smuggleLanes are offsets in a 48-byte string: in the relay's first
// 32-byte block, in the 8-byte block after it, and in its byte-wise tail.
var smuggleLanes = []int{3, 35, 44}

// smuggleCases are the frames of steps 1 and 2. Every frame starts
// {"i":N, so a delivered frame names its case.
func smuggleCases() []smuggleCase {
	var out []smuggleCase
	add := func(name string, rest string) {
		out = append(out, smuggleCase{name, []byte(fmt.Sprintf(`{"i":%d,%s`, len(out), rest))})
	}
	str := func(p int, b []byte) string {
		return strings.Repeat("a", p) + string(b) + strings.Repeat("a", max(48-p-len(b), 0))
	}
	for b := 0; b < 256; b++ {
		c := []byte{byte(b)}
		for _, p := range smuggleLanes {
			add(fmt.Sprintf("byte 0x%02x at offset %d of a string", b, p), `"k":"`+str(p, c)+`"}`)
			add(fmt.Sprintf("backslash and byte 0x%02x at offset %d of a string", b, p), `"k":"`+str(p, append([]byte{'\\'}, c...))+`"}`)
		}
		for d := 0; d < 4; d++ {
			hex := []byte("0041")
			hex[d] = byte(b)
			add(fmt.Sprintf("byte 0x%02x as digit %d of a \\u escape", b, d+1), `"k":"`+str(35, append([]byte(`\u`), hex...))+`"}`)
		}
		add(fmt.Sprintf("byte 0x%02x as a value", b), `"k":`+string(c)+`}`)
		add(fmt.Sprintf("byte 0x%02x after a value", b), `"k":1`+string(c)+`}`)
		add(fmt.Sprintf("byte 0x%02x before a key", b), string(c)+`"k":1}`)
		add(fmt.Sprintf("byte 0x%02x in a key", b), `"`+str(35, c)+`":1}`)
	}
	for _, u := range []string{"\xc3\xa9", "\xc3", "\xc0\xaf", "\xc1\xbf", "\xe2\x82\xac", "\xe2\x82", "\xe0\x80\xaf", "\xed\x9f\xbf",
		"\xed\xa0\x80", "\xed\xbf\xbf", "\xef\xbf\xbf", "\xf0\x9f\x98\x80", "\xf0\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf", "\xf4\x90\x80\x80",
		"\xf5\x80\x80\x80", "\xf8\x88\x80\x80\x80", "\xff", "\xfe", "\x80", "\xbf"} {
		for _, p := range smuggleLanes {
			add(fmt.Sprintf("UTF-8 %q at offset %d of a string", u, p), `"k":"`+str(p, []byte(u))+`"}`)
		}
	}
	for _, e := range []string{`\ud800`, `\udbff\udfff`, `\udc00\ud800`, `\uD83D\uDE00`, `\u0000`, `\u001f`} {
		add("escape "+e, `"k":"`+str(35, []byte(e))+`"}`)
	}
	return out
}

// smuggleValidCount is how many of smuggleCases encoding/json accepts.
func smuggleValidCount() int {
	n := 0
	for _, c := range smuggleCases() {
		if smuggleOracle([]byte(`{"conn_id":"client-0000000000000000","frame":`+string(c.frame)+`}`)) != nil {
			n++
		}
	}
	return n
}

// smuggleOracle is encoding/json's reading of a binary's envelope carrying
// frame: the frame a phone may be sent (nil: none), the phone-frame rule
// applied to the frame's own bytes.
func smuggleOracle(env []byte) []byte {
	if !json.Valid(env) || !utf8.Valid(env) {
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(env, &m) != nil {
		return nil
	}
	f := m["frame"]
	if len(f) == 0 || f[0] != '{' {
		return nil
	}
	return f
}

// smuggleValidPhoneFrame is the phone-frame rule by encoding/json: one JSON
// object in valid UTF-8.
func smuggleValidPhoneFrame(f []byte) bool {
	var m map[string]json.RawMessage
	return utf8.Valid(f) && json.Unmarshal(f, &m) == nil && m != nil
}

// phoneSmuggles are step 3's frames, one phone each; victim is another
// phone's conn_id, which the first one tries to speak as.
func phoneSmuggles(victim string) []smuggleCase {
	nest := strings.Repeat(`{"a":`, 9999) + `{}` + strings.Repeat(`}`, 9999) // 10001 levels with the outer object
	pad := strings.Repeat("a", 35)
	return []smuggleCase{
		{"a trailing conn_id member (speaking as another phone)", []byte(`{"m":"MARK"},"conn_id":"` + victim + `"`)},
		{"two objects", []byte(`{"m":"MARK"}{"b":2}`)},
		{"an array", []byte(`[{"m":"MARK"}]`)},
		{"a control byte at offset 35 of a string", []byte(`{"m":"MARK","k":"` + pad + "\x01" + `"}`)},
		{`a \q escape at offset 35 of a string`, []byte(`{"m":"MARK","k":"` + pad + `\q"}`)},
		{"a bad hex digit in a \\u escape", []byte(`{"m":"MARK","k":"\u12G4"}`)},
		{"an overlong UTF-8 '/'", []byte(`{"m":"MARK","k":"` + pad + "\xc0\xaf" + `"}`)},
		{"a UTF-16 surrogate in UTF-8", []byte(`{"m":"MARK","k":"` + pad + "\xed\xa0\x80" + `"}`)},
		{"a number with a leading zero", []byte(`{"m":"MARK","k":01}`)},
		{"a trailing comma", []byte(`{"m":"MARK","k":1,}`)},
		{"an unescaped quote", []byte(`{"m":"MARK","k":"` + pad + `"x"}`)},
		{"a byte order mark", []byte("\xef\xbb\xbf" + `{"m":"MARK"}`)},
		{"an unterminated string", []byte(`{"m":"MARK","k":"` + pad)},
		{"nesting one past encoding/json's limit", []byte(`{"m":"MARK","k":` + nest + `}`)},
	}
}

func runFrameSmuggle(ctx context.Context, t *Target) Result {
	s, err := newSession(ctx, t)
	if err != nil {
		return Failf("setup: %v", err)
	}
	defer s.Close()
	ph, err := s.addPhone(nil)
	if err != nil {
		return Failf("setup: %v", err)
	}
	pr := ph.StartReading()
	cases := smuggleCases()

	// 1. Binary -> phone.
	var want []smuggleCase
	for _, c := range cases {
		env := []byte(`{"conn_id":"` + ph.ConnID + `","frame":` + string(c.frame) + `}`)
		if f := smuggleOracle(env); f != nil {
			want = append(want, smuggleCase{c.name, f})
		}
		if err := writeRaw(ctx, s, env); err != nil {
			return Failf("binary write (%s): %v", c.name, err)
		}
	}
	if len(want) < 100 || len(want) > len(cases)/2 {
		return Failf("encoding/json accepts %d of %d cases: the case table is broken", len(want), len(cases))
	}
	end := randHex(8)
	if err := s.send(ph.ConnID, map[string]string{"end": end}); err != nil {
		return Failf("binary write: %v", err)
	}
	var got [][]byte
	for deadline := time.Now().Add(20 * time.Second); ; {
		m := pr.next(time.Until(deadline))
		if m == nil {
			return Failf("binary->phone: the end marker never arrived after %d frames (phone closed %d): the binary or the phone was closed by a malformed envelope", len(got), pr.closeCode(0))
		}
		if bytes.Contains(m, []byte(end)) {
			break
		}
		got = append(got, m)
	}
	for i := 0; i < max(len(got), len(want)); i++ {
		switch {
		case i >= len(want):
			return Failf("binary->phone: %q reached the phone after every frame encoding/json accepts", trimFrame(got[i]))
		case i >= len(got):
			return Failf("binary->phone: %s (%q) was accepted by encoding/json but never reached the phone", want[i].name, trimFrame(want[i].frame))
		case !bytes.Equal(got[i], want[i].frame):
			name := "a frame encoding/json refuses"
			for _, c := range cases {
				if bytes.Equal(c.frame, got[i]) {
					name = c.name
				}
			}
			return Failf("binary->phone: the phone got %q (%s) where %s (%q) was due: a frame encoding/json refuses was passed on, or one it accepts was dropped or changed",
				trimFrame(got[i]), name, want[i].name, trimFrame(want[i].frame))
		}
	}

	// 2. Phone -> binary: every valid frame, verbatim, one conn_id.
	for _, c := range want {
		if err := ph.C.Write(ctx, websocket.MessageText, c.frame); err != nil {
			return Failf("phone write (%s): %v", c.name, err)
		}
	}
	if err := writeJSON(ctx, ph.C, map[string]string{"end": end}); err != nil {
		return Failf("phone write: %v", err)
	}
	n := 0
	var bad error
	_, ok := s.BinR.waitEnvelope(20*time.Second, nil, func(e envelope) bool {
		if bytes.Contains(e.Frame, []byte(end)) {
			return true
		}
		if bad == nil {
			if n >= len(want) {
				bad = fmt.Errorf("an envelope past the last frame sent: %q", trimFrame(e.Raw))
			} else if err := oneEnvelope(e.Raw, ph.ConnID, want[n].frame); err != nil {
				bad = fmt.Errorf("%s: %w", want[n].name, err)
			}
		}
		n++
		return false
	})
	if !ok {
		return Failf("phone->binary: the end marker never reached the binary after %d envelopes (phone closed %d): a valid frame closed the phone", n, pr.closeCode(0))
	}
	if bad != nil {
		return Failf("phone->binary: %v", bad)
	}
	if n != len(want) {
		return Failf("phone->binary: %d envelopes for %d frames", n, len(want))
	}

	// 3. One phone per malformed frame.
	var closed []string
	for _, c := range phoneSmuggles(ph.ConnID) {
		mark := "smuggle" + randHex(8)
		frame := bytes.ReplaceAll(c.frame, []byte("MARK"), []byte(mark))
		if smuggleValidPhoneFrame(frame) {
			return Failf("phone case %q is valid JSON: the case table is broken", c.name)
		}
		sp, err := s.addPhone(nil)
		if err != nil {
			return Failf("smuggling phone (%s): %v", c.name, err)
		}
		r := sp.StartReading()
		if err := sp.C.Write(ctx, websocket.MessageText, frame); err != nil {
			return Failf("smuggling phone write (%s): %v", c.name, err)
		}
		code := r.closeCode(5 * time.Second)
		notice, _ := s.BinR.waitEnvelope(5*time.Second, &s.Seen, func(e envelope) bool { return e.ConnID == sp.ConnID && e.CloseCode != 0 })
		for _, e := range s.Seen {
			if bytes.Contains(e.Raw, []byte(mark)) {
				return Failf("%s: the phone's frame reached the binary as %q", c.name, trimFrame(e.Raw))
			}
		}
		if code != 1007 || notice.CloseCode != 1007 {
			return Failf("%s: the phone was closed %d and its binary told %d, want 1007 for both", c.name, code, notice.CloseCode)
		}
		closed = append(closed, c.name)
	}
	if _, err := s.roundTrip(ph, 3*time.Second); err != nil {
		return Failf("the pair stopped relaying after the smuggling attempts: %v", err)
	}
	return Passf("binary->phone: %d envelopes, the phone got exactly the %d frames encoding/json and UTF-8 accept, byte for byte, in order; phone->binary: those %d each in an envelope of one conn_id and the frame verbatim; %d phones sending %s: each closed 1007 with a notice, nothing of theirs reached the binary",
		len(cases), len(want), len(want), len(closed), strings.Join(closed[:3], ", ")+", ...")
}

// oneEnvelope checks raw is the envelope of frame from connID: valid JSON
// and UTF-8, top-level keys conn_id and frame each exactly once (a token
// too on a phone's first envelope, with token forwarding on), and the
// frame verbatim.
func oneEnvelope(raw []byte, connID string, frame []byte) error {
	if !json.Valid(raw) || !utf8.Valid(raw) {
		return fmt.Errorf("the envelope %q is not valid JSON and UTF-8", trimFrame(raw))
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	if _, err := d.Token(); err != nil {
		return err
	}
	seen := map[string]int{}
	var gotConn string
	var gotFrame json.RawMessage
	for d.More() {
		k, err := d.Token()
		if err != nil {
			return err
		}
		key, _ := k.(string)
		seen[key]++
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			return err
		}
		switch key {
		case "conn_id":
			_ = json.Unmarshal(v, &gotConn)
		case "frame":
			gotFrame = v
		}
	}
	if _, err := d.Token(); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if seen["conn_id"] != 1 || seen["frame"] != 1 || len(seen) > 3 || (len(seen) == 3 && seen["token"] != 1) {
		return fmt.Errorf("the envelope %q has keys %v, want conn_id and frame once each", trimFrame(raw), seen)
	}
	if gotConn != connID || !bytes.Equal(gotFrame, frame) {
		return fmt.Errorf("the envelope %q does not carry %q from %s verbatim", trimFrame(raw), trimFrame(frame), connID)
	}
	return nil
}

// trimFrame shortens a frame for evidence.
func trimFrame(b []byte) string {
	if len(b) > 120 {
		return string(b[:120]) + "..."
	}
	return string(b)
}
