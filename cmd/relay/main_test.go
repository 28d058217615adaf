package main

// Tests of the real binary: built once in TestMain, then started as a
// process the way an operator starts it. They pin the exit-code contract
// (0 clean shutdown, 2 refused to start with one line on stderr), the
// certificate-cache refusal before any port is bound, graceful shutdown on
// SIGTERM/SIGINT and the JSON-only stderr.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/logging"
	"github.com/pyrycode/relay/internal/tlsconf"
)

// relayBin is the binary TestMain built from this package.
var relayBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "relay-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "main_test: temp dir:", err)
		os.Exit(1)
	}
	relayBin = filepath.Join(dir, "relay")
	goTool, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "main_test: go tool not found:", err)
		os.Exit(1)
	}
	// The shipped build's flags (make build: static, -trimpath): the binary
	// under test is the one that ships, and its packages are the ones make
	// build compiled.
	build := exec.Command(goTool, "build", "-trimpath", "-o", relayBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "main_test: go build ./cmd/relay:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// relayEnv is the process environment for the binary: this process's
// environment without any RELAY_* variable (so a developer's shell cannot
// change the outcome), HOME pointed at a temp dir, plus extra.
func relayEnv(t *testing.T, extra ...string) []string {
	t.Helper()
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "RELAY_") || strings.HasPrefix(kv, "HOME=")
	})
	// No lame-duck window unless a test asks (it would add --drain-delay to
	// every SIGTERM); exec keeps the last of duplicate keys.
	env = append(env, "HOME="+t.TempDir(), "RELAY_DRAIN_DELAY=0s")
	return append(env, extra...)
}

type result struct {
	code   int
	stdout string
	stderr string
}

// runRelay runs the binary to completion (10 s at most).
func runRelay(t *testing.T, env []string, args ...string) result {
	t.Helper()
	return runCmd(t, env, relayBin, args...)
}

