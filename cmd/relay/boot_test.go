package main

// Boot checks of the real binary: the capability refusal under
// RELAY_PRODUCTION=1 (run through setpriv as an unprivileged user holding a
// chosen capability set, since CI runs as root with every capability), and
// what the binary links (no profiling or debug-variable endpoints).

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// unprivileged copies the binary and a static certificate pair to a
// directory uid 65534 can read (the key owned by it, 0600) and returns the
// binary's path and the serve arguments.
func unprivileged(t *testing.T) (bin string, args []string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to start the relay as another user with chosen capabilities")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) not installed")
	}
	dir, err := os.MkdirTemp("", "relay-caps-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	b, err := os.ReadFile(relayBin)
	require.NoError(t, err)
	bin = filepath.Join(dir, "relay")
	require.NoError(t, os.WriteFile(bin, b, 0o755))
	certSrc, keySrc := writeCertPair(t)
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for _, f := range [][3]any{{certSrc, cert, os.FileMode(0o644)}, {keySrc, key, os.FileMode(0o600)}} {
		b, err := os.ReadFile(f[0].(string))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(f[1].(string), b, f[2].(os.FileMode)))
	}
	require.NoError(t, os.Chown(key, 65534, 65534))
	return bin, []string{"serve", "--tls-cert", cert, "--tls-key", key, "--https-listen", "127.0.0.1:0"}
}

// asNobody runs bin as uid/gid 65534 holding exactly caps (inheritable and
// ambient, hence permitted and effective after exec).
func asNobody(ctx context.Context, bin string, caps string, args ...string) *exec.Cmd {
	sp := []string{"--reuid=65534", "--regid=65534", "--clear-groups"}
	if caps != "" {
		sp = append(sp, "--inh-caps=+"+caps, "--ambient-caps=+"+caps)
	}
	return exec.CommandContext(ctx, "setpriv", append(append(sp, "--", bin), args...)...)
}

// TestServe_ProductionExtraCapabilities_Refused: a non-root relay holding
// CAP_SYS_ADMIN (or CAP_NET_RAW) beside CAP_NET_BIND_SERVICE refuses to
// start, exit 2, naming the capability; with CAP_NET_BIND_SERVICE alone, or
// without RELAY_PRODUCTION, the same start is accepted.
func TestServe_ProductionExtraCapabilities_Refused(t *testing.T) {
	bin, args := unprivileged(t)
	for _, extra := range []string{"sys_admin", "net_raw"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		cmd := asNobody(ctx, bin, "net_bind_service,+"+extra, args...)
		cmd.Env = relayEnv(t, "RELAY_PRODUCTION=1")
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		timedOut := ctx.Err()
		cancel()
		require.NoError(t, timedOut, "relay holding cap_%s started and kept running; stderr:\n%s", extra, stderr.String())
		var exitErr *exec.ExitError
		require.ErrorAs(t, err, &exitErr, "relay with cap_%s started; stderr:\n%s", extra, stderr.String())
		requireRefusal(t, result{code: exitErr.ExitCode(), stdout: stdout.String(), stderr: stderr.String()},
			"CAP_NET_BIND_SERVICE", "cap_"+extra)
	}

	for _, tc := range []struct {
		name, caps string
		env        []string
	}{
		{"production_net_bind_service_only", "net_bind_service", []string{"RELAY_PRODUCTION=1"}},
		{"production_no_capabilities", "", []string{"RELAY_PRODUCTION=1"}},
		{"not_production_extra_capability", "net_bind_service,+sys_admin", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := asNobody(context.Background(), bin, tc.caps, args...)
			cmd.Env = relayEnv(t, tc.env...)
			p := startCmd(t, cmd)
			p.waitListening(t, "public")
			p.signal(t, syscall.SIGTERM)
			require.Equal(t, 0, p.wait(t, 10*time.Second))
		})
	}
}

// TestBinary_NoPprofNoExpvarEndpoints: the shipped binary links no
// net/http/pprof; expvar is linked only because
// github.com/prometheus/client_golang/prometheus imports it (for its
// ExpvarCollector), never by relay code; and neither /debug/pprof/ nor
// expvar's /debug/vars (registered on http.DefaultServeMux, which no
// listener serves) answers on any listener of the running binary.
func TestBinary_NoPprofNoExpvarEndpoints(t *testing.T) {
	out, err := exec.Command("go", "tool", "nm", relayBin).Output()
	require.NoError(t, err)
	syms := string(out)
	require.Regexp(t, `(?m) T net/http\.\(\*Server\)\.Serve$`, syms, "positive control: the symbol scan sees net/http")
	require.NotRegexp(t, `(?m) [TtDdBbRr] net/http/pprof\.`, syms, "the binary links net/http/pprof")
	require.NotRegexp(t, `(?m) [TtDdBbRr] runtime/pprof\.`, syms, "the binary links runtime/pprof")

	// Who imports expvar: only the allowlisted module package.
	deps, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, ".").Output()
	require.NoError(t, err)
	var importers []string
	for _, line := range strings.Split(string(deps), "\n") {
		f := strings.Fields(line)
		for _, imp := range f[min(1, len(f)):] {
			if imp == "net/http/pprof" {
				t.Errorf("%s imports net/http/pprof", f[0])
			}
			if imp == "expvar" {
				importers = append(importers, f[0])
			}
		}
	}
	sort.Strings(importers)
	require.Equal(t, []string{"github.com/prometheus/client_golang/prometheus"}, importers,
		"expvar may only come in through client_golang; relay code must not import it")

	p := startRelay(t, relayEnv(t), "serve", "--insecure-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0")
	for _, ln := range []string{"public", "metrics"} {
		addr := p.waitListening(t, ln)
		for _, path := range []string{"/debug/vars", "/debug/pprof/", "/debug/pprof/goroutine?debug=2"} {
			resp, err := http.Get("http://" + addr + path)
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, http.StatusNotFound, resp.StatusCode, "%s %s", ln, path)
			require.NotRegexp(t, regexp.MustCompile(`memstats|cmdline|goroutine`), string(body), "%s %s", ln, path)
		}
	}
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))
}

// TestBinary_EmbedsFallbackRoots: the binary carries its own CA roots (the
// FROM-scratch image has no /etc/ssl/certs), linked as the fallback module.
func TestBinary_EmbedsFallbackRoots(t *testing.T) {
	out, err := exec.Command("go", "version", "-m", relayBin).Output()
	require.NoError(t, err)
	require.Regexp(t, `(?m)^\s+dep\s+golang\.org/x/crypto/x509roots/fallback\s`, string(out))
	syms, err := exec.Command("go", "tool", "nm", relayBin).Output()
	require.NoError(t, err)
	require.Regexp(t, `(?m) golang\.org/x/crypto/x509roots/fallback\.init`, string(syms), "the fallback's init (which registers the roots) is linked")
}
