package server

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/admission"
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

// refusalLines returns the log's "refused" lines as "reason remote".
func refusalLines(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil || m["event"] != "refused" {
			continue
		}
		out = append(out, fmt.Sprintf("%v %v", m["reason"], m["remote"]))
	}
	return out
}

// A request for a Host the certificate does not name gets 421 and one
// refusal line (reason, client address, never the Host) and counts in
// relay_requests_rejected_total.
func TestRefusals_HostMismatchLogged(t *testing.T) {
	r := startStaticRelay(t)
	resp, err := r.httpsClient(relayDomain).Get("https://elsewhere.example.test/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMisdirectedRequest, resp.StatusCode)
	require.Eventually(t, func() bool {
		return slices.Contains(refusalLines(r.logs.String()), "host_mismatch 127.0.0.1")
	}, 5*time.Second, 10*time.Millisecond, "no refusal line:\n%s", r.logs.String())
	require.NotContains(t, r.logs.String(), "elsewhere")
	require.Equal(t, 1.0, testutil.ToFloat64(r.srv.metrics.Rejected.WithLabelValues(reasonHostMismatch)))
}

// Every PROXY header refusal is logged once, with its reason and the socket
// peer, in plain and in TLS mode (where the failed handshake it causes is
// not logged a second time), and counted in relay_sockets_refused_total.
func TestRefusals_ProxyHeaderLogged(t *testing.T) {
	v2 := func(src string) []byte {
		b, err := proxyproto.HeaderProxyFromAddrs(2,
			&net.TCPAddr{IP: net.ParseIP(src), Port: 40000},
			&net.TCPAddr{IP: net.ParseIP("192.0.2.80"), Port: 443}).Format()
		require.NoError(t, err)
		return b
	}
	const get = "GET /healthz HTTP/1.1\r\nHost: relay.example.test\r\n\r\n"
	cases := []struct {
		from, want string
		send       []byte // nil: silent until the header timeout
	}{
		{"127.0.0.3", "proxy_header_untrusted 127.0.0.3", append(v2("203.0.113.7"), get...)},
		{"127.0.0.2", "proxy_header_missing 127.0.0.2", []byte(get)},
		{"127.0.0.2", "proxy_header_timeout 127.0.0.2", nil},
		{"127.0.0.2", "proxy_header_bad 127.0.0.2", append([]byte("PROXY TCP4 203.0.113.7 192.0.2.80 40000 443\r\n"), get...)},
	}
	proxyArgs := []string{"--proxy-protocol", "--trust-proxy", "127.0.0.2/32", "--proxy-header-timeout", "200ms"}
	modes := map[string]func() (addr string, logs *syncBuffer, srv *Server){
		"insecure": func() (string, *syncBuffer, *Server) {
			r := start(t, proxyArgs...)
			return strings.TrimPrefix(r.base, "http://"), r.log, r.srv
		},
		"static TLS": func() (string, *syncBuffer, *Server) {
			certFile, keyFile, roots := writeSelfSigned(t, relayDomain)
			r := startTLSRelay(t, roots, append([]string{"--tls-cert", certFile, "--tls-key", keyFile, "--https-listen", "127.0.0.1:0"}, proxyArgs...)...)
			return r.public, r.logs, r.srv
		},
	}
	for mode, run := range modes {
		t.Run(mode, func(t *testing.T) {
			addr, logs, srv := run()
			var want []string
			for _, tc := range cases {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.from)}, Timeout: 5 * time.Second}
				c, err := d.Dial("tcp", addr)
				require.NoError(t, err)
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if tc.send != nil {
					_, err = c.Write(tc.send)
					require.NoError(t, err)
				}
				_, _ = io.ReadAll(c) // until the relay closes it
				c.Close()
				want = append(want, tc.want)
				require.Eventually(t, func() bool { return slices.Equal(refusalLines(logs.String()), want) },
					5*time.Second, 10*time.Millisecond, "want %q; log:\n%s", want, logs.String())
			}
			for _, r := range admission.AllProxyReasons {
				require.Equal(t, 1.0, testutil.ToFloat64(srv.metrics.SocketsRefused.WithLabelValues(string(r))), r)
			}
		})
	}
}
