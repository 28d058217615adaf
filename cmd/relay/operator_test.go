package main

// Operator-facing behaviour of the real binary: the lame-duck window before
// the drain, SIGHUP certificate reloads, and start-up sanity warnings.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// status GETs url on a fresh connection (no keep-alive) and returns the
// status, or 0 when the connection is refused.
func status(c *http.Client, url string) int {
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	return resp.StatusCode
}

func fresh() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

// waitEvent returns the first log line with event, waiting up to d.
func (p *proc) waitEvent(t *testing.T, event string, d time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for _, l := range p.stderrLines() {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["event"] == event {
				return m
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %q log line within %v; stderr:\n%s", event, d, strings.Join(p.stderrLines(), "\n"))
	return nil
}

func (p *proc) countEvent(event string) int {
	n := 0
	for _, l := range p.stderrLines() {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["event"] == event {
			n++
		}
	}
	return n
}

// On SIGTERM /healthz answers 503, to a probe on a new connection, for
// --drain-delay while the listeners keep serving (a new WebSocket still
// upgrades, the open pair still exchanges frames); only then does every
// connection get 1001.
func TestLameDuck_Healthz503_ListenersServe_Then1001(t *testing.T) {
	const delay = 2 * time.Second
	p := startRelay(t, relayEnv(t, "RELAY_DRAIN_DELAY="+delay.String()), "serve", "--insecure-listen", "127.0.0.1:0",
		"--metrics-listen", "127.0.0.1:0", "--close-timeout", "500ms")
	addr := p.waitListening(t, "public")
	metricsAddr := p.waitListening(t, "metrics")
	base := "ws://" + addr
	bin := dialWS(t, base+"/v1/server", http.Header{"X-Pyrycode-Server": {"srv-lame"}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"main_test"}})
	require.Eventually(t, func() bool { b, _ := healthz(t, addr); return b == 1 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, 200, status(fresh(), "http://"+addr+"/healthz"))

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	began := time.Now()
	p.signal(t, syscall.SIGTERM)
	require.Eventually(t, func() bool { return status(fresh(), "http://"+addr+"/healthz") == 503 }, delay/2, 10*time.Millisecond,
		"no 503 from a new connection during the lame-duck window")
	require.Equal(t, 503, status(fresh(), "http://"+metricsAddr+"/healthz"))

	// Still serving: a phone joins and its frame reaches the binary.
	phone := dialWS(t, base+"/v1/client", http.Header{"X-Pyrycode-Server": {"srv-lame"}, "X-Pyrycode-Token": {"tok"}, "User-Agent": {"main_test"}})
	require.NoError(t, phone.Write(ctx, websocket.MessageText, []byte(`{"during":"lame-duck"}`)))
	_, msg, err := bin.Read(ctx)
	require.NoError(t, err)
	require.Contains(t, string(msg), `"frame":{"during":"lame-duck"}`)
	require.Less(t, time.Since(began), delay, "the checks above must run inside the window")

	// Then the drain: 1001, not before the window ended.
	_, _, err = bin.Read(ctx)
	require.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(err), "%v", err)
	require.GreaterOrEqual(t, time.Since(began), delay, "the drain began before --drain-delay ended")
	require.Equal(t, 0, p.wait(t, 10*time.Second))
	require.Equal(t, 1, p.countEvent("lame_duck"))
}

// writePairAt writes a fresh self-signed pair for relay.example.test over
// certFile/keyFile (renamed into place, as a certificate tool does) and
// returns the certificate.
func writePairAt(t *testing.T, certFile, keyFile string) *x509.Certificate {
	t.Helper()
	c, k := writeCertPair(t)
	certPEM, err := os.ReadFile(c)
	require.NoError(t, err)
	require.NoError(t, os.Rename(c, certFile))
	require.NoError(t, os.Rename(k, keyFile))
	b, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(b.Bytes)
	require.NoError(t, err)
	return leaf
}

// servedLeaf is the certificate a new TLS handshake gets.
func servedLeaf(t *testing.T, addr string) *x509.Certificate {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "relay.example.test", InsecureSkipVerify: true}) //nolint:gosec // the test compares the served certificate itself
	require.NoError(t, err)
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// SIGHUP in static mode reloads --tls-cert/--tls-key: a mismatched pair is
// refused with one log line and the old certificate keeps serving; a good
// pair serves the next handshake; an open WebSocket pair keeps exchanging
// frames throughout, and the process never exits.
func TestSIGHUP_ReloadsStaticCert_BadPairRefused_OpenSocketsKeepGoing(t *testing.T) {
	certFile, keyFile := writeCertPair(t)
	p := startRelay(t, relayEnv(t), "serve", "--tls-cert", certFile, "--tls-key", keyFile, "--https-listen", "127.0.0.1:0")
	addr := p.waitListening(t, "public")
	first := servedLeaf(t, addr)

	// A WSS pair over the first certificate.
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{ServerName: "relay.example.test", InsecureSkipVerify: true}, //nolint:gosec // identity is checked by comparing leaves
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		},
	}
	opts := func(h http.Header) *websocket.DialOptions {
		return &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}, HTTPHeader: h}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bin, _, err := websocket.Dial(ctx, "wss://relay.example.test/v1/server", opts(http.Header{"X-Pyrycode-Server": {"srv-hup"}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"main_test"}}))
	require.NoError(t, err)
	defer bin.CloseNow()
	time.Sleep(50 * time.Millisecond) // the binary's slot registers before the phone joins
	phone, _, err := websocket.Dial(ctx, "wss://relay.example.test/v1/client", opts(http.Header{"X-Pyrycode-Server": {"srv-hup"}, "X-Pyrycode-Token": {"tok"}, "User-Agent": {"main_test"}}))
	require.NoError(t, err)
	defer phone.CloseNow()
	exchange := func(n int) {
		t.Helper()
		frame := `{"n":` + strconv.Itoa(n) + `}`
		require.NoError(t, phone.Write(ctx, websocket.MessageText, []byte(frame)))
		_, msg, err := bin.Read(ctx)
		require.NoError(t, err)
		require.Contains(t, string(msg), `"frame":`+frame)
	}
	exchange(1)

	// A key that does not match the certificate: refused, old one serves.
	_, otherKey := writeCertPair(t)
	keyPEM, err := os.ReadFile(otherKey)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(keyFile, keyPEM, 0o600))
	p.signal(t, syscall.SIGHUP)
	p.waitEvent(t, "cert_reload_refused", 5*time.Second)
	require.Equal(t, 1, p.countEvent("cert_reload_refused"), "one line per refused reload")
	require.Equal(t, first.Raw, servedLeaf(t, addr).Raw, "the old certificate must keep serving")
	exchange(2)

	// A good new pair: the next handshake gets it.
	second := writePairAt(t, certFile, keyFile)
	p.signal(t, syscall.SIGHUP)
	p.waitEvent(t, "cert_reloaded", 5*time.Second)
	require.Equal(t, second.Raw, servedLeaf(t, addr).Raw)
	exchange(3)

	select {
	case <-p.done:
		t.Fatalf("the relay exited on SIGHUP (code %d)", p.code)
	default:
	}
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))
}

