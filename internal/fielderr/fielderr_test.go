package fielderr

import (
	"errors"
	"testing"
	"time"
)

var errSentinel = errors.New("pkg: invalid options")

func TestError_RendersFieldValueWantAndUnwrapsToSentinel(t *testing.T) {
	var err error = &Error{Field: "PongTimeout", Value: time.Duration(0), Want: "positive", Err: errSentinel}
	if got, want := err.Error(), "pkg: invalid options: PongTimeout 0s must be positive"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, errSentinel) {
		t.Fatal("errors.Is does not reach the sentinel")
	}
	var fe *Error
	if !errors.As(err, &fe) || fe.Field != "PongTimeout" {
		t.Fatalf("errors.As = %v", fe)
	}
	err = &Error{Field: "PhoneQueueBytes", Value: 10, Want: "at least", Than: "MaxMessageBytes", ThanValue: 20, Err: errSentinel}
	if got, want := err.Error(), "pkg: invalid options: PhoneQueueBytes 10 must be at least MaxMessageBytes (20)"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
}
