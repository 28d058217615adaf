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
	// The first request was admitted, then refused by header validation
	// (bad_headers); the other 49 by the rate limit: 50 refusals in all.
	require.Equal(t, "bad_headers", refused[0]["reason"])
	for _, m := range refused {
		require.Equal(t, "INFO", m["level"])
		require.Equal(t, "127.0.0.1", m["remote"])
	}
	for _, m := range refused[1:] {
		require.Equal(t, "rate_limited", m["reason"])
	}
	require.EqualValues(t, requests-refusalLogBudget, suppressed[0]["count"])
}

// A request the routing core refuses (400, bad headers) is logged the same
// way: reason and client address, never which header.
func TestRefusals_BadHeadersLogged(t *testing.T) {
	r := start(t)
	req, err := http.NewRequest(http.MethodGet, r.base+"/v1/client", nil)
	require.NoError(t, err)
	req.Header.Set("X-Pyrycode-Server", "bad id with spaces")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Eventually(t, func() bool {
		return strings.Contains(r.log.String(), `"event":"refused","reason":"bad_headers","remote":"127.0.0.1"`)
	}, 5*time.Second, 10*time.Millisecond, "no refusal line:\n%s", r.log.String())
	require.NotContains(t, r.log.String(), "bad id with spaces")
}
