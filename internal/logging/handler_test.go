package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

// capture returns a logger on a Handler and a function that parses what it
// wrote, failing the test unless every line is one complete JSON object.
func capture(t *testing.T, opts *Options) (*slog.Logger, *bytes.Buffer, func() []map[string]any) {
	t.Helper()
	var buf bytes.Buffer
	l := slog.New(NewHandler(&buf, opts))
	return l, &buf, func() []map[string]any {
		t.Helper()
		var out []map[string]any
		for _, line := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("line is not one JSON object: %v\n%s", err, line)
			}
			out = append(out, m)
		}
		return out
	}
}

func one(t *testing.T, lines []map[string]any) map[string]any {
	t.Helper()
	if len(lines) != 1 {
		t.Fatalf("got %d lines, want 1: %v", len(lines), lines)
	}
	return lines[0]
}

func wantKeys(t *testing.T, m map[string]any, keys ...string) {
	t.Helper()
	want := map[string]bool{KeyTime: true, KeyLevel: true, KeyMsg: true}
	for _, k := range keys {
		want[k] = true
	}
	for k := range m {
		if !want[k] {
			t.Errorf("unexpected key %q in %v", k, m)
		}
	}
	for k := range want {
		if _, ok := m[k]; !ok {
			t.Errorf("missing key %q in %v", k, m)
		}
	}
}

func wantDropped(t *testing.T, m map[string]any, n int) {
	t.Helper()
	if got, _ := m[KeyDroppedAttrs].(float64); int(got) != n {
		t.Errorf("dropped_attrs = %v, want %d", m[KeyDroppedAttrs], n)
	}
}

func TestHandler_OffAllowlistKey_DroppedAndValueAbsent(t *testing.T) {
	l, buf, lines := capture(t, nil)
	l.Info("upgrade", "x-pyrycode-token", "SECRET-TOKEN-9f2c", "event", "phone_joined", slog.String("payload", "SECRET-FRAME"))
	m := one(t, lines())
	wantKeys(t, m, KeyEvent, KeyDroppedAttrs)
	wantDropped(t, m, 2)
	for _, secret := range []string{"SECRET-TOKEN-9f2c", "x-pyrycode-token", "SECRET-FRAME", "payload"} {
		if strings.Contains(buf.String(), secret) {
			t.Errorf("output contains %q: %s", secret, buf)
		}
	}
}

func TestHandler_ReservedKeys_CannotForgeLevelOrMessage(t *testing.T) {
	l, buf, lines := capture(t, nil)
	l.Info("real", "level", "ERROR", "msg", "forged", "time", "1999", "dropped_attrs", 0, "source", "x.go")
	m := one(t, lines())
	wantKeys(t, m, KeyDroppedAttrs)
	wantDropped(t, m, 5)
	if m[KeyLevel] != "INFO" || m[KeyMsg] != "real" {
		t.Errorf("level/msg forged: %v", m)
	}
	if n := strings.Count(buf.String(), `"level"`); n != 1 {
		t.Errorf(`"level" appears %d times: %s`, n, buf)
	}
}

func TestHandler_DuplicateKey_FirstKeptRestDropped(t *testing.T) {
	l, _, lines := capture(t, nil)
	l.With("conn_id", "client-first").Info("m", "conn_id", "client-second", "role", "phone", "role", "binary")
	m := one(t, lines())
	wantKeys(t, m, KeyConnID, KeyRole, KeyDroppedAttrs)
	wantDropped(t, m, 2)
	if m[KeyConnID] != "client-first" || m[KeyRole] != "phone" {
		t.Errorf("first value not kept: %v", m)
	}
}

