package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/admission"
	"github.com/pyrycode/relay/internal/buildinfo"
	"github.com/pyrycode/relay/internal/config"
	"github.com/pyrycode/relay/internal/logging"
	"github.com/pyrycode/relay/internal/relay"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type running struct {
	srv  *Server
	base string // http://127.0.0.1:port
	log  *syncBuffer
}

// start runs the real server assembly in-process on 127.0.0.1:0.
func start(t *testing.T, args ...string) *running {
	t.Helper()
	srv, _, logs := runServer(t, append([]string{"--insecure-listen", "127.0.0.1:0"}, args...)...)
	return &running{srv: srv, base: "http://" + srv.Addr("public").String(), log: logs}
}

// runServer parses args exactly as `relay serve` would, runs the server
// in-process with a captured debug log, and shuts it down after the test.
func runServer(t *testing.T, args ...string) (*Server, config.Config, *syncBuffer) {
	t.Helper()
	cfg, err := config.Parse(args, nil, io.Discard)
	require.NoError(t, err)
	logs := &syncBuffer{}
	srv, err := New(cfg, logging.New(logs, -4))
	require.NoError(t, err)
	require.NoError(t, srv.Listen())
	srv.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return srv, cfg, logs
}

func (r *running) dial(t *testing.T, path string, hdr http.Header) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(r.base, "http")+path, &websocket.DialOptions{HTTPHeader: hdr})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

func binHdr(id string) http.Header {
	return http.Header{"X-Pyrycode-Server": {id}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"t"}}
}

func phoneHdr(id string) http.Header {
	return http.Header{"X-Pyrycode-Server": {id}, "X-Pyrycode-Token": {"tok"}, "User-Agent": {"t"}}
}

func TestUpgradedConnection_OutlivesHTTPServerTimeouts(t *testing.T) {
	// http.Server read deadline = 2×100ms, write deadline = 300ms: both set
	// on the socket before the upgrade and kept by a hijack unless cleared.
	r := start(t, "--read-header-timeout", "100ms", "--write-timeout", "300ms")
	bin := r.dial(t, "/v1/server", binHdr("srv"))
	require.Eventually(t, func() bool { return r.srv.Relay().Stats().Binaries == 1 }, 5*time.Second, 5*time.Millisecond)
	phone := r.dial(t, "/v1/client", phoneHdr("srv"))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	time.Sleep(700 * time.Millisecond) // idle past every HTTP server deadline
	require.NoError(t, phone.Write(ctx, websocket.MessageText, []byte(`{"late":1}`)))
	_, msg, err := bin.Read(ctx)
	require.NoError(t, err, "binary leg died: a server deadline survived the hijack")
	require.Contains(t, string(msg), `"frame":{"late":1}`)
	var env struct {
		ConnID string `json:"conn_id"`
	}
	require.NoError(t, jsonUnmarshal(msg, &env))
	require.NoError(t, bin.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf(`{"conn_id":%q,"frame":{"back":1}}`, env.ConnID))))
	_, msg, err = phone.Read(ctx)
	require.NoError(t, err, "phone leg died: a server deadline survived the hijack")
	require.JSONEq(t, `{"back":1}`, string(msg))
}

func TestErrorBodies_EmptyWhateverTheSource(t *testing.T) {
	r := start(t)
	canary := "CANARY-7f3a"
	cases := []struct {
		name   string
		method string
		path   string
		hdr    http.Header
		status int
	}{
		{"unknown path", "GET", "/" + canary, nil, 404},
		{"wrong method", "POST", "/v1/server", nil, 405},
		{"missing headers", "GET", "/v1/client", nil, 400},
		{"bad server-id", "GET", "/v1/server", http.Header{"X-Pyrycode-Server": {canary + "/.."}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"t"}}, 400},
		// Valid relay headers but not a WebSocket handshake: the WebSocket
		// library's own error quotes the Connection header back.
		{"library 426", "GET", "/v1/client", http.Header{"X-Pyrycode-Server": {"s"}, "X-Pyrycode-Token": {"t"}, "User-Agent": {"t"}, "Connection": {canary}}, 426},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, r.base+tc.path, nil)
			require.NoError(t, err)
			for k, v := range tc.hdr {
				req.Header[k] = v
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			require.Equal(t, tc.status, resp.StatusCode)
			require.Empty(t, body)
			for k, vs := range resp.Header {
				require.NotContains(t, k+strings.Join(vs, ","), canary)
			}
		})
	}
	require.NotContains(t, r.log.String(), canary)
}

