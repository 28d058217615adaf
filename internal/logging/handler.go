package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"reflect"
	"slices"
	"strconv"
)

// Options configures a Handler.
type Options struct {
	// Level is the minimum level written; nil means slog.LevelInfo. A
	// *slog.LevelVar allows changing it while running.
	Level slog.Leveler

	// MaxRunes caps every string value and the message (see Sanitize). Zero
	// means DefaultMaxRunes. A larger cap makes longer lines possible for
	// anyone who can put a string into a logged header.
	MaxRunes int
}

// Handler is a slog.Handler that writes JSON lines through slog.JSONHandler
// and enforces the log hygiene rules before anything reaches it:
//
//   - only caller keys on the allowlist (IsCallerKey) are written; any other
//     attribute, a caller attribute reusing time/level/msg/dropped_attrs, and
//     a repeated key are dropped, and the line gets dropped_attrs=N instead;
//     the dropped value is never printed;
//   - groups are not allowed: a WithGroup handler drops every attribute after
//     it, and a slog.Group attribute with a key is dropped (one with an empty
//     key is inlined, as slog specifies, and its members checked one by one);
//   - the message and every string value pass through Sanitize;
//   - a byte slice of any named type is written only as "<its type name>",
//     even when it has a String method (json.RawMessage does since Go 1.27);
//   - an error or fmt.Stringer is written as its sanitised text; a named
//     scalar type (type Role string) as its scalar; anything else of kind Any
//     (struct, map, slice, pointer) only as "<its type name>", never its
//     contents, since it could be a payload or a token.
//
// WithAttrs and WithGroup return handlers that keep enforcing all of this.
type Handler struct {
	inner    slog.Handler // the JSONHandler, possibly with sanitised WithAttrs
	maxRunes int
	grouped  bool     // a non-empty WithGroup was applied: drop everything
	dropped  int      // attributes dropped by WithAttrs, reported on every line
	keys     []string // keys already written by WithAttrs (clipped: never appended in place)
}

var _ slog.Handler = (*Handler)(nil)

// NewHandler returns a Handler writing JSON lines to w. opts may be nil.
func NewHandler(w io.Writer, opts *Options) *Handler {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.MaxRunes == 0 {
		o.MaxRunes = DefaultMaxRunes
	}
	return &Handler{
		inner:    slog.NewJSONHandler(w, &slog.HandlerOptions{Level: o.Level}),
		maxRunes: o.MaxRunes,
	}
}

// New returns a logger writing allowlisted, sanitised JSON lines to w at
// level and above.
func New(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(NewHandler(w, &Options{Level: level}))
}

// Enabled reports whether the inner JSON handler writes level.
func (h *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

// Handle writes r with its message sanitised and its attributes filtered.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	var seen [16]string
	var out [8]slog.Attr
	f := filter{
		maxRunes: h.maxRunes,
		grouped:  h.grouped,
		dropped:  h.dropped,
		seen:     append(seen[:0], h.keys...),
		out:      out[:0],
	}
	r.Attrs(func(a slog.Attr) bool {
		f = f.add(a)
		return true
	})
	nr := slog.NewRecord(r.Time, r.Level, Sanitize(r.Message, h.maxRunes), r.PC)
	nr.AddAttrs(f.out...)
	if f.dropped > 0 {
		nr.AddAttrs(slog.Int(KeyDroppedAttrs, f.dropped))
	}
	return h.inner.Handle(ctx, nr)
}

// WithAttrs filters attrs now, so that nothing off the allowlist reaches the
// inner handler, and remembers how many were dropped.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	f := filter{
		maxRunes: h.maxRunes,
		grouped:  h.grouped,
		seen:     slices.Clone(h.keys),
	}
	for _, a := range attrs {
		f = f.add(a)
	}
	h2 := *h
	if len(f.out) > 0 {
		h2.inner = h.inner.WithAttrs(f.out)
	}
	h2.dropped += f.dropped
	h2.keys = slices.Clip(f.seen) // Handle appends to a copy; clipping makes sure of it
	return &h2
}

