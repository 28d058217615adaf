package server

import (
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/config"
	"github.com/pyrycode/relay/internal/logging"
)

// get returns the status, body and Retry-After of a GET to url.
func getHealth(t *testing.T, url string) (int, string, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"), url)
	return resp.StatusCode, string(body), resp.Header.Get("Retry-After")
}

// Before Serve, nothing is ready: a listener bound but not yet serving (or
// the metrics listener serving a moment before the public one) must not
// tell a balancer to send clients. /livez answers all along.
func TestHealth_BeforeServe_NotReady_Live(t *testing.T) {
	cfg, err := config.Parse([]string{"--insecure-listen", "127.0.0.1:0"}, nil, io.Discard)
	require.NoError(t, err)
	srv, err := New(cfg, logging.New(io.Discard, 0))
	require.NoError(t, err)
	h := srv.Handler()
	for path, want := range map[string]int{"/livez": 200, "/readyz": 503, "/healthz": 503} {
		w := newRecorder()
		h.ServeHTTP(w, mustRequest(t, "GET", "http://relay.test"+path))
		require.Equal(t, want, w.Code, path)
	}
	require.Equal(t, notReadyStarting, srv.notReady())
}

// Serving, both listeners answer /livez and /readyz "ok" and /healthz its
// counts; in the lame duck /readyz and /healthz answer 503 with an empty
// body and Retry-After while /livez still answers (the process is alive,
// and a liveness probe must not kill a draining relay).
func TestHealth_ServingThenLameDuck_OnBothListeners(t *testing.T) {
	r := start(t, "--metrics-listen", "127.0.0.1:0")
	bases := map[string]string{"public": r.base, "metrics": "http://" + r.srv.Addr("metrics").String()}
	for name, base := range bases {
		for _, path := range []string{"/livez", "/readyz"} {
			code, body, _ := getHealth(t, base+path)
			require.Equal(t, 200, code, name+path)
			require.Equal(t, "ok\n", body, name+path)
		}
		code, body, _ := getHealth(t, base+"/healthz")
		require.Equal(t, 200, code, name)
		require.Contains(t, body, `"status":"ok"`, name)
	}
	require.True(t, r.srv.Ready())

	r.srv.LameDuck()
	require.Equal(t, notReadyDraining, r.srv.notReady())
	for name, base := range bases {
		for _, path := range []string{"/readyz", "/healthz"} {
			code, body, retry := getHealth(t, base+path)
			require.Equal(t, 503, code, name+path)
			require.Empty(t, body, name+path+": a 503 says no reason")
			require.Equal(t, "5", retry, name+path)
		}
		code, body, _ := getHealth(t, base+"/livez")
		require.Equal(t, 200, code, name+"/livez in the lame duck")
		require.Equal(t, "ok\n", body)
	}
}

// ApplyLimits runs while connections are admitted and sockets accepted:
// the race detector watches the swapped caps.
func TestApplyLimits_WhileServing(t *testing.T) {
	r := start(t)
	cfg, err := config.Parse([]string{"--insecure-listen", "127.0.0.1:0"}, nil, io.Discard)
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 50; i++ {
			resp, err := http.Get(r.base + "/v1/server") // refused (no upgrade) after admission
			if err == nil {
				resp.Body.Close()
			}
		}
	}()
	for i := 0; i < 200; i++ {
		c := cfg
		c.Admission.MaxConnsPerIP = 1 + i%7
		c.Sockets.MaxPerIP = 64 + i%7
		require.NoError(t, r.srv.ApplyLimits(c))
	}
	<-done
	max, perIP, _, _ := r.srv.admit.Limits()
	require.Equal(t, [2]int{cfg.Admission.MaxConns, 1 + 199%7}, [2]int{max, perIP})
}