// In other modes SIGHUP is logged and ignored: the relay keeps serving.
func TestSIGHUP_InsecureMode_LoggedAndIgnored(t *testing.T) {
	p := startRelay(t, relayEnv(t), "serve", "--insecure-listen", "127.0.0.1:0")
	addr := p.waitListening(t, "public")
	p.signal(t, syscall.SIGHUP)
	p.waitEvent(t, "reload_ignored", 5*time.Second)
	require.Equal(t, 200, status(fresh(), "http://"+addr+"/healthz"))
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))
}

// A plain-HTTP listener off loopback starts with a warning; on loopback
// without one.
func TestInsecureListen_NotLoopback_Warns(t *testing.T) {
	p := startRelay(t, relayEnv(t), "serve", "--insecure-listen", "0.0.0.0:0")
	p.waitListening(t, "public")
	m := p.waitEvent(t, "insecure_not_loopback", 5*time.Second)
	require.Equal(t, "WARN", m["level"])
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))

	q := startRelay(t, relayEnv(t), "serve", "--insecure-listen", "127.0.0.1:0")
	q.waitListening(t, "public")
	q.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, q.wait(t, 10*time.Second))
	require.Zero(t, q.countEvent("insecure_not_loopback"))
}

// --metrics-listen off loopback starts only with --metrics-allow-public,
// and then warns.
func TestMetricsListen_Public_NeedsAllowFlag(t *testing.T) {
	r := runRelay(t, relayEnv(t), "serve", "--insecure-listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0")
	requireRefusal(t, r, "--metrics-listen 0.0.0.0:0 is not a loopback address", "--metrics-allow-public")
	r = runRelay(t, relayEnv(t, "RELAY_METRICS_LISTEN=:9"), "serve", "--insecure-listen", "127.0.0.1:0")
	requireRefusal(t, r, "RELAY_METRICS_LISTEN=:9 is not a loopback address")

	p := startRelay(t, relayEnv(t), "serve", "--insecure-listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0", "--metrics-allow-public")
	p.waitListening(t, "metrics")
	p.waitEvent(t, "metrics_not_loopback", 5*time.Second)
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))
}