// runCmd runs name (the binary, or a wrapper that execs it) to completion.
func runCmd(t *testing.T, env []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	require.NoError(t, ctx.Err(), "relay %v did not exit; stderr:\n%s", args, stderr.String())
	var exitErr *exec.ExitError
	code := 0
	if errors.As(err, &exitErr) {
		code = exitErr.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// requireRefusal asserts exit 2 and exactly one stderr line containing every
// one of want.
func requireRefusal(t *testing.T, r result, want ...string) {
	t.Helper()
	require.Equal(t, 2, r.code, "stderr: %s", r.stderr)
	line := strings.TrimSuffix(r.stderr, "\n")
	require.NotEmpty(t, line)
	require.NotContains(t, line, "\n", "want one line on stderr, got:\n%s", r.stderr)
	require.True(t, strings.HasPrefix(line, "relay: "), "stderr line %q", line)
	require.Equal(t, 1, strings.Count(line, "relay:"), "one relay: prefix, got %q", line)
	require.NotRegexp(t, `\b(tlsconf|admission|push|cluster): `, line, "no internal package prefix")
	for _, w := range want {
		require.Contains(t, line, w)
	}
}

// writeCertPair writes a self-signed P-256 certificate for relay.example.test
// with its key at 0600.
func writeCertPair(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "relay.example.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"relay.example.test"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
	return certFile, keyFile
}

func TestServe_Refusals_Exit2OneLine(t *testing.T) {
	certFile, keyFile := writeCertPair(t)
	plain := []string{"serve", "--insecure-listen", "127.0.0.1:0"}
	with := func(extra ...string) []string { return append(slices.Clone(plain), extra...) }
	cases := []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"no_mode", nil, []string{"serve"}, []string{"choose one mode"}},
		{"domain_and_insecure", nil, []string{"serve", "--domain", "relay.example.test", "--insecure-listen", "127.0.0.1:0"}, []string{"--insecure-listen", "--domain", "mutually exclusive"}},
		{"tls_cert_and_domain", nil, []string{"serve", "--tls-cert", certFile, "--tls-key", keyFile, "--domain", "relay.example.test"}, []string{"--tls-cert", "--domain", "mutually exclusive"}},
		{"tls_cert_without_key", nil, []string{"serve", "--tls-cert", certFile, "--https-listen", "127.0.0.1:0"}, []string{"--tls-cert and --tls-key"}},
		{"tls_cert_and_key_swapped", nil, []string{"serve", "--tls-cert", keyFile, "--tls-key", certFile, "--https-listen", "127.0.0.1:0"}, []string{"swapped", "--tls-cert takes the chain"}},
		{"tls_key_without_cert", nil, []string{"serve", "--tls-key", keyFile, "--https-listen", "127.0.0.1:0"}, []string{"--tls-cert and --tls-key"}},
		{"acme_flag_without_domain", nil, with("--cert-cache", t.TempDir()), []string{"--cert-cache needs --domain"}},
		{"max_phones_0", nil, with("--max-phones", "0"), []string{"--max-phones"}},
		{"max_phones_not_a_number", nil, with("--max-phones", "abc"), []string{"--max-phones abc is not a whole number, e.g. 16"}},
		{"ping_interval_no_unit", nil, with("--ping-interval", "30"), []string{"--ping-interval 30 is not a duration", "e.g. 30s"}},
		{"env_ping_interval_no_unit", []string{"RELAY_PING_INTERVAL=30"}, plain, []string{"RELAY_PING_INTERVAL=30 is not a duration", "e.g. 30s"}},
		{"max_tracked_ips_not_above_max_conns", nil, with("--max-conns", "70000", "--max-sockets", "140000"), []string{"--max-tracked-ips 65536 must be more than --max-conns (70000)"}},
		{"unknown_flag", nil, with("--no-such-flag"), []string{"refusing to start: unknown flag --no-such-flag (relay serve -h lists the flags)"}},
		{"flag_without_value", nil, with("--ping-interval"), []string{"--ping-interval needs a value, e.g. --ping-interval 30s"}},
		{"max_message_bytes_10", nil, with("--max-message-bytes", "10"), []string{"--max-message-bytes"}},
		{"phone_queue_below_max_message", nil, with("--max-message-bytes", "65536", "--phone-queue-bytes", "65535"), []string{"--phone-queue-bytes"}},
		{"max_queued_below_phone_queue", nil, with("--max-queued-bytes", "1024"), []string{"--max-queued-bytes"}},
		{"max_header_bytes_10", nil, with("--max-header-bytes", "10"), []string{"--max-header-bytes"}},
		{"max_conns_0", nil, with("--max-conns", "0"), []string{"--max-conns"}},
		{"max_conns_per_ip_over_max_conns", nil, with("--max-conns", "10", "--max-conns-per-ip", "11"), []string{"--max-conns-per-ip"}},
		{"upgrade_rate_0", nil, with("--upgrade-rate", "0"), []string{"--upgrade-rate"}},
		{"upgrade_burst_0", nil, with("--upgrade-burst", "0"), []string{"--upgrade-burst"}},
		{"max_tracked_ips_0", nil, with("--max-tracked-ips", "0"), []string{"--max-tracked-ips"}},
		{"trust_proxy_garbage", nil, with("--trust-proxy", "garbage"), []string{"--trust-proxy"}},
		{"proxy_protocol_without_trust_proxy", nil, with("--proxy-protocol"), []string{"--proxy-protocol needs --trust-proxy"}},
		{"log_level_unknown", nil, with("--log-level", "loud"), []string{"--log-level"}},
		{"listen_not_host_port", nil, []string{"serve", "--insecure-listen", "8080"}, []string{"--insecure-listen"}},
		{"env_max_phones_abc", []string{"RELAY_MAX_PHONES=abc"}, plain, []string{"RELAY_MAX_PHONES=abc"}},
		{"env_conflicting_mode", []string{"RELAY_DOMAIN=relay.example.test"}, plain, []string{"mutually exclusive"}},
		{"production_plain_http", []string{"RELAY_PRODUCTION=1"}, plain, []string{"RELAY_PRODUCTION=1", "plain HTTP"}},
		{"invalid_domain", nil, []string{"serve", "--domain", "localhost", "--https-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--cert-cache", filepath.Join(t.TempDir(), "c")}, []string{"domain"}},
		{"acme_directory_not_https", nil, []string{"serve", "--domain", "relay.example.test", "--https-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--cert-cache", filepath.Join(t.TempDir(), "c"), "--acme-directory", "http://127.0.0.1:1/dir"}, []string{"ACME directory"}},
	}
	// Every timer flag refuses zero and negative durations.
	for _, f := range []string{
		"ping-interval", "pong-timeout", "read-timeout", "write-timeout", "close-timeout",
		"grace-period", "probe-timeout", "read-header-timeout", "shutdown-timeout", "proxy-header-timeout",
	} {
		for _, v := range []string{"0s", "-1s"} {
			cases = append(cases, struct {
				name string
				env  []string
				args []string
				want []string
			}{f + "_" + v, nil, with("--"+f, v), []string{"--" + f, "positive"}})
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runRelay(t, relayEnv(t, tc.env...), tc.args...)
			requireRefusal(t, r, tc.want...)
			require.NotContains(t, r.stderr, `"listening"`)
		})
	}
}

