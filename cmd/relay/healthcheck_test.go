package main

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// relay healthcheck against the real relay: 0 while /readyz answers 200, 1
// for any other answer (a 404, the lame duck's 503, nothing listening), 2
// for a usage error. The image's HEALTHCHECK depends on exactly this.
func TestHealthcheck_ExitCodes_AgainstTheRelay(t *testing.T) {
	p := startRelay(t, relayEnv(t, "RELAY_DRAIN_DELAY=30s"), "serve", "--insecure-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0")
	p.waitListening(t, "public")
	metrics := p.waitListening(t, "metrics")
	check := func(url string) result {
		return runRelay(t, relayEnv(t), "healthcheck", "--url", url, "--timeout", "2s")
	}

	r := check("http://" + metrics + "/readyz")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "200 OK")
	require.Equal(t, 0, check("http://"+metrics+"/livez").code)

	r = check("http://" + metrics + "/no-such-path")
	require.Equal(t, 1, r.code, r.stdout)
	require.Contains(t, r.stderr, "404")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := ln.Addr().String()
	require.NoError(t, ln.Close())
	r = check("http://" + closed + "/readyz")
	require.Equal(t, 1, r.code, "nothing listening")
	require.Contains(t, r.stderr, "connection refused")

	p.signal(t, syscall.SIGTERM) // the lame duck: 30 s of 503 while serving
	require.Eventually(t, func() bool { return check("http://"+metrics+"/readyz").code == 1 }, 5*time.Second, 50*time.Millisecond,
		"healthcheck still 0 in the lame duck")
	require.Equal(t, 0, check("http://"+metrics+"/livez").code, "alive while draining")

	for _, args := range [][]string{
		{"healthcheck"},
		{"healthcheck", "--url", "ftp://127.0.0.1/readyz"},
		{"healthcheck", "--url", "127.0.0.1:9090/readyz"},
		{"healthcheck", "--url", "http://" + metrics + "/readyz", "--timeout", "0s"},
		{"healthcheck", "--no-such-flag"},
		{"healthcheck", "--url", "http://" + metrics + "/readyz", "extra"},
	} {
		r := runRelay(t, relayEnv(t), args...)
		requireRefusal(t, r)
	}
}
