package deploy

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The proxy recipes (haproxy-relay.cfg, nginx-relay.conf) are tested as
// shipped: the test reads the file, substitutes only addresses, ports,
// certificate paths and the relay's name (each substitution must match the
// count it expects, so a drifted file fails here rather than being tested
// half-rendered), starts the real relay binary and the real proxy on
// loopback, and runs the real `relay attack` through the proxy. The
// relay's flags are the ones docs/deploy.md gives for the layout.

// proxyName is the name the test certificate carries and the relay answers.
const proxyName = "relay.example.test"

// clientAddr is a loopback address of its own for the client whose address
// the relay must see through the proxy (the proxies connect from
// 127.0.0.1, the address the relay trusts).
const clientAddr = "127.0.0.5"

// needBinary finds a proxy binary: missing, it fails the test in CI (.ci/run
// installs it) and skips it elsewhere.
func needBinary(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is required in CI (.ci/run installs the Debian package %s)", name, pkg)
	}
	t.Skipf("%s not installed (apt-get install --no-install-recommends %s); the %s recipe is not tested here", name, pkg, name)
	return ""
}

// freePort is a loopback TCP port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// selfSigned writes an RSA certificate for proxyName and its key into dir.
// RSA, so the static-RSA and 3DES refusals of ATK-TLS-SUITES are the
// policy's doing and not implied by the key type.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: proxyName}, DNSNames: []string{proxyName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600))
	return certFile, keyFile
}

// subst is one substitution in a shipped recipe: old must occur exactly n
// times.
type subst struct {
	old, new string
	n        int
}

// render reads the shipped file and applies subs, then edit (nil: none;
// the "setting removed" checks use it).
func render(t *testing.T, file string, subs []subst, edit func(string) string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	s := string(b)
	for _, sb := range subs {
		require.Equal(t, sb.n, strings.Count(s, sb.old), "%s: %q should occur %d times", file, sb.old, sb.n)
		s = strings.ReplaceAll(s, sb.old, sb.new)
	}
	if edit != nil {
		e := edit(s)
		require.NotEqual(t, s, e, "the edit changed nothing")
		s = e
	}
	return s
}

// dropLines removes every line whose trimmed text starts with one of
// prefixes (a directive and its value).
func dropLines(prefixes ...string) func(string) string {
	return func(s string) string {
		var out []string
		for _, l := range strings.Split(s, "\n") {
			keep := true
			for _, p := range prefixes {
				if strings.HasPrefix(strings.TrimSpace(l), p) {
					keep = false
				}
			}
			if keep {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
}

// logBuf is a process's output, safe to read while it runs.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start runs a process until the test ends, its output collected.
func start(t *testing.T, name string, args ...string) *logBuf {
	t.Helper()
	out := &logBuf{}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "RELAY_PRODUCTION=")
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start(), "start %s", name)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s output (tail):\n%s", filepath.Base(name), tailOf(out.String(), 3000))
		}
	})
	return out
}

func tailOf(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// waitListening polls until addr accepts TCP connections.
func waitListening(t *testing.T, addr string, out *logBuf) {
	t.Helper()
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}, 15*time.Second, 20*time.Millisecond, "nothing listens on %s; output:\n%s", addr, tailOf(out.String(), 2000))
}

// startRelay runs the real relay with args and waits for its public listener.
func startRelay(t *testing.T, publicAddr string, args ...string) *logBuf {
	t.Helper()
	out := start(t, relayBin, append([]string{"serve"}, args...)...)
	waitListening(t, publicAddr, out)
	return out
}

// attackReport is one row of `relay attack --json`.
type attackReport struct {
	ID       string `json:"id"`
	Verdict  string `json:"verdict"`
	Evidence string `json:"evidence"`
	Tests    string `json:"tests"`
	Why      string `json:"tests_why"`
}