func TestServe_ProductionAsRoot_Refused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs to run as root: the refusal is about euid 0")
	}
	certFile, keyFile := writeCertPair(t)
	args := []string{"serve", "--tls-cert", certFile, "--tls-key", keyFile, "--https-listen", "127.0.0.1:0"}
	r := runRelay(t, relayEnv(t, "RELAY_PRODUCTION=1"), args...)
	requireRefusal(t, r, "RELAY_PRODUCTION=1", "root")

	// Control: the same static-TLS start without the production switch is
	// accepted, so the refusal above is about root, not the certificate.
	p := startRelay(t, relayEnv(t), args...)
	p.waitListening(t, "public")
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))
}

// -h, --help and help print the usage to stdout and exit 0 for every command.
func TestHelp_StdoutExit0_Everywhere(t *testing.T) {
	for _, args := range [][]string{
		{"help"}, {"-h"}, {"--help"},
		{"serve", "-h"}, {"serve", "--help"}, {"serve", "help"}, {"help", "serve"},
		{"attack", "-h"}, {"attack", "--help"}, {"attack", "help"}, {"help", "attack"},
		{"version", "-h"}, {"version", "--help"}, {"help", "version"},
		{"healthcheck", "-h"}, {"healthcheck", "help"}, {"help", "healthcheck"},
	} {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			r := runRelay(t, relayEnv(t), args...)
			require.Equal(t, 0, r.code, "stderr: %s", r.stderr)
			require.Contains(t, r.stdout, "usage:")
			require.Empty(t, r.stderr)
			if slices.Contains(args, "serve") {
				require.Contains(t, r.stdout, "--ping-interval")
			}
			if slices.Contains(args, "attack") {
				require.Contains(t, r.stdout, "\n  --target string\n", "flags as relay serve -h prints them")
			}
		})
	}
}

// relay version names the release, the commit and the toolchain. Built
// without -ldflags (as TestMain builds it), it falls back to what the go
// command recorded and says why a field is unknown: never a bare "dev".
func TestVersion_Exit0(t *testing.T) {
	r := runRelay(t, relayEnv(t), "version")
	require.Equal(t, 0, r.code)
	require.Empty(t, r.stderr)
	goVersion := regexp.QuoteMeta(runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH)
	require.Regexp(t, `^relay \S+ \(revision ([0-9a-f]{40}(\+dirty)?|unknown - [^,]+), `+goVersion+`\)\n$`, r.stdout)
	require.NotRegexp(t, `^relay dev\b`, r.stdout)
}

// With the Makefile's -ldflags, the stamped version and revision are what it
// prints. (Same build flags as TestMain otherwise, so only the link reruns.)
func TestVersion_LdflagsStamp(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "relay")
	const pkg = "github.com/pyrycode/relay/internal/buildinfo"
	build := exec.Command("go", "build", "-trimpath", "-o", bin,
		"-ldflags", "-X "+pkg+".version=v9.8.7-test -X "+pkg+".revision=0123456789abcdef0123456789abcdef01234567", ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))
	got, err := exec.Command(bin, "version").Output()
	require.NoError(t, err)
	require.Equal(t, "relay v9.8.7-test (revision 0123456789abcdef0123456789abcdef01234567, "+
		runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH+")\n", string(got))
}

