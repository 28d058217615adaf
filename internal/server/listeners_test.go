package server

import (
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

func TestMetricsListener_OnlyMetricsAndHealthz(t *testing.T) {
	r := start(t, "--metrics-listen", "127.0.0.1:0")
	base := "http://" + r.srv.Addr("metrics").String()
	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	require.Contains(t, string(body), "relay_frames_dropped_total")
	// /healthz by IP, for balancers that cannot send the TLS name.
	resp, err = http.Get(base + "/healthz")
	require.NoError(t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	require.Contains(t, string(body), `"status":"ok"`)
	r.srv.LameDuck()
	resp, err = http.Get(base + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 503, resp.StatusCode, "the metrics listener's /healthz follows the lame duck too")
	for _, path := range []string{"/", "/debug/pprof/", "/healthzX", "/metricsX"} {
		resp, err := http.Get(base + path)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, 404, resp.StatusCode, path)
		require.Empty(t, body, path)
	}
	resp, err = http.Get(r.base + "/metrics")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 404, resp.StatusCode, "metrics must not be on the public listener")
}

// net/http's error lines quote client-chosen SNI and ALPN names; they are
// counted, and logged (even at debug level) only as a fixed phrase.
func TestHTTPErrorLog_ClientTextNeverLogged(t *testing.T) {
	r := startStaticRelay(t)
	const canary = "canary-sni-7c1d.example.test"
	_, err := r.handshake(t, &tls.Config{ServerName: canary, NextProtos: []string{"canary-alpn-7c1d"}, InsecureSkipVerify: true}) //nolint:gosec // the test is the attacker
	require.Error(t, err, "an unknown ALPN protocol must fail the handshake")
	// The error is counted just before it is logged: wait for both.
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(r.srv.metrics.HTTPErrors.WithLabelValues("tls_handshake")) >= 1 &&
			strings.Contains(r.logs.String(), `"event":"http_error"`)
	}, 5*time.Second, 10*time.Millisecond, "the handshake error was not counted and logged")
	logs := r.logs.String()
	require.False(t, strings.Contains(logs, "canary"), "client-chosen text reached the log:\n%s", logs)
	// The failure is a refusal an operator sees, with the socket peer only.
	require.Eventually(t, func() bool {
		return strings.Contains(r.logs.String(), `"event":"refused","reason":"tls_handshake","remote":"127.0.0.1"`)
	}, 5*time.Second, 10*time.Millisecond, "no refusal line for the failed handshake:\n%s", r.logs.String())
}