// attack runs the real `relay attack --json` against target with extra
// flags and returns its exit code and reports.
func attack(t *testing.T, target, caFile string, extra ...string) (int, []attackReport, string) {
	t.Helper()
	args := append([]string{"attack", "--target", target, "--ca", caFile, "--server-name", proxyName, "--json", "--timeout", "4m"}, extra...)
	cmd := exec.Command(relayBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	var reps []attackReport
	if stdout.Len() > 0 {
		require.NoError(t, json.Unmarshal(stdout.Bytes(), &reps), "relay attack --json output:\n%s", stdout.String())
	}
	return code, reps, stderr.String()
}

// slowMessage is the one scenario that takes a minute remotely (two legs of
// the deployed 30 s read deadline); it runs beside the rest.
const slowMessage = "ATK-SLOW-MESSAGE"

// remoteSafe is every remote-safe scenario ID, from `relay attack --list`.
func remoteSafe(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command(relayBin, "attack", "--list").Output()
	require.NoError(t, err)
	var ids []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && strings.HasPrefix(f[0], "ATK-") && f[1] == "remote-safe" {
			ids = append(ids, f[0])
		}
	}
	require.NotEmpty(t, ids)
	return ids
}

// attackAll runs every remote-safe scenario through target, the slow one
// beside the others, and requires exit 0 and a PASS from each. It returns
// the reports by ID.
func attackAll(t *testing.T, target, caFile string, extra ...string) map[string]attackReport {
	t.Helper()
	ids := remoteSafe(t)
	var rest []string
	for _, id := range ids {
		if id != slowMessage {
			rest = append(rest, id)
		}
	}
	type run struct {
		code   int
		reps   []attackReport
		stderr string
	}
	runs := make([]run, 2)
	var wg sync.WaitGroup
	for i, only := range []string{slowMessage, strings.Join(rest, ",")} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r run
			r.code, r.reps, r.stderr = attack(t, target, caFile, append([]string{"--only", only}, extra...)...)
			runs[i] = r
		}()
	}
	wg.Wait()
	got := map[string]attackReport{}
	for _, r := range runs {
		for _, rep := range r.reps {
			got[rep.ID] = rep
			t.Logf("%s %s: %s", rep.ID, rep.Verdict, rep.Evidence)
		}
		require.Equal(t, 0, r.code, "relay attack through the proxy failed:\n%s", tailOf(r.stderr, 2000))
	}
	for _, id := range ids {
		rep, ok := got[id]
		require.True(t, ok, "%s did not run", id)
		require.Equal(t, "PASS", rep.Verdict, "%s: %s", id, rep.Evidence)
	}
	return got
}

// attackFails runs the scenarios in only through target and requires one
// of them to fail; it returns the failing evidence.
func attackFails(t *testing.T, target, caFile, only string, extra ...string) string {
	t.Helper()
	code, reps, stderr := attack(t, target, caFile, append([]string{"--only", only}, extra...)...)
	require.Equal(t, 1, code, "relay attack --only %s passed without the setting: %+v\n%s", only, reps, tailOf(stderr, 1000))
	for _, r := range reps {
		if r.Verdict == "FAIL" {
			return r.ID + ": " + r.Evidence
		}
	}
	t.Fatalf("exit 1 but no FAIL in %+v", reps)
	return ""
}

// badUpgradeFrom sends, from src through the proxy at addr (TLS), an
// upgrade the relay refuses (no server-id) with the given extra header
// lines, and returns the status.
func badUpgradeFrom(t *testing.T, src, addr, caFile, extra string) int {
	t.Helper()
	pool := x509.NewCertPool()
	b, err := os.ReadFile(caFile)
	require.NoError(t, err)
	require.True(t, pool.AppendCertsFromPEM(b))
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: proxyName, MinVersion: tls.VersionTLS12})
	require.NoError(t, err)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = fmt.Fprintf(c, "GET /v1/server HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nUser-Agent: proxy-test\r\n%sConnection: close\r\n\r\n", proxyName, extra)
	require.NoError(t, err)
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	var code int
	_, err = fmt.Sscanf(line, "HTTP/1.1 %d", &code)
	require.NoError(t, err, "status line %q", line)
	return code
}