func TestPanic_Generic500WithIncidentID(t *testing.T) {
	logs := &syncBuffer{}
	m := newTestMetrics()
	h := withGenericBodies(withRecovery(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("secret detail " + "CANARY-panic")
	}), logging.New(logs, 0), m))
	rec := newRecorder()
	h.ServeHTTP(rec, mustRequest(t, "GET", "/x"))
	require.Equal(t, 500, rec.Code)
	require.Empty(t, rec.Body.String())
	id := rec.Header().Get("X-Incident-Id")
	require.Regexp(t, `^[0-9a-f]{16}$`, id)
	require.Contains(t, logs.String(), `"incident":"`+id+`"`)
	require.NotContains(t, logs.String(), "CANARY-panic", "a non-runtime panic value may carry input")
	require.Contains(t, logs.String(), "server_test.go", "the log names where it panicked")
}

func TestHealthz_NotRateLimited_CountsOnly(t *testing.T) {
	r := start(t, "--upgrade-rate", "0.001", "--upgrade-burst", "1")
	got429 := false
	for range 5 {
		resp, err := http.Get(r.base + "/v1/server")
		require.NoError(t, err)
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			got429 = true
			require.NotEmpty(t, resp.Header.Get("Retry-After"))
		}
	}
	require.True(t, got429, "the limiter never engaged")
	for range 20 {
		resp, err := http.Get(r.base + "/healthz")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode)
		var got map[string]any
		require.NoError(t, jsonUnmarshal(body, &got))
		require.Contains(t, got, "uptime_seconds")
		delete(got, "uptime_seconds")
		require.Equal(t, map[string]any{"status": "ok", "binaries": 0.0, "phones": 0.0, "grace": 0.0, "version": buildinfo.Get().Version}, got,
			"counts and build identity only")
	}
}

// /healthz names the running build and its uptime, and forbids caches in
// front of it from answering for a relay that has since died or restarted.
func TestHealthz_VersionUptimeNoStore(t *testing.T) {
	cfg, err := config.Parse([]string{"--insecure-listen", "127.0.0.1:0"}, nil, io.Discard)
	require.NoError(t, err)
	srv, err := New(cfg, logging.New(io.Discard, 0))
	require.NoError(t, err)
	srv.started = time.Now().Add(-90 * time.Second) // as if up for 90 s
	srv.serving.Store(true)                         // as if Serve had run

	w := newRecorder()
	srv.healthz(w, mustRequest(t, "GET", "/healthz"))
	require.Equal(t, http.StatusOK, w.Code)
	require.Equal(t, "no-store", w.Header().Get("Cache-Control"))
	var got struct {
		Version       string `json:"version"`
		UptimeSeconds *int64 `json:"uptime_seconds"`
	}
	require.NoError(t, jsonUnmarshal(w.Body.Bytes(), &got))
	require.Equal(t, buildinfo.Get().Version, got.Version)
	require.NotEmpty(t, got.Version)
	require.NotNil(t, got.UptimeSeconds, "uptime_seconds missing: %s", w.Body.String())
	require.GreaterOrEqual(t, *got.UptimeSeconds, int64(90))
	require.Less(t, *got.UptimeSeconds, int64(120))
}

