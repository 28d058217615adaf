package deploy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// generated are series Prometheus itself makes for a target, and the
// labels it attaches to every scraped series.
var (
	generated      = map[string]bool{"up": true}
	targetLabels   = map[string]bool{"job": true, "instance": true}
	promqlKeywords = map[string]bool{"and": true, "or": true, "unless": true, "by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true, "bool": true, "offset": true, "inf": true, "nan": true}
	identRE        = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	selectorRE     = regexp.MustCompile(`([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}`)
	matcherRE      = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)`)
	groupingRE     = regexp.MustCompile(`\b(by|without|on|ignoring)\s*\(([^)]*)\)`)
	stringRE       = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	rangeRE        = regexp.MustCompile(`\[[^\]]*\]`)
	sampleLineRE   = regexp.MustCompile(`^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{([^}]*)\})?\s`)
	labelValuesRE  = regexp.MustCompile(`label_values\((.*),\s*\w+\)`)
	sampleLabelRE  = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)="`)
	// pendingExported: series another change is about to export, tolerated
	// while absent (empty: every named series is exported today).
	pendingExported = map[string]string{}
)

// exported returns every series name, with the label names seen on it,
// that an operator's Prometheus can scrape: a real standalone relay's
// /metrics (after one binary connected and left, so the per-connection
// series exist as they would in production), a real relay's in cluster
// mode on an embedded NATS, and the textfile `relay attack
// --prom-textfile` writes for node_exporter.
func exported(t *testing.T) map[string]map[string]bool {
	t.Helper()
	series := map[string]map[string]bool{}

	addrs := serveRelay(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addrs["public"]+"/v1/server", &websocket.DialOptions{HTTPHeader: http.Header{
		"X-Pyrycode-Server": {"deploy-test"}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"deploy-test"}}})
	require.NoError(t, err)
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
	body := scrapeUntil(t, addrs["metrics"], "relay_connection_closes_total{")
	parseExposition(series, body)
	require.Contains(t, series, "relay_build_info", "scrape parsed nothing useful:\n%s", body)

	ns, err := natstest.Start(t.TempDir(), 0)
	require.NoError(t, err)
	t.Cleanup(ns.Stop)
	caddrs := serveRelay(t, "--insecure-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--cluster-nats", ns.URL(), "--instance-id", "deploy-test")
	parseExposition(series, scrapeUntil(t, caddrs["metrics"], "relay_cluster_nats_connected 1"))

	prom := filepath.Join(t.TempDir(), "relay_attack.prom")
	out, err := exec.Command(relayBin, "attack", "--target", "http://"+addrs["public"], "--only", "ATK-OVERSIZE",
		"--timeout", "60s", "--prom-textfile", prom).CombinedOutput()
	require.NoError(t, err, "%s", out)
	b, err := os.ReadFile(prom)
	require.NoError(t, err)
	parseExposition(series, string(b))
	require.Contains(t, series, "relay_attack_last_run_timestamp_seconds")
	return series
}

// scrapeUntil polls http://addr/metrics until the body contains want.
func scrapeUntil(t *testing.T, addr, want string) string {
	t.Helper()
	var body string
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return resp.StatusCode == http.StatusOK && strings.Contains(body, want)
	}, 15*time.Second, 20*time.Millisecond, "/metrics on %s never showed %q", addr, want)
	return body
}

// parseExposition adds every series name of a Prometheus text exposition
// to series, with the label names seen on it.
func parseExposition(series map[string]map[string]bool, body string) {
	for _, line := range strings.Split(body, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			if series[f[2]] == nil {
				series[f[2]] = map[string]bool{}
			}
			continue
		}
		m := sampleLineRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if series[m[1]] == nil {
			series[m[1]] = map[string]bool{}
		}
		for _, l := range sampleLabelRE.FindAllStringSubmatch(m[2], -1) {
			series[m[1]][l[1]] = true
		}
	}
}