// startLimited starts the relay under a file-descriptor limit of n.
func startLimited(t *testing.T, n int, args ...string) *proc {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh to set ulimit -n")
	}
	full := append([]string{"-c", `ulimit -n ` + strconv.Itoa(n) + ` && exec "$0" "$@"`, relayBin}, args...)
	return startRelayCmd(t, relayEnv(t), sh, full...)
}

// A file-descriptor limit below what the socket caps allow warns with the
// number needed (2 listeners' --max-sockets in autocert mode, 1 otherwise,
// plus headroom); a limit above it does not.
func TestFDLimit_BelowSocketCaps_WarnsWithNumberNeeded(t *testing.T) {
	p := startLimited(t, 512, "serve", "--insecure-listen", "127.0.0.1:0")
	p.waitListening(t, "public")
	m := p.waitEvent(t, "fd_limit_low", 5*time.Second)
	require.Equal(t, "WARN", m["level"])
	require.EqualValues(t, 8192+64, m["count"], "default --max-sockets 8192 plus headroom")
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))

	q := startLimited(t, 512, "serve", "--insecure-listen", "127.0.0.1:0",
		"--max-conns", "100", "--max-conns-per-ip", "10", "--max-sockets", "200", "--max-sockets-per-ip", "20")
	q.waitListening(t, "public")
	q.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, q.wait(t, 10*time.Second))
	require.Zero(t, q.countEvent("fd_limit_low"), "264 descriptors fit in 512")
}

// Binding a port below 1024 without the capability names it.
func TestLowPort_PermissionDenied_NamesCapability(t *testing.T) {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil && strings.TrimSpace(string(b)) == "0" {
		t.Skip("every port is unprivileged on this host")
	}
	args := []string{"serve", "--insecure-listen", "127.0.0.1:81"}
	var r result
	if os.Geteuid() == 0 {
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("running as root without setpriv to drop CAP_NET_BIND_SERVICE")
		}
		r = runCmd(t, relayEnv(t), setpriv, append([]string{"--inh-caps=-all", "--bounding-set=-net_bind_service", relayBin}, args...)...)
	} else {
		r = runRelay(t, relayEnv(t), args...)
	}
	requireRefusal(t, r, "127.0.0.1:81", "permission denied", "CAP_NET_BIND_SERVICE")
}

// A port another process holds is a runtime failure (exit 1, which systemd
// restarts: the previous process may still be closing), not a refusal to
// start (exit 2, which the units do not restart), with one line naming the
// listener and the address.
func TestPortInUse_Exit1_OneLine(t *testing.T) {
	held := holdPort(t)
	r := runRelay(t, relayEnv(t), "serve", "--insecure-listen", held)
	require.Equal(t, 1, r.code, r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	require.Len(t, lines, 1, r.stderr)
	require.Contains(t, lines[0], "relay: cannot start: ")
	require.Contains(t, lines[0], "public listener on "+held)
	require.Contains(t, lines[0], "address already in use")
	require.NotContains(t, lines[0], "refusing")
}