// Usage errors of every command are one relay: line naming the flag as
// typed (--name) and where the valid ones are listed, exit 2, nothing on
// stdout: never the flag package's "flag provided but not defined: -x".
func TestUsageErrors_OneLineNamingTheFlag_Exit2(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--no-such-flag"}, "relay: refusing to start: unknown flag --no-such-flag (relay serve -h lists the flags)"},
		{[]string{"attack", "--no-such-flag"}, "relay: unknown flag --no-such-flag (relay attack -h lists the flags)"},
		{[]string{"attack", "--target", "http://127.0.0.1:1", "--timeout", "30"}, "relay: --timeout 30 is not a duration: use a number with a unit, e.g. 10m0s (relay attack -h lists the flags)"},
		{[]string{"attack", "--json=maybe"}, "relay: --json maybe is not a boolean: use true or false (relay attack -h lists the flags)"},
		{[]string{"attack", "--target"}, "relay: --target needs a value (relay attack -h lists the flags)"},
		{[]string{"attack"}, "relay: --target is required"},
		{[]string{"version", "--no-such-flag"}, "relay: unknown flag --no-such-flag (relay version takes none)"},
		{[]string{"version", "extra"}, `relay: unexpected argument "extra" (relay version takes none)`},
		{[]string{"help", "frobnicate"}, `relay: unknown command "frobnicate" (see relay help)`},
		{[]string{"--domain", "relay.example.test"}, "relay: unknown flag --domain: flags follow a command, e.g. relay serve --domain (relay serve -h lists the flags)"},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			r := runRelay(t, relayEnv(t), tc.args...)
			requireRefusal(t, r)
			require.Equal(t, tc.want+"\n", r.stderr)
			require.Empty(t, r.stdout)
		})
	}
}

func TestUnknownSubcommand_Exit2(t *testing.T) {
	r := runRelay(t, relayEnv(t), "frobnicate")
	require.Equal(t, 2, r.code)
	require.Equal(t, "relay: unknown command \"frobnicate\" (see relay help)\n", r.stderr, "exactly one line")
	require.Empty(t, r.stdout)
}

// proc is a relay process started in the background; stderr is collected
// line by line.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	code int

	mu     sync.Mutex
	lines  []string
	cond   chan struct{} // closed and replaced on every new line
	closed bool          // stderr reached EOF
}

func startRelay(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startRelayCmd(t, env, relayBin, args...)
}

// startRelayCmd starts name (the binary, or a wrapper that execs it).
func startRelayCmd(t *testing.T, env []string, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	return startCmd(t, cmd)
}

// startCmd starts cmd (the relay, possibly under a wrapper that execs it).
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &proc{cmd: cmd, done: make(chan struct{}), cond: make(chan struct{})}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.cond)
			p.cond = make(chan struct{})
			p.mu.Unlock()
		}
		p.mu.Lock()
		p.closed = true
		close(p.cond)
		p.cond = make(chan struct{})
		p.mu.Unlock()
	}()
	go func() {
		<-scanned // Wait must not run before the pipe is drained
		err := cmd.Wait()
		var exitErr *exec.ExitError
		switch {
		case err == nil:
			p.code = 0
		case errors.As(err, &exitErr):
			p.code = exitErr.ExitCode()
			if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				p.code = -int(ws.Signal())
			}
		default:
			p.code = -1000
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// stderrLines returns a copy of the lines read so far.
func (p *proc) stderrLines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.lines)
}

// logLine is the part of a JSON log line the tests look at.
type logLine struct {
	Msg      string `json:"msg"`
	Event    string `json:"event"`
	Listener string `json:"listener"`
	Addr     string `json:"addr"`
}

// waitListening waits for the "listening" line of listener and returns the
// bound address.
func (p *proc) waitListening(t *testing.T, listener string) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for seen := 0; ; {
		p.mu.Lock()
		lines, wake, closed := p.lines[seen:], p.cond, p.closed
		p.mu.Unlock()
		for _, l := range lines {
			var ll logLine
			if json.Unmarshal([]byte(l), &ll) == nil && ll.Event == "listening" && ll.Listener == listener {
				require.NotEmpty(t, ll.Addr)
				return ll.Addr
			}
		}
		seen += len(lines)
		if closed {
			t.Fatalf("relay exited before listening on %s; stderr:\n%s", listener, strings.Join(p.stderrLines(), "\n"))
		}
		select {
		case <-wake:
		case <-deadline:
			t.Fatalf("no listening line for %s within 10s; stderr:\n%s", listener, strings.Join(p.stderrLines(), "\n"))
		}
	}
}

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig))
}