// One host opening idle keep-alive sockets (never an upgrade, so the HTTP
// admission caps never see them) must not exhaust the relay: the socket cap
// closes its extra sockets at accept, and other addresses are still served.
func TestSocketCap_IdleSocketsFromOneHost_OthersServed(t *testing.T) {
	r := start(t, "--max-sockets", "64", "--max-sockets-per-ip", "4", "--max-conns-per-ip", "2", "--max-conns", "32")
	addr := strings.TrimPrefix(r.base, "http://")
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	var refused int
	for range 10 {
		c, err := d.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				refused++ // closed by the relay at accept
			}
		}
	}
	require.Equal(t, 6, refused, "4 idle sockets allowed per address, the other 6 closed")
	// Counted as refused sockets, not as refused requests: no request existed.
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(r.srv.metrics.SocketsRefused.WithLabelValues(string(admission.ReasonSocketPerIP))) == 6
	}, 5*time.Second, 5*time.Millisecond)
	require.NotContains(t, scrape(t, r.srv), `relay_requests_rejected_total{reason="socket`)

	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}).DialContext}}
	resp, err := other.Get(r.base + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func TestHealthz_503WhileDraining(t *testing.T) {
	r := start(t)
	bin := r.dial(t, "/v1/server", binHdr("drain"))
	require.Eventually(t, func() bool { return r.srv.Relay().Stats().Binaries == 1 }, 5*time.Second, 5*time.Millisecond)
	// The relay drains (as on SIGTERM) while the listener still answers.
	go func() { _ = r.srv.Relay().Shutdown(context.Background()) }()
	require.Eventually(t, func() bool {
		resp, err := http.Get(r.base + "/healthz")
		if err != nil {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable && len(body) == 0 && resp.Header.Get("Retry-After") != ""
	}, 5*time.Second, 10*time.Millisecond, "healthz kept answering 200 while draining")
	_, _, err := bin.Read(context.Background())
	require.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(err))
}

// The pyry daemon's own protocol document names /v2/server and /v2/client;
// a daemon configured with them used to get 404 and retry forever. They are
// aliases of the /v1 endpoints: one registry (a v2 binary serves a v1 phone
// and the reverse), the same header validation, method check and admission
// (one upgrade bucket across both), and nothing below or beside them.
func TestV2Paths_AliasesOfV1(t *testing.T) {
	r := start(t, "--upgrade-rate", "0.001", "--upgrade-burst", "6")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	relayPair := func(binPath, phonePath, id string) {
		t.Helper()
		before := r.srv.Relay().Stats().Binaries
		bin := r.dial(t, binPath, binHdr(id))
		require.Eventually(t, func() bool { return r.srv.Relay().Stats().Binaries > before }, 5*time.Second, 5*time.Millisecond)
		phone := r.dial(t, phonePath, phoneHdr(id))
		require.NoError(t, phone.Write(ctx, websocket.MessageText, []byte(`{"hi":1}`)))
		_, msg, err := bin.Read(ctx)
		require.NoError(t, err)
		var env struct {
			ConnID string          `json:"conn_id"`
			Frame  json.RawMessage `json:"frame"`
		}
		require.NoError(t, jsonUnmarshal(msg, &env))
		require.JSONEq(t, `{"hi":1}`, string(env.Frame))
		require.NoError(t, bin.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf(`{"conn_id":%q,"frame":{"back":1}}`, env.ConnID))))
		_, msg, err = phone.Read(ctx)
		require.NoError(t, err)
		require.JSONEq(t, `{"back":1}`, string(msg))
	}
	relayPair("/v2/server", "/v2/client", "v2-both")  // upgrades 1, 2
	relayPair("/v2/server", "/v1/client", "v2-bin")   // 3, 4
	relayPair("/v1/server", "/v2/client", "v2-phone") // 5, 6

	status := func(method, path string, hdr http.Header) int {
		t.Helper()
		req, err := http.NewRequest(method, r.base+path, nil)
		require.NoError(t, err)
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	// Below and beside the aliases: not found.
	for _, p := range []string{"/v2/server/x", "/v2/", "/v2", "/v3/server", "/v2/Server"} {
		require.Equalf(t, http.StatusNotFound, status("GET", p, nil), "GET %s", p)
	}
	// The six upgrades above spent the whole burst: admission is shared, so
	// the aliases are refused exactly as /v1 is.
	for _, p := range []string{"/v2/server", "/v2/client", "/v1/server"} {
		require.Equalf(t, http.StatusTooManyRequests, status("GET", p, binHdr("late")), "GET %s after the burst", p)
	}
}