// TestHandler_ControlChars_CannotForgeLine: a value carrying a newline and a
// fake JSON record stays inside one line, and the decoded strings carry no
// line breaks or bidi controls either (so a log viewer cannot be fooled).
func TestHandler_ControlChars_CannotForgeLine(t *testing.T) {
	l, buf, lines := capture(t, nil)
	evil := "a\nb{\"level\":\"ERROR\",\"msg\":\"root login\"}\r\u2028\u2029\u202e\u2066\u0085\x7f\x1b[2J"
	l.Warn("msg "+evil, "device", evil, "user_agent", evil)

	if n := bytes.Count(buf.Bytes(), []byte("\n")); n != 1 {
		t.Fatalf("output has %d newlines, want exactly 1:\n%s", n, buf)
	}
	m := one(t, lines())
	want := `ab{"level":"ERROR","msg":"root login"}[2J`
	if m[KeyMsg] != "msg "+want || m[KeyDevice] != want || m[KeyUserAgent] != want {
		t.Fatalf("not sanitised:\n msg=%q\n device=%q\n ua=%q", m[KeyMsg], m[KeyDevice], m[KeyUserAgent])
	}
	if m[KeyLevel] != "WARN" {
		t.Errorf("level = %v", m[KeyLevel])
	}
}

func TestHandler_WithAttrs_KeepsEnforcing(t *testing.T) {
	l, buf, lines := capture(t, nil)
	cl := l.With("token", "SECRET-WITH", "device", "Pixel\n8", slog.Any("frame", []byte("SECRET-BYTES")))
	cl.Info("first")
	cl.With("cookie", "SECRET-COOKIE").Info("second", "event", "e")
	got := lines()
	if len(got) != 2 {
		t.Fatalf("got %d lines", len(got))
	}
	wantKeys(t, got[0], KeyDevice, KeyDroppedAttrs)
	wantDropped(t, got[0], 2)
	wantKeys(t, got[1], KeyDevice, KeyEvent, KeyDroppedAttrs)
	wantDropped(t, got[1], 3)
	if got[0][KeyDevice] != "Pixel8" {
		t.Errorf("device = %q", got[0][KeyDevice])
	}
	for _, s := range []string{"SECRET", "token", "cookie", "frame"} {
		if strings.Contains(buf.String(), s) {
			t.Errorf("output contains %q: %s", s, buf)
		}
	}
}

func TestHandler_Groups_Dropped(t *testing.T) {
	t.Run("WithGroup drops everything after it", func(t *testing.T) {
		l, buf, lines := capture(t, nil)
		l.With("event", "kept").WithGroup("req").With("conn_id", "c").Info("m", "reason", "r")
		m := one(t, lines())
		wantKeys(t, m, KeyEvent, KeyDroppedAttrs)
		wantDropped(t, m, 2)
		if strings.Contains(buf.String(), "req") {
			t.Errorf("group name written: %s", buf)
		}
	})
	t.Run("named Group attr dropped even with an allowed key", func(t *testing.T) {
		l, buf, lines := capture(t, nil)
		l.Info("m", slog.Group("event", slog.String("payload", "SECRET")), slog.Group("headers", "a", 1))
		m := one(t, lines())
		wantKeys(t, m, KeyDroppedAttrs)
		wantDropped(t, m, 2)
		if strings.Contains(buf.String(), "SECRET") {
			t.Errorf("group contents written: %s", buf)
		}
	})
	t.Run("unnamed Group inlined and checked", func(t *testing.T) {
		l, _, lines := capture(t, nil)
		l.Info("m", slog.Group("", slog.String("event", "e"), slog.String("payload", "x")))
		m := one(t, lines())
		wantKeys(t, m, KeyEvent, KeyDroppedAttrs)
		wantDropped(t, m, 1)
	})
}

type nilStringer struct{ name string }

func (n *nilStringer) String() string { return n.name } // panics on a nil receiver

type role string // a typed enum without a String method

