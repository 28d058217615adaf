package attacks

import (
	"bytes"
	"encoding/xml"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAttackCommand_Outputs: --junit, --report and --prom-textfile written
// by a passing run against the local relay and by a failing one against a
// port where nothing listens, each checked in its own format.
func TestAttackCommand_Outputs(t *testing.T) {
	t.Parallel()
	target := localTarget(t)
	dir := t.TempDir()
	files := func(prefix string) (string, string, string) {
		return filepath.Join(dir, prefix+".xml"), filepath.Join(dir, prefix+".html"), filepath.Join(dir, prefix+".prom")
	}
	junit, html, prom := files("pass")
	var out, errOut bytes.Buffer
	code := Main([]string{"--target", target.Base.String(), "--only", "ATK-CROSS-TENANT,ATK-TLS-VERSION",
		"--junit", junit, "--report", html, "--prom-textfile", prom}, &out, &errOut)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())

	var suites junitSuites
	b, err := os.ReadFile(junit)
	require.NoError(t, err)
	require.NoError(t, xml.Unmarshal(b, &suites), "JUnit XML parses")
	require.Len(t, suites.Suites, 1)
	s := suites.Suites[0]
	require.Equal(t, 2, s.Tests)
	require.Equal(t, 0, s.Failures)
	require.Equal(t, 1, s.Skipped, "ATK-TLS-VERSION skips against plain HTTP")
	require.Len(t, s.Cases, 2)
	require.Contains(t, s.Cases[0].Name, "ATK-CROSS-TENANT")
	require.NotEmpty(t, s.Cases[0].SystemOut, "the evidence line")

	b, err = os.ReadFile(html)
	require.NoError(t, err)
	page := string(b)
	for _, want := range []string{"TM-ROUTE-1", "Cross-tenant routing", "registry.lookupPhone", "ATK-CROSS-TENANT", `class="PASS"`, `class="SKIP"`,
		"TM-DEP-1", "not executable", "TM-DOS-1", "not run here"} {
		require.Contains(t, page, want)
	}
	require.NotRegexp(t, `(?i)<script|<link|src=`, page, "self-contained and readable offline (links only, nothing loaded)")
	checkReportLinks(t, b, reportBase("", html), dir, []string{"ATK-CROSS-TENANT", "ATK-TLS-VERSION"})

	b, err = os.ReadFile(prom)
	require.NoError(t, err)
	text := string(b)
	require.Regexp(t, `(?m)^relay_attack_scenario_result\{scenario="ATK-CROSS-TENANT",threats="TM-ROUTE-1,TM-ROUTE-3,TM-DOS-9"\} 1$`, text)
	require.Regexp(t, `(?m)^relay_attack_scenario_result\{scenario="ATK-TLS-VERSION",threats="TM-TLS-1"\} -1$`, text)
	require.Regexp(t, `(?m)^relay_attack_failed_scenarios 0$`, text)
	require.Regexp(t, `(?m)^relay_attack_last_run_timestamp_seconds [1-9][0-9]{9}$`, text)
	require.Regexp(t, `(?m)^relay_attack_run_duration_seconds [0-9]+\.[0-9]{3}$`, text)
	checkPromText(t, text)

	require.Regexp(t, `(?m)^relay_attack_could_not_run_scenarios 0$`, text)
	require.Regexp(t, `(?m)^relay_attack_exit_code 0$`, text)

	// A run with a finding: the failure is in every output, and they are
	// still written.
	srv, _ := notARelay(t, false)
	junit, html, prom = files("fail")
	out.Reset()
	errOut.Reset()
	require.Equal(t, ExitFinding, Main([]string{"--target", srv.URL, "--only", "ATK-CROSS-TENANT", "--timeout", "30s",
		"--junit", junit, "--report", html, "--prom-textfile", prom}, &out, &errOut), "stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	b, err = os.ReadFile(junit)
	require.NoError(t, err)
	var failed junitSuites
	require.NoError(t, xml.Unmarshal(b, &failed))
	require.Equal(t, 1, failed.Suites[0].Failures)
	require.Equal(t, 0, failed.Suites[0].Errors)
	require.NotNil(t, failed.Suites[0].Cases[0].Failure)
	b, err = os.ReadFile(html)
	require.NoError(t, err)
	require.Contains(t, string(b), `<td class="FAIL">FAIL<br>`)
	require.Contains(t, string(b), `<h2 id="findings">Findings (1)</h2>`)
	b, err = os.ReadFile(prom)
	require.NoError(t, err)
	require.Regexp(t, `(?m)^relay_attack_scenario_result\{scenario="ATK-CROSS-TENANT",threats="[^"]+"\} 0$`, string(b))
	require.Regexp(t, `(?m)^relay_attack_failed_scenarios 1$`, string(b))
	require.Regexp(t, `(?m)^relay_attack_could_not_run_scenarios 0$`, string(b))
	require.Regexp(t, `(?m)^relay_attack_exit_code 1$`, string(b))
	checkPromText(t, string(b))

	// A run that could not reach its target: no finding anywhere; JUnit
	// says <error>, not <failure>; the textfile -2 and exit code 3.
	srv.Close()
	junit, html, prom = files("down")
	out.Reset()
	require.Equal(t, ExitCouldNotRun, Main([]string{"--target", srv.URL, "--only", "ATK-CROSS-TENANT", "--timeout", "30s",
		"--junit", junit, "--report", html, "--prom-textfile", prom}, &out, &errOut))
	b, err = os.ReadFile(junit)
	require.NoError(t, err)
	var down junitSuites
	require.NoError(t, xml.Unmarshal(b, &down))
	require.Equal(t, 0, down.Suites[0].Failures)
	require.Equal(t, 1, down.Suites[0].Errors)
	require.Nil(t, down.Suites[0].Cases[0].Failure)
	require.NotNil(t, down.Suites[0].Cases[0].Error)
	require.Contains(t, down.Suites[0].Cases[0].Error.Message, "target unreachable")
	b, err = os.ReadFile(html)
	require.NoError(t, err)
	require.Contains(t, string(b), `<td class="COULD-NOT-RUN">COULD-NOT-RUN<br>`)
	require.Contains(t, string(b), `<td class="FAIL">FAIL</td><td class="n">0</td><td class="n">0</td><td class="n">0</td>`, "the summary counts no finding")
	require.NotContains(t, string(b), `<td class="FAIL">FAIL<br>`)
	require.Contains(t, string(b), "Exit code <b>3</b>")
	b, err = os.ReadFile(prom)
	require.NoError(t, err)
	require.Regexp(t, `(?m)^relay_attack_scenario_result\{scenario="ATK-CROSS-TENANT",threats="[^"]+"\} -2$`, string(b))
	require.Regexp(t, `(?m)^relay_attack_failed_scenarios 0$`, string(b))
	require.Regexp(t, `(?m)^relay_attack_could_not_run_scenarios 1$`, string(b))
	require.Regexp(t, `(?m)^relay_attack_exit_code 3$`, string(b))
	checkPromText(t, string(b))
}

// checkPromText checks the textfile grammar the collector needs: every
// sample's metric has HELP and TYPE lines before it, and no name repeats
// a TYPE.
func checkPromText(t *testing.T, text string) {
	t.Helper()
	typed := map[string]bool{}
	sample := regexp.MustCompile(`^([a-z_]+)(\{[^}]*\})? -?[0-9.]+$`)
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			require.False(t, typed[f[2]], "TYPE %s twice", f[2])
			typed[f[2]] = true
			continue
		}
		if strings.HasPrefix(line, "# HELP ") {
			continue
		}
		m := sample.FindStringSubmatch(line)
		require.NotNil(t, m, "not a sample line: %q", line)
		require.True(t, typed[m[1]], "%s has no TYPE line before its samples", m[1])
	}
}
