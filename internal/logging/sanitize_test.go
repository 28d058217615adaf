package logging

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"pgregory.net/rapid"
)

func TestSanitize_Table(t *testing.T) {
	tests := []struct {
		name string
		in   string
		max  int
		want string
	}{
		{"empty", "", 10, ""},
		{"clean ascii unchanged", "pyry/1.4.2 (linux)", 256, "pyry/1.4.2 (linux)"},
		{"newline forging a json line", "a\nb{\"level\":\"ERROR\"}", 256, "ab{\"level\":\"ERROR\"}"},
		{"cr tab nul esc", "a\r\t\x00\x1b[31mb", 256, "a[31mb"},
		{"del and c1 incl NEL", "a\x7fb\u0085c\u009bd", 256, "abcd"},
		{"line and paragraph separators", "a\u2028b\u2029c", 256, "abc"},
		{"bidi override and isolates", "\u202eevil\u202c\u2066x\u2069\u200e\u200f\u061c", 256, "evilx"},
		{"invalid utf8 replaced", "a\xffb", 256, "a\ufffdb"},
		{"trim unicode space", "\u00a0 phone \u3000", 256, "phone"},
		{"emoji with zwj kept", "👨\u200d👩\u200d👧 iPad", 256, "👨\u200d👩\u200d👧 iPad"},
		{"invisible format characters", "Al\u200bi\u00adc\ufeffe\u2060\u200c", 256, "Alice"},
		{"exactly at cap", "abcde", 5, "abcde"},
		{"one over cap", "abcdef", 5, "abcd…"},
		{"cap counts runes not bytes", "ééééé", 5, "ééééé"},
		{"cap then multibyte cut", "éééééé", 5, "éééé…"},
		{"trailing space beyond cap is not a cut", "abcde     ", 5, "abcde"},
		{"space before marker trimmed", "abc  defgh", 5, "abc…"},
		{"stripped chars do not count", "a\nb\nc\nd\ne", 5, "abcde"},
		{"max 1", "abc", 1, "…"},
		{"max 0", "abc", 0, ""},
		{"max negative", "abc", -3, ""},
		{"only controls", "\n\r\u2028", 10, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Sanitize(tt.in, tt.max); got != tt.want {
				t.Errorf("Sanitize(%q, %d) = %q, want %q", tt.in, tt.max, got, tt.want)
			}
		})
	}
}

// TestSanitize_Properties: for any input the result is valid UTF-8, within
// the cap, free of every stripped rune, trimmed, and stable under a second pass.
func TestSanitize_Properties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		// Bias towards the interesting runes as well as arbitrary bytes.
		special := rapid.SampledFrom([]rune{'\n', '\r', '\t', 0, 0x7f, 0x85, 0x9f, 0x2028, 0x2029, 0x202e, 0x2066, 0x2069, 0x200e, 0x061c, 0x200b, 0x200d, 0xfeff, 0xad, ' ', 0xa0, 'a', 'é', '😀', 0xfffd})
		runes := rapid.SliceOf(rapid.OneOf(special, rapid.Rune())).Draw(t, "runes")
		s := string(runes)
		if rapid.Bool().Draw(t, "raw") {
			s = string(rapid.SliceOf(rapid.Byte()).Draw(t, "bytes"))
		}
		max := rapid.IntRange(1, 40).Draw(t, "max")

		got := Sanitize(s, max)
		if !utf8.ValidString(got) {
			t.Fatalf("invalid UTF-8: %q", got)
		}
		if n := utf8.RuneCountInString(got); n > max {
			t.Fatalf("%d runes > cap %d: %q", n, max, got)
		}
		for _, r := range got {
			if strip(r) {
				t.Fatalf("stripped rune %U survived in %q", r, got)
			}
		}
		if strings.TrimFunc(got, unicode.IsSpace) != got {
			t.Fatalf("not trimmed: %q", got)
		}
		if again := Sanitize(got, max); again != got {
			t.Fatalf("not idempotent: %q -> %q", got, again)
		}
	})
}

func TestSanitize_CleanInputDoesNotAllocate(t *testing.T) {
	s := "pyry-desktop/1.4.2"
	if n := testing.AllocsPerRun(100, func() { _ = Sanitize(s, DefaultMaxRunes) }); n != 0 {
		t.Fatalf("Sanitize allocated %v times on clean input", n)
	}
}

// FuzzSanitize: the properties above for any input and cap (negative caps
// included), plus: a value that needs no cleaning passes through unchanged.
func FuzzSanitize(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string, max int) {
		max %= 300
		out := Sanitize(s, max)
		if !utf8.ValidString(out) {
			t.Fatalf("Sanitize(%q, %d) = %q: invalid UTF-8", s, max, out)
		}
		if n := utf8.RuneCountInString(out); n > max && !(max < 1 && n == 0) {
			t.Fatalf("Sanitize(%q, %d) = %q: %d runes", s, max, out, n)
		}
		for _, r := range out {
			if strip(r) {
				t.Fatalf("Sanitize(%q, %d) = %q keeps %U", s, max, out, r)
			}
		}
		if strings.TrimFunc(out, unicode.IsSpace) != out {
			t.Fatalf("Sanitize(%q, %d) = %q: surrounding space", s, max, out)
		}
		if again := Sanitize(out, max); again != out {
			t.Fatalf("not idempotent: %q -> %q -> %q", s, out, again)
		}
		clean := utf8.ValidString(s) && strings.TrimFunc(s, unicode.IsSpace) == s && utf8.RuneCountInString(s) <= max
		for _, r := range s {
			clean = clean && !strip(r)
		}
		if clean && out != s {
			t.Fatalf("clean value %q changed to %q", s, out)
		}
	})
}