// WithGroup returns a handler that drops every attribute added after it:
// groups are not part of the log format. The name is never written.
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h // slog: an empty group name is no group
	}
	h2 := *h
	h2.grouped = true
	return &h2
}

// filter applies the rules to a sequence of attributes. add takes and returns
// it by value: assigning appends through a pointer would move Handle's stack
// buffers to the heap.
type filter struct {
	maxRunes int
	grouped  bool
	dropped  int
	seen     []string
	out      []slog.Attr
}

func (f filter) add(a slog.Attr) filter {
	if a.Key == "" && a.Value.Kind() == slog.KindAny && a.Value.Any() == nil {
		return f // slog ignores the empty attribute; so do we, without counting it
	}
	if f.grouped {
		f.dropped++
		return f
	}
	a.Value = a.Value.Resolve()
	if a.Key == "" && a.Value.Kind() == slog.KindGroup {
		for _, m := range a.Value.Group() { // slog inlines an unnamed group
			f = f.add(m)
		}
		return f
	}
	if !IsCallerKey(a.Key) || slices.Contains(f.seen, a.Key) {
		f.dropped++
		return f
	}
	v, ok := sanitizeValue(a.Value, f.maxRunes)
	if !ok {
		f.dropped++
		return f
	}
	a.Value = v
	f.seen = append(f.seen, a.Key)
	f.out = append(f.out, a)
	return f
}

// sanitizeValue returns the value to write for a resolved v, or false if v is
// a kind that is never written (a group).
func sanitizeValue(v slog.Value, maxRunes int) (slog.Value, bool) {
	switch v.Kind() {
	case slog.KindString:
		return slog.StringValue(Sanitize(v.String(), maxRunes)), true
	case slog.KindInt64, slog.KindUint64, slog.KindBool, slog.KindDuration, slog.KindTime:
		return v, true
	case slog.KindFloat64:
		if x := v.Float64(); math.IsNaN(x) || math.IsInf(x, 0) {
			// encoding/json refuses these; write them as text rather than an error.
			return slog.StringValue(strconv.FormatFloat(x, 'g', -1, 64)), true
		}
		return v, true
	case slog.KindAny:
		return anyValue(v.Any(), maxRunes), true
	}
	return slog.Value{}, false
}

// anyValue renders a value of kind Any without ever dumping its contents.
func anyValue(x any, maxRunes int) slog.Value {
	// Byte slices are payloads whatever methods they carry: since Go 1.27
	// json.RawMessage is jsontext.Value, a Stringer that returns the raw JSON.
	if rv := reflect.ValueOf(x); rv.Kind() == reflect.Slice && rv.Type().Elem().Kind() == reflect.Uint8 {
		return slog.StringValue(typeName(x, maxRunes))
	}
	switch t := x.(type) {
	case nil:
		return slog.AnyValue(nil) // JSON null
	case error:
		return slog.StringValue(Sanitize(safeText(t.Error, x), maxRunes))
	case fmt.Stringer:
		return slog.StringValue(Sanitize(safeText(t.String, x), maxRunes))
	}
	// Named scalar types (typed enums without a String method) are not
	// payloads: write the scalar. Everything else gets its type name only.
	rv := reflect.ValueOf(x)
	switch rv.Kind() {
	case reflect.String:
		return slog.StringValue(Sanitize(rv.String(), maxRunes))
	case reflect.Bool:
		return slog.BoolValue(rv.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return slog.Int64Value(rv.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return slog.Uint64Value(rv.Uint())
	}
	return slog.StringValue(typeName(x, maxRunes))
}

// safeText calls an Error or String method, answering with the type name if it
// panics (a nil pointer receiver, typically): a log call must not crash.
func safeText(text func() string, x any) (s string) {
	defer func() {
		if recover() != nil {
			s = typeName(x, DefaultMaxRunes)
		}
	}()
	return text()
}

func typeName(x any, maxRunes int) string {
	return Sanitize("<"+fmt.Sprintf("%T", x)+">", maxRunes)
}