// seriesIn returns the metric names an expression selects, and per name the
// label names its matchers use; plus the grouping labels (by/without/on).
func seriesIn(expr string) (names map[string][]string, grouping []string) {
	names = map[string][]string{}
	e := stringRE.ReplaceAllString(expr, `""`)
	e = rangeRE.ReplaceAllString(e, "")
	for _, m := range selectorRE.FindAllStringSubmatch(e, -1) {
		for _, mm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
			names[m[1]] = append(names[m[1]], mm[1])
		}
	}
	for _, g := range groupingRE.FindAllStringSubmatch(e, -1) {
		grouping = append(grouping, identRE.FindAllString(g[2], -1)...)
	}
	e = groupingRE.ReplaceAllString(e, " ")
	e = regexp.MustCompile(`\{[^}]*\}`).ReplaceAllString(e, " ")
	for _, loc := range identRE.FindAllStringIndex(e, -1) {
		id := e[loc[0]:loc[1]]
		rest := strings.TrimLeft(e[loc[1]:], " ")
		if promqlKeywords[strings.ToLower(id)] || strings.HasPrefix(rest, "(") {
			continue // a keyword or a function call
		}
		if loc[0] > 0 && (e[loc[0]-1] == '$' || (e[loc[0]-1] >= '0' && e[loc[0]-1] <= '9')) {
			continue // a template variable or a number's suffix
		}
		if _, ok := names[id]; !ok {
			names[id] = nil
		}
	}
	return names, grouping
}

// dashboardExprs walks the dashboard JSON and returns every "expr" and
// every "query" of a query variable.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("grafana-dashboard.json")
	require.NoError(t, err)
	var v any
	require.NoError(t, json.Unmarshal(b, &v))
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				if s, ok := c.(string); ok && (k == "expr" || (k == "query" && strings.Contains(s, "("))) {
					// Grafana's label_values(series, label): only series is PromQL.
					out = append(out, labelValuesRE.ReplaceAllString(s, "$1"))
				}
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	walk(v)
	return out
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// TestDashboardAndRules_NameExportedSeries scrapes the real relay's
// /metrics and fails if deploy/grafana-dashboard.json or
// deploy/prometheus-rules.yml names a series (or a label of one) the relay
// does not export, and checks the rules cover what an operator must be
// woken for.
func TestDashboardAndRules_NameExportedSeries(t *testing.T) {
	series := exported(t)

	b, err := os.ReadFile("prometheus-rules.yml")
	require.NoError(t, err)
	var rf ruleFile
	require.NoError(t, yaml.Unmarshal(b, &rf))
	exprs := map[string]string{}
	alerts := map[string]string{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			require.NotEmpty(t, r.Alert, "a rule without an alert name")
			require.NotEmpty(t, r.Expr, r.Alert)
			require.Contains(t, []string{"warning", "critical"}, r.Labels["severity"], r.Alert)
			require.NotEmpty(t, r.Annotations["summary"], r.Alert)
			exprs["rule "+r.Alert] = r.Expr
			alerts[r.Alert] = r.Expr
		}
	}
	for alert, mustUse := range map[string]string{
		"RelayDown": "up", "RelayPanics": "relay_panics_total", "RelayRejectionsClimbing": "relay_requests_rejected_total",
		"RelayQueuedBytesNearCeiling": "relay_queued_bytes_limit", "RelayCertificateExpiringSoon": "relay_tls_cert_not_after_seconds",
		"RelayACMEErrors": "relay_acme_errors_total", "RelayClusterNATSDisconnected": "relay_cluster_nats_connected",
		"RelayClusterLeaseRefreshErrors": "relay_cluster_lease_refresh_errors_total", "RelayClusterLinksLost": "relay_cluster_links_lost_total",
		"RelayClusterClaimsLost": "relay_cluster_claims_total", "RelayPushFailing": "relay_push_wakes_total", "RelayPushDropped": "relay_push_wakes_total",
		"RelayAttackFinding": "relay_attack_scenario_result", "RelayAttackCouldNotRun": "relay_attack_could_not_run_scenarios",
		"RelayAttackStale": "relay_attack_last_run_timestamp_seconds", "RelayAttackMissing": "relay_attack_last_run_timestamp_seconds",
	} {
		require.Contains(t, alerts, alert)
		names, _ := seriesIn(alerts[alert])
		require.Contains(t, names, mustUse, "%s must use %s", alert, mustUse)
	}
	require.Contains(t, alerts["RelayAttackMissing"], "absent(", "a file never written has no series to compare: only absent() fires")
	dash := dashboardExprs(t)
	require.GreaterOrEqual(t, len(dash), 10, "too few dashboard queries found")
	for i, e := range dash {
		exprs["dashboard query "+string(rune('A'+i%26))+" "+e] = e
	}

	used := map[string]bool{}
	var missing []string
	for where, expr := range exprs {
		names, grouping := seriesIn(expr)
		require.NotEmpty(t, names, "%s: no series found in %q", where, expr)
		labelsHere := map[string]bool{}
		for name, matchers := range names {
			used[name] = true
			if generated[name] {
				continue
			}
			labels, ok := series[name]
			if !ok {
				if by, pending := pendingExported[name]; pending {
					t.Logf("%s: %s is not exported yet (%s)", where, name, by)
					continue
				}
				missing = append(missing, name+" in "+where)
				continue
			}
			for l := range labels {
				labelsHere[l] = true
			}
			for _, l := range matchers {
				if !targetLabels[l] && len(labels) > 0 {
					require.Truef(t, labels[l], "%s: %s has no label %q (it has %v)", where, name, l, labels)
				}
			}
		}
		for _, l := range grouping {
			if !targetLabels[l] && len(labelsHere) > 0 {
				require.Truef(t, labelsHere[l], "%s: groups by %q, which no series in it has", where, l)
			}
		}
	}
	sort.Strings(missing)
	require.Empty(t, missing, "the dashboard or the rules name series the relay does not export")
	for name, by := range pendingExported {
		if _, ok := series[name]; ok {
			t.Logf("%s is exported now: remove it from pendingExported (was waiting for %s)", name, by)
		}
	}
	t.Logf("%d expressions, %d series checked against %d exported", len(exprs), len(used), len(series))
}

