package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// promtool returns Debian's promtool (package prometheus; .ci/run extracts
// it), skipping outside CI when it is missing and failing in CI.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is required in CI (.ci/run extracts it from Debian's prometheus package)")
		}
		t.Skip("promtool not installed")
	}
	return p
}

// ruleTests is the part of prometheus-rules.test.yml the coverage check reads.
type ruleTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		Name          string `yaml:"name"`
		AlertRuleTest []struct {
			EvalTime  string `yaml:"eval_time"`
			AlertName string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// TestPrometheusRules_Promtool: promtool accepts prometheus-rules.yml and
// every case of prometheus-rules.test.yml passes; every alert has a case
// where it fires and one where it stays quiet; and the cases can fail:
// the "timer stopped" rule as docs/deploy.md once wrote it (a staleness
// comparison, no absent()) misses the file that was never written.
func TestPrometheusRules_Promtool(t *testing.T) {
	t.Parallel()
	pt := promtool(t)
	out, err := exec.Command(pt, "check", "rules", "prometheus-rules.yml").CombinedOutput()
	require.NoError(t, err, "promtool check rules:\n%s", out)
	out, err = exec.Command(pt, "test", "rules", "prometheus-rules.test.yml").CombinedOutput()
	require.NoError(t, err, "promtool test rules:\n%s", out)
	require.Contains(t, string(out), "SUCCESS")

	b, err := os.ReadFile("prometheus-rules.test.yml")
	require.NoError(t, err)
	var rt ruleTests
	require.NoError(t, yaml.Unmarshal(b, &rt))
	require.Equal(t, []string{"prometheus-rules.yml"}, rt.RuleFiles)
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range rt.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.AlertName] = true
			} else {
				quiet[a.AlertName] = true
			}
		}
	}
	for alert := range rules(t) {
		require.True(t, fires[alert], "prometheus-rules.test.yml: no case where %s fires", alert)
		require.True(t, quiet[alert], "prometheus-rules.test.yml: no case where %s stays quiet", alert)
	}

	// Defect 3: the old rule never fires for a file never written.
	dir := t.TempDir()
	rulesYML, err := os.ReadFile("prometheus-rules.yml")
	require.NoError(t, err)
	const absentExpr = "expr: absent(relay_attack_last_run_timestamp_seconds)"
	require.Equal(t, 1, strings.Count(string(rulesYML), absentExpr))
	old := strings.Replace(string(rulesYML), absentExpr, "expr: time() - relay_attack_last_run_timestamp_seconds > 2 * 86400", 1)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "prometheus-rules.yml"), []byte(old), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "prometheus-rules.test.yml"), b, 0o644))
	cmd := exec.Command(pt, "test", "rules", "prometheus-rules.test.yml")
	cmd.Dir = dir
	out, err = cmd.CombinedOutput()
	require.Error(t, err, "the cases pass with a staleness rule in place of absent():\n%s", out)
	require.Contains(t, string(out), "alertname: RelayAttackMissing")
	require.Contains(t, string(out), "got:[]")
}
