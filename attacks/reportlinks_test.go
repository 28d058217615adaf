package attacks

import (
	"bytes"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/html"
)

// everyVerdict is a report per scenario of the catalog, without running
// any, cycling through the verdicts so that every part of the page shows.
func everyVerdict() []Report {
	vs := []Verdict{Pass, Fail, Skip, CouldNotRun}
	var reps []Report
	for i, sc := range Catalog() {
		reps = append(reps, Report{Scenario: sc, Result: Result{vs[i%len(vs)], "evidence of " + sc.ID}, Duration: time.Second})
	}
	return reps
}

// pageLinks parses an HTML page with golang.org/x/net/html and returns its
// element ids, its link targets, and its text outside <code>.
func pageLinks(t *testing.T, page []byte) (ids map[string]bool, hrefs []string, text string) {
	t.Helper()
	doc, err := html.Parse(bytes.NewReader(page))
	require.NoError(t, err)
	ids = map[string]bool{}
	var tb strings.Builder
	var walk func(n *html.Node, inCode bool)
	walk = func(n *html.Node, inCode bool) {
		if n.Type == html.ElementNode {
			inCode = inCode || n.Data == "code" || n.Data == "style"
			for _, a := range n.Attr {
				switch a.Key {
				case "id":
					require.False(t, ids[a.Val], "id %q twice", a.Val)
					ids[a.Val] = true
				case "href":
					hrefs = append(hrefs, a.Val)
				case "src":
					t.Errorf("the page loads %q: it must be self-contained", a.Val)
				}
			}
			require.NotEqual(t, "script", n.Data, "the page must have no scripts")
		}
		if n.Type == html.TextNode && !inCode {
			tb.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c, inCode)
		}
	}
	walk(doc, false)
	return ids, hrefs, tb.String()
}

// mdHeadingSlugs lists the fragments GitHub gives a Markdown file's
// headings, plus its explicit <a id> anchors.
func mdHeadingSlugs(t *testing.T, file string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	out := map[string]bool{}
	for _, h := range regexp.MustCompile(`(?m)^#+ (.+)$`).FindAllStringSubmatch(string(b), -1) {
		slug := regexp.MustCompile(`[^a-z0-9 -]`).ReplaceAllString(strings.ToLower(strings.TrimSpace(h[1])), "")
		out[strings.ReplaceAll(slug, " ", "-")] = true
	}
	for _, m := range regexp.MustCompile(`(?m)^<a id="([^"]+)"></a>$`).FindAllStringSubmatch(string(b), -1) {
		out[m[1]] = true
	}
	return out
}

// checkReportLinks: every link of the page resolves. An in-page link
// (#ID) names an element of the page, and a threat's is an anchor of
// docs/threat-model.md too; a link under base names a file of the
// repository (resolved from the report's directory when base is
// relative), and its fragment an anchor or heading there. Every threat
// and the source of every scenario in ran is linked, and no Markdown
// backtick is left in the text.
func checkReportLinks(t *testing.T, page []byte, base, reportDir string, ran []string) {
	t.Helper()
	doc, _ := parseThreatModel(t)
	anchors := map[string]bool{}
	for _, d := range doc {
		anchors[d.ID] = true
	}
	ids, hrefs, text := pageLinks(t, page)
	repo, err := filepath.Abs("..")
	require.NoError(t, err)
	linked := map[string]bool{}
	for _, h := range hrefs {
		linked[h] = true
		if id, ok := strings.CutPrefix(h, "#"); ok {
			require.True(t, ids[id], "link %s: no such element in the page", h)
			if strings.HasPrefix(id, "TM-") {
				require.True(t, anchors[id], "link %s: docs/threat-model.md has no anchor %s", h, id)
			}
			continue
		}
		ref, ok := strings.CutPrefix(h, base)
		require.True(t, ok, "link %q is neither in the page nor under the source base %q", h, base)
		p, frag, _ := strings.Cut(ref, "#")
		file := filepath.Join(repo, filepath.FromSlash(path.Clean(p)))
		if !strings.Contains(base, "://") { // relative: from the report's directory
			file = filepath.Join(reportDir, filepath.FromSlash(base), filepath.FromSlash(path.Clean(p)))
			rel, err := filepath.Rel(repo, file)
			require.NoError(t, err)
			require.False(t, strings.HasPrefix(rel, ".."), "link %s leaves the checkout", h)
		}
		_, err := os.Stat(file)
		require.NoError(t, err, "link %s: no such file in the repository", h)
		if frag != "" {
			if p == threatModelPath {
				require.True(t, anchors[frag], "link %s: docs/threat-model.md has no anchor %s", h, frag)
			} else {
				require.True(t, mdHeadingSlugs(t, file)[frag], "link %s: %s has no heading or anchor %s", h, p, frag)
			}
		}
	}
	for _, th := range Threats() {
		require.True(t, linked["#"+th.ID], "%s is not linked to its entry", th.ID)
		require.True(t, linked[base+threatRef(th.ID)], "%s's entry in docs/threat-model.md is not linked", th.ID)
	}
	for _, id := range ran {
		require.True(t, linked[base+scenarioSource(id)], "%s's source is not linked", id)
	}
	require.NotContains(t, text, "`", "Markdown code spans must render as <code>, not as backticks")
}