// wait returns the exit code, failing the test if the process is still
// running after d.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(d):
		t.Fatalf("relay still running %v after the signal; stderr:\n%s", d, strings.Join(p.stderrLines(), "\n"))
		return 0
	}
}

// requireJSONLogs asserts every stderr line is a JSON object whose keys are
// all on the logging allowlist.
func requireJSONLogs(t *testing.T, lines []string) {
	t.Helper()
	require.NotEmpty(t, lines)
	allowed := logging.AllowedKeys()
	for _, l := range lines {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), "stderr line is not a JSON object: %q", l)
		for k := range m {
			require.Contains(t, allowed, k, "log key %q is off the allowlist in %q", k, l)
		}
		require.NotContains(t, m, logging.KeyDroppedAttrs, "the handler had to drop attributes: %q", l)
	}
}

// cacheArgs starts autocert mode against a directory URL that is never
// contacted (port 1): the cache check runs before any network activity.
func cacheArgs(cache, httpsAddr, httpAddr string) []string {
	return []string{"serve",
		"--domain", "relay.example.test",
		"--https-listen", httpsAddr,
		"--http-listen", httpAddr,
		"--cert-cache", cache,
		"--acme-directory", "https://127.0.0.1:1/dir",
	}
}

func TestCacheDir_Owner0700_Starts_SIGTERMExit0(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "certs")
	require.NoError(t, os.Mkdir(cache, 0o700))
	require.NoError(t, os.Chmod(cache, 0o700))
	p := startRelay(t, relayEnv(t), cacheArgs(cache, "127.0.0.1:0", "127.0.0.1:0")...)
	public := p.waitListening(t, "public")
	p.waitListening(t, "acme")
	host, _, err := net.SplitHostPort(public)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host)
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))
	requireJSONLogs(t, p.stderrLines())
}

func TestCacheDir_Missing_Created0700_Starts(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "a", "certs")
	p := startRelay(t, relayEnv(t), cacheArgs(cache, "127.0.0.1:0", "127.0.0.1:0")...)
	p.waitListening(t, "public")
	fi, err := os.Stat(cache)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))
}

// holdPort binds 127.0.0.1:0 for the test's duration. The relay refusing
// over the cache must say so, not that the port was taken: the cache is
// checked before any port is bound.
func holdPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	return ln.Addr().String()
}

func TestCacheDir_GroupOrWorldBits_Refused_BeforeAnyPort(t *testing.T) {
	for _, mode := range []os.FileMode{0o750, 0o755, 0o777, 0o770, 0o701, 0o710} {
		t.Run(fmt.Sprintf("%#o", mode), func(t *testing.T) {
			t.Parallel()
			cache := filepath.Join(t.TempDir(), "certs")
			require.NoError(t, os.Mkdir(cache, 0o700))
			require.NoError(t, os.Chmod(cache, mode)) // Mkdir's mode is narrowed by umask
			r := runRelay(t, relayEnv(t), cacheArgs(cache, holdPort(t), holdPort(t))...)
			requireRefusal(t, r, strings.TrimPrefix(tlsconf.ErrCacheDirInsecure.Error(), "tlsconf: "), cache, fmt.Sprintf("%#o", mode))
			require.NotContains(t, r.stderr, "listen")
			require.NotContains(t, r.stderr, "address already in use")
			fi, err := os.Stat(cache)
			require.NoError(t, err)
			require.Equal(t, mode, fi.Mode().Perm(), "the relay changed the cache mode")
		})
	}
}

