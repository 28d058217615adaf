package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAttackUnits_VerifiedAndRunnable: relay-attack.service and its timer
// pass systemd-analyze verify (ExecStart at the real binary), the service
// scores at most maxExposure, the timer fires daily and persistently, and
// the service's command line, run as written (paths moved into a temp
// dir, the target a loopback port where nothing listens), makes the real
// binary write all three outputs and exit 1 for the failed scenarios.
func TestAttackUnits_VerifiedAndRunnable(t *testing.T) {
	sa := systemdAnalyze(t)
	dir := t.TempDir()
	svc, err := os.ReadFile("relay-attack.service")
	require.NoError(t, err)
	tmr, err := os.ReadFile("relay-attack.timer")
	require.NoError(t, err)
	for name, b := range map[string][]byte{"relay-attack.service": svc, "relay-attack.timer": tmr} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(strings.ReplaceAll(string(b), "/usr/local/bin/relay", relayBin)), 0o644))
	}
	out, err := exec.Command(sa, "verify", "--no-pager", filepath.Join(dir, "relay-attack.service"), filepath.Join(dir, "relay-attack.timer")).CombinedOutput()
	require.NoError(t, err, "systemd-analyze verify:\n%s", out)
	require.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify warned")
	score, ok, report := exposure(t, sa, "relay-attack.service")
	require.True(t, ok, "relay-attack.service scores %.1f, above %.1f:\n%s", score, maxExposure, report)
	t.Logf("relay-attack.service: exposure %.1f", score)

	td := directives(t, "relay-attack.timer")
	require.Equal(t, []string{"daily"}, td["OnCalendar"])
	require.Equal(t, []string{"true"}, td["Persistent"])
	require.Equal(t, []string{"timers.target"}, td["WantedBy"])

	// The ExecStart line (with its continuations) as the shell would split it.
	m := regexp.MustCompile(`(?m)^ExecStart=((?:.*\\\n)*.*)$`).FindStringSubmatch(string(svc))
	require.NotNil(t, m, "no ExecStart")
	args := strings.Fields(strings.ReplaceAll(m[1], "\\\n", " "))
	require.Equal(t, []string{"/usr/local/bin/relay", "attack", "--target", "${RELAY_ATTACK_TARGET}"}, args[:4])
	outputs := map[string]string{}
	for i := 4; i+1 < len(args); i += 2 {
		outputs[args[i]] = args[i+1]
		args[i+1] = filepath.Join(dir, filepath.Base(args[i+1]))
	}
	for _, flag := range []string{"--prom-textfile", "--junit", "--report"} {
		require.Contains(t, outputs, flag, "the daily run writes %s", flag)
	}
	args = append([]string{"attack", "--target", "http://127.0.0.1:1", "--only", "ATK-CROSS-TENANT", "--timeout", "30s"}, args[4:]...)
	cmd := exec.Command(relayBin, args...)
	res, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", res)
	require.Equal(t, 1, ee.ExitCode(), "a failed scenario fails the unit: %s", res)
	prom, err := os.ReadFile(filepath.Join(dir, filepath.Base(outputs["--prom-textfile"])))
	require.NoError(t, err)
	require.Regexp(t, `(?m)^relay_attack_scenario_result\{scenario="ATK-CROSS-TENANT",threats="[^"]+"\} 0$`, string(prom))
	for _, f := range []string{"--junit", "--report"} {
		_, err := os.Stat(filepath.Join(dir, filepath.Base(outputs[f])))
		require.NoError(t, err, f)
	}
}