// TestHTMLReport_LinksResolve renders the report of every scenario (one of
// each verdict in turn) under a published base and under a checkout's
// relative one, and checks every link (checkReportLinks) and the summary.
func TestHTMLReport_LinksResolve(t *testing.T) {
	t.Parallel()
	reps := everyVerdict()
	info := RunInfo{Target: "https://relay.example.test", Started: time.Now(), ExitCode: ExitCode(reps)}

	for _, tc := range []struct {
		name, base, dir string
	}{
		{"published", "https://example.test/relay/blob/0123456789abcdef0123456789abcdef01234567/", ""},
		{"checkout root", reportBase("", filepath.Join("..", "report.html")), ".."},
		{"checkout subdirectory", reportBase("", filepath.Join("testdata", "out", "report.html")), filepath.Join("testdata", "out")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info := info
			info.SourceBase = tc.base
			var page bytes.Buffer
			require.NoError(t, RenderHTML(&page, reps, info))
			dir, err := filepath.Abs(tc.dir)
			require.NoError(t, err)
			var ids []string
			for _, sc := range Catalog() {
				ids = append(ids, sc.ID)
			}
			checkReportLinks(t, page.Bytes(), tc.base, dir, ids)
		})
	}
	require.Equal(t, "./", reportBase("", filepath.Join("..", "report.html")))
	require.Equal(t, "../../../", reportBase("", filepath.Join("testdata", "out", "report.html")))
	require.Equal(t, "https://m.example/r/", reportBase("https://m.example/r", "x.html"), "--source-base wins, one slash added")

	// The summary opens the page: counts by verdict and mode, then the
	// findings, then what could not run, before the per-threat table.
	var page bytes.Buffer
	require.NoError(t, RenderHTML(&page, reps, info))
	s := page.String()
	n := tally(reps)
	for _, v := range []Verdict{Pass, Fail, Skip, CouldNotRun} {
		var remote, local int
		for _, r := range reps {
			if r.Result.Verdict == v {
				if r.Scenario.Mode == LocalOnly {
					local++
				} else {
					remote++
				}
			}
		}
		require.Contains(t, s, `<tr><td class="`+v.String()+`">`+v.String()+`</td><td class="n">`+itoa(remote)+`</td><td class="n">`+itoa(local)+`</td><td class="n">`+itoa(n[v])+`</td></tr>`)
	}
	summary, findings, notRun, table := strings.Index(s, `id="summary"`), strings.Index(s, `id="findings"`), strings.Index(s, `id="could-not-run"`), strings.Index(s, `id="threats"`)
	require.True(t, summary >= 0 && summary < findings && findings < notRun && notRun < table, "order: summary, findings, could not run, table")
	firstFail := ""
	for _, r := range reps {
		if r.Result.Verdict == Fail {
			firstFail = r.Scenario.ID
			break
		}
	}
	require.Less(t, strings.Index(s, "evidence of "+firstFail), table, "a finding is listed before the table")
	// In the table, a threat with a failing scenario comes first.
	firstRow := regexp.MustCompile(`<td rowspan="\d+"><a href="#(TM-[A-Z]+-\d+)">`).FindStringSubmatch(s[table:])
	require.NotNil(t, firstRow)
	failing := map[string]bool{}
	for _, r := range reps {
		if r.Result.Verdict == Fail {
			for _, th := range r.Scenario.Threats {
				failing[th] = true
			}
		}
	}
	require.True(t, failing[firstRow[1]], "the table opens with %s, which has no failing scenario", firstRow[1])
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestReportBase_Published: outside a checkout, links go to the repository
// at the build's revision, or its main branch when the revision is not a
// commit.
func TestReportBase_Published(t *testing.T) {
	dir := t.TempDir()
	defer func(r string) { SourceRevision = r }(SourceRevision)
	SourceRevision = "0123456789abcdef0123456789abcdef01234567"
	require.Equal(t, repoURL+"/blob/"+SourceRevision+"/", reportBase("", filepath.Join(dir, "r.html")))
	for _, rev := range []string{"", "unknown", "0123456789abcdef0123456789abcdef01234567+dirty"} {
		SourceRevision = rev
		require.Equal(t, repoURL+"/blob/main/", reportBase("", filepath.Join(dir, "r.html")), rev)
	}
}
