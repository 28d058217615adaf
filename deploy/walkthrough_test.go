package deploy

// The walkthrough of issue 21's "Done when", as tests that follow the
// documents: the .deb install and the configuration file with --check
// (deb_test.go, run by make deb), a SIGHUP reload of a limit through the
// units' own ExecReload lines, /readyz through a NATS outage, a
// Kubernetes-style secret, and the attack timer writing its file as its own
// user (attack_units_test.go).

import (
	"os"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// TestWalkthrough_ReadyzThroughNATSOutage: a relay in cluster mode with the
// metrics listener, probed with the command docs/deploy.md gives a health
// check (`relay healthcheck --url http://METRICS/readyz`, only the address
// changed): ready with NATS up, not ready (exit 1) while NATS is down,
// though /livez still answers, and ready again once NATS is back.
func TestWalkthrough_ReadyzThroughNATSOutage(t *testing.T) {
	doc := string(mustRead(t, "../docs/deploy.md"))
	m := regexp.MustCompile("`relay healthcheck --url http://127\\.0\\.0\\.1:9090(/readyz)`").FindStringSubmatch(doc)
	require.NotNil(t, m, "docs/deploy.md gives the health check command")

	ns, err := natstest.Start(t.TempDir(), 0)
	require.NoError(t, err)
	t.Cleanup(ns.Stop)
	addrs := serveRelay(t, "--insecure-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--cluster-nats", ns.URL(), "--instance-id", "walkthrough")
	check := func(path string) int {
		out, err := exec.Command(relayBin, "healthcheck", "--url", "http://"+addrs["metrics"]+path, "--timeout", "2s").CombinedOutput()
		if err == nil {
			return 0
		}
		ee, ok := err.(*exec.ExitError)
		require.True(t, ok, "%v: %s", err, out)
		require.NotEqual(t, 2, ee.ExitCode(), "a usage error: %s", out)
		return ee.ExitCode()
	}
	until := func(path string, code int, why string) {
		t.Helper()
		start := time.Now()
		require.Eventually(t, func() bool { return check(path) == code }, 20*time.Second, 100*time.Millisecond, why)
		t.Logf("%s: healthcheck %s exits %d after %v", why, path, code, time.Since(start).Round(10*time.Millisecond))
	}
	until(m[1], 0, "NATS up")
	ns.Stop()
	until(m[1], 1, "NATS down")
	require.Equal(t, 0, check("/livez"), "the process itself is fine")
	require.NoError(t, ns.Restart())
	until(m[1], 0, "NATS back")
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return b
}
