package server

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Refused requests are logged at info with reason and client address, at
// most refusalLogBudget lines per second, then one line counting the rest.
func TestRefusals_LoggedWithReasonAndAddress_WithinBudget(t *testing.T) {
	r := start(t, "--upgrade-rate", "0.01", "--upgrade-burst", "1")
	fixed := time.Now()
	r.srv.refusals.now = func() time.Time { return fixed } // one window, however slow the machine
	const requests = 50
	for range requests {
		resp, err := http.Get(r.base + "/v1/server")
		require.NoError(t, err)
		resp.Body.Close()
	}
	var refused, suppressed []map[string]any
	require.Eventually(t, func() bool {
		refused, suppressed = nil, nil
		for _, l := range strings.Split(r.log.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) != nil {
				continue
			}
			switch m["event"] {
			case "refused":
				refused = append(refused, m)
			case "refusals_suppressed":
				suppressed = append(suppressed, m)
			}
		}
		return len(suppressed) == 1
	}, 5*time.Second, 20*time.Millisecond, "no summary of the suppressed lines:\n%s", r.log.String())
	require.Len(t, refused, refusalLogBudget)
	for _, m := range refused {
		require.Equal(t, "INFO", m["level"])
		require.Equal(t, "rate_limited", m["reason"])
		require.Equal(t, "127.0.0.1", m["remote"])
	}
	// The first request was admitted (and refused by header validation).
	require.EqualValues(t, requests-1-refusalLogBudget, suppressed[0]["count"])
}