// rules reads prometheus-rules.yml: alert name -> expression.
func rules(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("prometheus-rules.yml")
	require.NoError(t, err)
	var rf ruleFile
	require.NoError(t, yaml.Unmarshal(b, &rf))
	alerts := map[string]string{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			require.NotContains(t, alerts, r.Alert, "alert %s defined twice", r.Alert)
			alerts[r.Alert] = r.Expr
		}
	}
	return alerts
}

// TestDashboard_PanelForEveryAlert: for every alert in
// prometheus-rules.yml, grafana-dashboard.json has a panel whose queries
// name every series the alert's expression uses, so whoever is woken by an
// alert finds its history on the dashboard. Panels do not overlap.
func TestDashboard_PanelForEveryAlert(t *testing.T) {
	b, err := os.ReadFile("grafana-dashboard.json")
	require.NoError(t, err)
	var d struct {
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			GridPos struct {
				X, Y, W, H int
			} `json:"gridPos"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(b, &d))
	panelSeries := make([]map[string]bool, len(d.Panels))
	ids := map[int]bool{}
	cells := map[[2]int]string{}
	for i, p := range d.Panels {
		require.False(t, ids[p.ID], "panel id %d used twice", p.ID)
		ids[p.ID] = true
		for x := p.GridPos.X; x < p.GridPos.X+p.GridPos.W; x++ {
			for y := p.GridPos.Y; y < p.GridPos.Y+p.GridPos.H; y++ {
				require.Empty(t, cells[[2]int{x, y}], "panels %q and %q overlap", cells[[2]int{x, y}], p.Title)
				cells[[2]int{x, y}] = p.Title
			}
		}
		panelSeries[i] = map[string]bool{}
		for _, tg := range p.Targets {
			names, _ := seriesIn(tg.Expr)
			for n := range names {
				panelSeries[i][n] = true
			}
		}
	}
	for alert, expr := range rules(t) {
		names, _ := seriesIn(expr)
		require.NotEmpty(t, names, alert)
		found := ""
		for i, ps := range panelSeries {
			all := true
			for n := range names {
				all = all && ps[n]
			}
			if all {
				found = d.Panels[i].Title
				break
			}
		}
		require.NotEmpty(t, found, "no dashboard panel shows every series of %s (%s)", alert, expr)
		t.Logf("%s: panel %q", alert, found)
	}
}
