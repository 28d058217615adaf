package push

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRetryAfter_SecondsDateCapAndDefault(t *testing.T) {
	now := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"":             DefaultRetryAfter,
		"garbage":      DefaultRetryAfter,
		"-5":           DefaultRetryAfter,
		"0":            0,
		"42":           42 * time.Second,
		"999999999999": MaxRetryAfter,
		now.Add(90 * time.Second).Format(http.TimeFormat): 90 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat):       0,
		now.Add(48 * time.Hour).Format(http.TimeFormat):   MaxRetryAfter,
	} {
		h := http.Header{}
		if v != "" {
			h.Set("Retry-After", v)
		}
		require.Equal(t, want, retryAfter(h, now), "Retry-After %q", v)
	}
}

func TestWakeBody_OnlyTheTokenComesFromTheBinary(t *testing.T) {
	// A token that tries to close the string and add a notification stays a string.
	evil := `x","notification":{"title":"pwned"},"y":"`
	var got map[string]map[string]any
	require.NoError(t, json.Unmarshal(wakeBody(evil), &got))
	require.Equal(t, map[string]map[string]any{"message": {
		"token":   evil,
		"data":    map[string]any{"kind": "wake"},
		"android": map[string]any{"priority": "HIGH"},
	}}, got)
}
