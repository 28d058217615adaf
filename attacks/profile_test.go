package attacks

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestProfile_BehindProxyLabelsEveryReport: under --profile behind-proxy
// every report says what it tested (relay, proxy or relay+proxy) and why,
// in the table (a TESTS column and a note per scenario) and in JSON; a
// direct run carries no label and keeps the table's columns. The
// catalog's notes are well formed. The runs through real proxies are in
// deploy/proxy_test.go.
func TestProfile_BehindProxyLabelsEveryReport(t *testing.T) {
	for _, sc := range Catalog() {
		n := sc.BehindProxy
		switch n.Tests {
		case "":
			require.Empty(t, n.Why, "%s: a reason without a label", sc.ID)
		case TestsRelay, TestsProxy, TestsBoth:
			require.NotEmpty(t, n.Why, "%s: labelled %s without a reason", sc.ID, n.Tests)
			require.Equal(t, RemoteSafe, sc.Mode, "%s: only remote-safe scenarios run through a proxy", sc.ID)
		default:
			require.Failf(t, "bad label", "%s: Tests %q", sc.ID, n.Tests)
		}
	}

	base, _ := url.Parse("https://relay.example.test")
	pass := func(context.Context, *Target) Result { return Passf("held") }
	scs := []Scenario{
		{ID: "ATK-A", Threats: []string{"TM-X"}, Mode: RemoteSafe, Run: pass},
		{ID: "ATK-B", Threats: []string{"TM-HOST-1"}, Mode: RemoteSafe, Run: pass, BehindProxy: ProxyNote{TestsProxy, "the proxy answers it"}},
	}
	run := func(p Profile) []Report {
		tgt := &Target{Base: base, Profile: p}
		var reps []Report
		for _, sc := range scs {
			reps = append(reps, RunOne(context.Background(), tgt, sc))
		}
		return reps
	}

	direct := run(Direct)
	var tbl bytes.Buffer
	require.NoError(t, RenderTable(&tbl, direct))
	require.True(t, strings.HasPrefix(tbl.String(), "ID"), tbl.String())
	require.Regexp(t, `^ID\s+THREATS\s+VERDICT\s+DURATION\s+EVIDENCE\n`, tbl.String())
	require.NotContains(t, tbl.String(), "TLS-terminating")
	var js bytes.Buffer
	require.NoError(t, RenderJSON(&js, direct, RunInfo{}))
	require.NotContains(t, js.String(), `"tests"`)

	proxied := run(BehindProxy)
	tbl.Reset()
	require.NoError(t, RenderTable(&tbl, proxied))
	require.Regexp(t, `^ID\s+THREATS\s+VERDICT\s+TESTS\s+DURATION\s+EVIDENCE\n`, tbl.String())
	require.Regexp(t, `(?m)^ATK-A\s+TM-X\s+PASS\s+relay\s`, tbl.String())
	require.Regexp(t, `(?m)^ATK-B\s+TM-HOST-1\s+PASS\s+proxy\s`, tbl.String())
	require.Contains(t, tbl.String(), "ATK-B (proxy): the proxy answers it")
	js.Reset()
	require.NoError(t, RenderJSON(&js, proxied, RunInfo{}))
	var got []jsonReport
	require.NoError(t, json.Unmarshal(js.Bytes(), &got))
	require.Equal(t, TestsRelay, got[0].Tests)
	require.NotEmpty(t, got[0].TestsWhy)
	require.Equal(t, TestsProxy, got[1].Tests)
	require.Equal(t, "the proxy answers it", got[1].TestsWhy)

	var page, junit bytes.Buffer
	info := RunInfo{Target: base.String()}
	require.NoError(t, RenderHTML(&page, proxied, info))
	require.Contains(t, page.String(), "[tests the proxy behind a TLS-terminating proxy: the proxy answers it] held")
	require.NoError(t, RenderJUnit(&junit, proxied, info))
	require.Contains(t, junit.String(), "tests the proxy behind a TLS-terminating proxy: the proxy answers it")

	for _, s := range []string{"", "direct", "behind-proxy"} {
		_, err := ParseProfile(s)
		require.NoError(t, err, s)
	}
	var out, errOut bytes.Buffer
	require.Equal(t, 2, Main([]string{"--target", "https://relay.example.test", "--profile", "nginx"}, &out, &errOut))
	require.Equal(t, "relay: --profile nginx is not a profile: use direct or behind-proxy\n", errOut.String())
}