func TestHandler_ErrorValue_Sanitised(t *testing.T) {
	l, _, lines := capture(t, nil)
	err := fmt.Errorf("listen tcp: %w", errors.New("bad\naddr {\"level\":\"ERROR\"}\u2028"))
	l.Error("listener failed", "error", err)
	l.Info("stringer", "reason", (*nilStringer)(nil), "role", role("binary\n"))
	got := lines()
	if len(got) != 2 {
		t.Fatalf("got %d lines", len(got))
	}
	if want := `listen tcp: badaddr {"level":"ERROR"}`; got[0][KeyError] != want {
		t.Errorf("error = %q, want %q", got[0][KeyError], want)
	}
	if got[1][KeyReason] != "<*logging.nilStringer>" {
		t.Errorf("panicking Stringer = %q", got[1][KeyReason])
	}
	if got[1][KeyRole] != "binary" {
		t.Errorf("typed string = %q", got[1][KeyRole])
	}
}

type frame struct {
	Token string
	Body  []byte
}

func TestHandler_StructsBytesMaps_NotDumped(t *testing.T) {
	l, buf, lines := capture(t, nil)
	l.Info("m",
		"error", []byte("SECRET-BYTES"),
		"reason", frame{Token: "SECRET-TOKEN", Body: []byte("x")},
		"device", map[string]string{"x-pyrycode-token": "SECRET-MAP"},
		"version", json.RawMessage(`{"SECRET":"RAW"}`),
		"event", &frame{Token: "SECRET-PTR"},
		"count", math.NaN(),
	)
	m := one(t, lines())
	if strings.Contains(buf.String(), "SECRET") {
		t.Fatalf("payload dumped: %s", buf)
	}
	want := map[string]string{
		KeyError:   "<[]uint8>",
		KeyReason:  "<logging.frame>",
		KeyDevice:  "<map[string]string>",
		KeyVersion: "<jsontext.Value>", // json.RawMessage since Go 1.27: a Stringer, still not dumped
		KeyEvent:   "<*logging.frame>",
		KeyCount:   "NaN",
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %q, want %q", k, m[k], v)
		}
	}
}

func TestHandler_Cap_Applied(t *testing.T) {
	l, _, lines := capture(t, nil)
	long := strings.Repeat("A", 100000)
	l.Info(long, "user_agent", long, "error", errors.New(long))
	m := one(t, lines())
	for _, k := range []string{KeyMsg, KeyUserAgent, KeyError} {
		s, _ := m[k].(string)
		if n := utf8.RuneCountInString(s); n != DefaultMaxRunes || !strings.HasSuffix(s, "…") {
			t.Errorf("%s: %d runes, suffix %q; want %d ending in …", k, n, s[max(0, len(s)-3):], DefaultMaxRunes)
		}
	}

	l2, _, lines2 := capture(t, &Options{MaxRunes: 8})
	l2.Info("m", "device", "Pixel 8 Pro XL")
	if got := one(t, lines2())[KeyDevice]; got != "Pixel 8…" {
		t.Errorf("MaxRunes 8: device = %q", got)
	}
}

func TestNew_LevelFilters(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, slog.LevelWarn)
	l.Info("hidden", "event", "e")
	l.Warn("shown", "event", "e", "token", "SECRET")
	out := buf.String()
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, `"msg":"shown"`) || strings.Contains(out, "SECRET") {
		t.Fatalf("New(w, Warn) wrote:\n%s", out)
	}
}

// TestHandler_ConcurrentDerivedLoggers shares WithAttrs-derived handlers across
// goroutines (run with -race): each line must carry its own logger's values.
func TestHandler_ConcurrentDerivedLoggers(t *testing.T) {
	l, _, lines := capture(t, nil)
	base := l.With("event", "relay", "token", "SECRET")
	var wg sync.WaitGroup
	for g := range 8 {
		cl := base.With("conn_id", fmt.Sprintf("c%d", g))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				cl.Info("m", "count", i, "role", "phone")
			}
		}()
	}
	wg.Wait()
	got := lines()
	if len(got) != 8*50 {
		t.Fatalf("got %d lines", len(got))
	}
	for _, m := range got {
		wantKeys(t, m, KeyEvent, KeyConnID, KeyCount, KeyRole, KeyDroppedAttrs)
		wantDropped(t, m, 1)
	}
}
