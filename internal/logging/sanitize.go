package logging

import (
	"unicode"
	"unicode/utf8"
)

// DefaultMaxRunes caps every string the handler writes, message included.
// 256 runes holds any user-agent or version string worth reading while
// keeping one hostile header from filling the log.
const DefaultMaxRunes = 256

// cutMarker ends a string that Sanitize shortened, so a reader can tell a
// capped value from a short one. It counts towards the cap.
const cutMarker = '…'

// Sanitize returns s made safe to print on one line of a log or a terminal.
// It is the relay's only sanitiser: the routing core cleans client-chosen
// labels (device name, version, user agent) with it too, so what is logged
// follows one rule set:
//
//   - invalid UTF-8 becomes U+FFFD;
//   - control characters are removed: C0 (U+0000–U+001F, so also tab, CR and
//     LF), DEL, C1 (U+0080–U+009F), and the Unicode line and paragraph
//     separators U+2028 and U+2029, so a value cannot start a forged line;
//   - format characters (Unicode Cf) are removed: bidi controls (U+061C,
//     U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), so a value cannot
//     reorder what a reader sees, and invisible ones (zero-width space,
//     U+FEFF, soft hyphen...), so "Al\u200bice" cannot pass for "Alice".
//     The zero-width joiner U+200D is kept: it joins emoji sequences (a
//     device named with a family emoji) and can neither break a line nor
//     reorder text;
//   - leading and trailing white space is trimmed;
//   - the result is at most maxRunes runes: a longer string is cut and ends
//     in "…". maxRunes < 1 yields "".
//
// Sanitize does not allocate when s is already short printable ASCII.
func Sanitize(s string, maxRunes int) string {
	if maxRunes < 1 {
		return ""
	}
	if isCleanASCII(s, maxRunes) {
		return s
	}
	buf := make([]byte, 0, min(len(s), 4*maxRunes))
	n := 0                // runes in buf
	cut := false          // a kept, non-space rune did not fit
	for _, r := range s { // range yields U+FFFD for each invalid byte
		if strip(r) {
			continue
		}
		if n == 0 && unicode.IsSpace(r) {
			continue // leading white space
		}
		if n == maxRunes {
			if !unicode.IsSpace(r) {
				cut = true
				break
			}
			continue // trailing white space beyond the cap is trimmed anyway
		}
		buf = utf8.AppendRune(buf, r)
		n++
	}
	buf, n = trimRightSpace(buf, n)
	if cut {
		for n > maxRunes-1 {
			_, size := utf8.DecodeLastRune(buf)
			buf = buf[:len(buf)-size]
			n--
		}
		buf, _ = trimRightSpace(buf, n)
		buf = utf8.AppendRune(buf, cutMarker)
	}
	return string(buf)
}

// strip reports whether r is removed by Sanitize.
func strip(r rune) bool {
	switch {
	case r < 0x20, r >= 0x7f && r <= 0x9f: // C0, DEL, C1
		return true
	case r < 0x7f: // printable ASCII
		return false
	case r == 0x2028, r == 0x2029: // line and paragraph separators
		return true
	case r == 0x200d: // zero-width joiner: emoji sequences
		return false
	}
	// Format characters: the bidi embeddings, overrides, isolates and marks,
	// zero-width spaces, U+FEFF, the soft hyphen, tag characters.
	return unicode.Is(unicode.Cf, r)
}

// isCleanASCII is Sanitize's fast path: printable ASCII, within the cap, with
// nothing to trim.
func isCleanASCII(s string, maxRunes int) bool {
	if len(s) > maxRunes {
		return false
	}
	if s == "" {
		return true
	}
	if s[0] == ' ' || s[len(s)-1] == ' ' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

func trimRightSpace(buf []byte, n int) ([]byte, int) {
	for len(buf) > 0 {
		r, size := utf8.DecodeLastRune(buf)
		if !unicode.IsSpace(r) {
			break
		}
		buf = buf[:len(buf)-size]
		n--
	}
	return buf, n
}