// refusedFrom waits for the relay's log to show a refusal charged to addr
// and reports whether it did.
func refusedFrom(out *logBuf, addr string) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(out.String()))
		for sc.Scan() {
			var l struct{ Event, Remote string }
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Event == "refused" && l.Remote == addr {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// haproxyRig is the L4 layout: HAProxy on a public port forwarding TCP with
// PROXY v2 to the relay's own TLS listener.
type haproxyRig struct {
	dir, cert, key        string
	front, relay, metrics string // host:port
	haproxy               string
	relayLog              *logBuf
}

func newHAProxyRig(t *testing.T, haproxy string) *haproxyRig {
	r := &haproxyRig{dir: t.TempDir(), haproxy: haproxy}
	r.cert, r.key = selfSigned(t, r.dir)
	r.front = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r.relay = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r.metrics = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r.relayLog = startRelay(t, r.relay, "--https-listen", r.relay, "--tls-cert", r.cert, "--tls-key", r.key,
		"--proxy-protocol", "--trust-proxy", "127.0.0.1/32", "--metrics-listen", r.metrics)
	return r
}

// startHAProxy renders haproxy-relay.cfg for the rig (edit: nil, or a
// setting removed) and runs it in the foreground.
func (r *haproxyRig) startHAProxy(t *testing.T, edit func(string) string) string {
	t.Helper()
	front := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	_, mport, _ := net.SplitHostPort(r.metrics)
	cfg := render(t, "haproxy-relay.cfg", []subst{
		{"bind :443\n", "bind " + front + "\n", 1},
		{"server relay1 127.0.0.1:8443 ", "server relay1 " + r.relay + " ", 1},
		{"check port 9090 ", "check port " + mport + " ", 1},
	}, edit)
	file := filepath.Join(t.TempDir(), "haproxy.cfg")
	require.NoError(t, os.WriteFile(file, []byte(cfg), 0o644))
	check, err := exec.Command(r.haproxy, "-c", "-f", file).CombinedOutput()
	require.NoError(t, err, "haproxy -c:\n%s", check)
	out := start(t, r.haproxy, "-db", "-f", file)
	waitListening(t, front, out)
	return front
}

// TestProxyRecipes_HAProxy: deploy/haproxy-relay.cfg in front of the real
// relay (its own TLS, --proxy-protocol --trust-proxy 127.0.0.1/32): every
// remote-safe scenario of `relay attack` passes through it, no profile
// needed, and the relay charges the client's own address (the PROXY v2
// header believed). Without send-proxy-v2 the relay refuses HAProxy's
// connections, so the attack fails.
func TestProxyRecipes_HAProxy(t *testing.T) {
	t.Parallel()
	haproxy := needBinary(t, "haproxy", "haproxy")
	if os.Geteuid() != 0 && os.Getenv("CI") == "" {
		t.Skip("the recipe's chroot /var/lib/haproxy and user haproxy need root")
	}
	r := newHAProxyRig(t, haproxy)
	front := r.startHAProxy(t, nil)
	target := "https://" + front

	// The relay sees the client's address, not HAProxy's.
	require.Equal(t, 400, badUpgradeFrom(t, clientAddr, front, r.cert, ""))
	require.True(t, refusedFrom(r.relayLog, clientAddr), "the relay did not charge the refusal to %s (PROXY v2 not believed?); log:\n%s", clientAddr, tailOf(r.relayLog.String(), 2000))

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Without send-proxy-v2 the relay, which requires the header from
		// its trusted proxy, cuts every connection.
		t.Run("without send-proxy-v2", func(t *testing.T) {
			front := r.startHAProxy(t, func(s string) string { return strings.Replace(s, " send-proxy-v2 ", " ", 1) })
			t.Logf("fails as it should: %s", attackFails(t, "https://"+front, r.cert, "ATK-TLS-SUITES"))
		})
	}()
	attackAll(t, target, r.cert)
	wg.Wait()
}
