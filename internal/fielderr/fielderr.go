// Package fielderr is the typed error that option validation returns: which
// field, which value, and what a valid value looks like. The packages that
// own options (relay, admission) speak in Go field names; the caller that
// owns the flags (config) renders the same error as a flag or a RELAY_*
// variable. Nobody parses error strings.
package fielderr

import "fmt"

// Error reports one unusable option value. Err is the owning package's
// sentinel, so errors.Is keeps working.
type Error struct {
	// Field is the Go field name, e.g. "PongTimeout".
	Field string
	// Value is the refused value.
	Value any
	// Want says what a valid value is, in words that read after "must be":
	// "positive", "1..1024", "at least 1024", "at least" (with Than).
	Want string
	// Than, if set, names the field Want compares against; ThanValue is
	// that field's value.
	Than      string
	ThanValue any
	// Err is the sentinel of the package that owns the field.
	Err error
}

// Error renders with Go field names: "relay: invalid options: PongTimeout 0s
// must be positive".
func (e *Error) Error() string {
	s := fmt.Sprintf("%v: %s %v must be %s", e.Err, e.Field, e.Value, e.Want)
	if e.Than != "" {
		s += fmt.Sprintf(" %s (%v)", e.Than, e.ThanValue)
	}
	return s
}

// Unwrap returns the sentinel.
func (e *Error) Unwrap() error { return e.Err }