// Header validation and the method check apply to the aliases as to /v1.
func TestV2Paths_SameValidationAsV1(t *testing.T) {
	r := start(t)
	for _, tc := range []struct {
		method, path string
		hdr          http.Header
		want         int
	}{
		{"POST", "/v2/server", nil, http.StatusMethodNotAllowed},
		{"POST", "/v2/client", nil, http.StatusMethodNotAllowed},
		{"GET", "/v2/server", nil, http.StatusBadRequest},
		{"GET", "/v2/client", binHdr("s"), http.StatusBadRequest}, // no token: a binary's headers on the phone path
		{"GET", "/v2/server", http.Header{"X-Pyrycode-Server": {"a/.."}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"t"}}, http.StatusBadRequest},
	} {
		req, err := http.NewRequest(tc.method, r.base+tc.path, nil)
		require.NoError(t, err)
		for k, v := range tc.hdr {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		require.Equalf(t, tc.want, resp.StatusCode, "%s %s", tc.method, tc.path)
		require.Empty(t, body)
		if tc.want == http.StatusMethodNotAllowed {
			require.Equal(t, "GET", resp.Header.Get("Allow"))
		}
	}
}

// scrape returns the server's metrics page as the metrics listener serves it.
func scrape(t *testing.T, s *Server) string {
	t.Helper()
	rec := httptest.NewRecorder()
	s.metrics.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	return rec.Body.String()
}

// labelValues returns the values of label "reason" that metric shows.
func labelValues(page, metric string) []string {
	var out []string
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(metric) + `\{reason="([^"]*)"\} `)
	for _, m := range re.FindAllStringSubmatch(page, -1) {
		out = append(out, m[1])
	}
	sort.Strings(out)
	return out
}

// Every rejection metric's label set is a typed, closed set, all of it
// registered at start (so a reason that never happened reads 0, not
// absent), and nothing else: requests refused by admission or by the
// routing core, sockets refused at accept on a metric of their own.
func TestRejectionMetrics_TypedReasonsPreRegistered(t *testing.T) {
	r := start(t)
	page := scrape(t, r.srv)
	var requests, sockets []string
	for _, x := range admission.AllReasons {
		requests = append(requests, string(x))
	}
	for _, x := range relay.AllRejectReasons {
		requests = append(requests, string(x))
	}
	requests = append(requests, reasonHostMismatch)
	for _, x := range append(slices.Clone(admission.AllSocketReasons), admission.AllProxyReasons...) {
		sockets = append(sockets, string(x))
	}
	sort.Strings(requests)
	sort.Strings(sockets)
	require.Equal(t, requests, labelValues(page, "relay_requests_rejected_total"))
	require.Equal(t, sockets, labelValues(page, "relay_sockets_refused_total"))
	require.Len(t, requests, 7, "rate_limited, per_ip_cap, global_cap, table_full, bad_headers, bad_upgrade, host_mismatch")

	// Each relay reason is the one its refusal counts.
	get := func(hdr http.Header) int {
		req, err := http.NewRequest("GET", r.base+"/v1/client", nil)
		require.NoError(t, err)
		req.Header = hdr
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusBadRequest, get(http.Header{}))
	require.Equal(t, http.StatusUpgradeRequired, get(phoneHdr("s")), "valid relay headers, no WebSocket handshake")
	rejected := func(reason relay.RejectReason) float64 {
		return testutil.ToFloat64(r.srv.metrics.Rejected.WithLabelValues(string(reason)))
	}
	require.Equal(t, 1.0, rejected(relay.RejectBadHeaders))
	require.Equal(t, 1.0, rejected(relay.RejectBadUpgrade))
}