func TestCacheDir_SymlinkOrFileOrLooseEntry_Refused(t *testing.T) {
	t.Run("symlink", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		real := filepath.Join(dir, "real")
		require.NoError(t, os.Mkdir(real, 0o700))
		link := filepath.Join(dir, "certs")
		require.NoError(t, os.Symlink(real, link))
		r := runRelay(t, relayEnv(t), cacheArgs(link, holdPort(t), holdPort(t))...)
		requireRefusal(t, r, strings.TrimPrefix(tlsconf.ErrCacheDirInsecure.Error(), "tlsconf: "), "symlink")
	})
	t.Run("not_a_directory", func(t *testing.T) {
		t.Parallel()
		file := filepath.Join(t.TempDir(), "certs")
		require.NoError(t, os.WriteFile(file, nil, 0o600))
		r := runRelay(t, relayEnv(t), cacheArgs(file, holdPort(t), holdPort(t))...)
		requireRefusal(t, r, strings.TrimPrefix(tlsconf.ErrCacheDirNotDir.Error(), "tlsconf: "))
	})
	t.Run("entry_0644", func(t *testing.T) {
		t.Parallel()
		cache := filepath.Join(t.TempDir(), "certs")
		require.NoError(t, os.Mkdir(cache, 0o700))
		entry := filepath.Join(cache, "acme_account+key")
		require.NoError(t, os.WriteFile(entry, []byte("x"), 0o600))
		require.NoError(t, os.Chmod(entry, 0o644))
		r := runRelay(t, relayEnv(t), cacheArgs(cache, holdPort(t), holdPort(t))...)
		requireRefusal(t, r, strings.TrimPrefix(tlsconf.ErrCacheDirInsecure.Error(), "tlsconf: "), entry)
	})
}

// dialWS dials the relay's plain listener.
func dialWS(t *testing.T, url string, hdr http.Header) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: hdr})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// healthz fetches the relay's counts.
func healthz(t *testing.T, addr string) (binaries, phones int) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/healthz")
	require.NoError(t, err)
	defer resp.Body.Close()
	var h struct{ Binaries, Phones int }
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&h))
	return h.Binaries, h.Phones
}

// tokenCanary is a phone token that must never appear in the relay's output.
const tokenCanary = "TOKEN-CANARY-9d2f"

func TestShutdown_Signal_Close1001_Exit0(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			const shutdownTimeout = 5 * time.Second
			p := startRelay(t, relayEnv(t), "serve", "--insecure-listen", "127.0.0.1:0",
				"--shutdown-timeout", shutdownTimeout.String(), "--close-timeout", "500ms")
			addr := p.waitListening(t, "public")
			base := "ws://" + addr

			bin := dialWS(t, base+"/v1/server", http.Header{"X-Pyrycode-Server": {"srv-shutdown"}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"main_test"}})
			require.Eventually(t, func() bool { b, _ := healthz(t, addr); return b == 1 }, 5*time.Second, 10*time.Millisecond)
			phone := dialWS(t, base+"/v1/client", http.Header{"X-Pyrycode-Server": {"srv-shutdown"}, "X-Pyrycode-Token": {tokenCanary}, "User-Agent": {"main_test"}})
			require.Eventually(t, func() bool { _, ph := healthz(t, addr); return ph == 1 }, 5*time.Second, 10*time.Millisecond)

			// Prove the pair is live before the signal.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			require.NoError(t, phone.Write(ctx, websocket.MessageText, []byte(`{"ping":1}`)))
			_, msg, err := bin.Read(ctx)
			require.NoError(t, err)
			require.Contains(t, string(msg), `"frame":{"ping":1}`)

			// Both sides keep reading so that they answer the close handshake.
			closeCode := func(c *websocket.Conn) <-chan websocket.StatusCode {
				ch := make(chan websocket.StatusCode, 1)
				go func() {
					for {
						if _, _, err := c.Read(ctx); err != nil {
							ch <- websocket.CloseStatus(err)
							return
						}
					}
				}()
				return ch
			}
			binClosed, phoneClosed := closeCode(bin), closeCode(phone)

			began := time.Now()
			p.signal(t, sig)
			require.Equal(t, websocket.StatusGoingAway, <-binClosed, "binary close code")
			require.Equal(t, websocket.StatusGoingAway, <-phoneClosed, "phone close code")
			require.Equal(t, 0, p.wait(t, shutdownTimeout+2*time.Second))
			require.Less(t, time.Since(began), shutdownTimeout, "shutdown took the whole drain deadline")

			lines := p.stderrLines()
			requireJSONLogs(t, lines)
			require.NotContains(t, strings.Join(lines, "\n"), tokenCanary, "a token reached the log")
			require.NotContains(t, strings.Join(lines, "\n"), "shutdown_forced")
		})
	}
}
