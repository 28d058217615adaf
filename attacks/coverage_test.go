package attacks

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// docThreat is one threat as written in docs/threat-model.md.
type docThreat struct {
	ID, Title, Severity string
	Status              Status
	Note                string   // Not executable / Not yet verified text
	VerifiedBy          []string // scenario IDs
	statusLines         int
}

var (
	anchorRE  = regexp.MustCompile(`^<a id="(TM-[A-Z]+-\d+)"></a>$`)
	headingRE = regexp.MustCompile(`^### (TM-[A-Z]+-\d+) (.+)$`)
	fieldRE   = regexp.MustCompile(`^- \*\*(Severity|Verified by|Not executable|Not yet verified):\*\* ?(.*)$`)
)

func parseThreatModel(t *testing.T) (threats []docThreat, text string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", "threat-model.md"))
	require.NoError(t, err)
	text = string(b)
	var cur *docThreat
	expectHeading := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " ")
		if m := anchorRE.FindStringSubmatch(line); m != nil {
			expectHeading = m[1]
			continue
		}
		if expectHeading != "" && line != "" {
			m := headingRE.FindStringSubmatch(line)
			require.NotNil(t, m, "anchor %s must be followed by its ### heading, got %q", expectHeading, line)
			require.Equal(t, expectHeading, m[1], "anchor and heading IDs differ")
			threats = append(threats, docThreat{ID: m[1], Title: m[2]})
			cur = &threats[len(threats)-1]
			expectHeading = ""
			continue
		}
		if strings.HasPrefix(line, "## ") || strings.HasPrefix(line, "### ") {
			require.False(t, strings.HasPrefix(line, "### TM-"), "threat heading without an anchor: %q", line)
			cur = nil
			continue
		}
		if cur == nil {
			continue
		}
		m := fieldRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		switch m[1] {
		case "Severity":
			cur.Severity = m[2]
		case "Verified by":
			cur.Status, cur.statusLines = Verified, cur.statusLines+1
			for _, id := range strings.Split(m[2], ",") {
				cur.VerifiedBy = append(cur.VerifiedBy, strings.TrimSpace(id))
			}
		case "Not executable":
			cur.Status, cur.Note, cur.statusLines = NotExecutable, m[2], cur.statusLines+1
		case "Not yet verified":
			cur.Status, cur.Note, cur.statusLines = Pending, m[2], cur.statusLines+1
		}
	}
	require.NotEmpty(t, threats, "no threats parsed")
	return threats, text
}

// TestThreatModelCoverage keeps docs/threat-model.md, Threats() (the index
// `relay attack --list` prints) and Catalog() in agreement.
func TestThreatModelCoverage(t *testing.T) {
	doc, text := parseThreatModel(t)

	byThreat := map[string][]string{}
	for _, sc := range Catalog() {
		for _, th := range sc.Threats {
			byThreat[th] = append(byThreat[th], sc.ID)
		}
	}
	docIDs := map[string]bool{}
	for _, d := range doc {
		require.False(t, docIDs[d.ID], "threat %s appears twice", d.ID)
		docIDs[d.ID] = true
		require.Equal(t, 1, d.statusLines, "%s: needs exactly one of Verified by / Not executable / Not yet verified", d.ID)
		require.Contains(t, []string{"low", "medium", "high"}, d.Severity, "%s: severity", d.ID)
		switch d.Status {
		case Verified:
			got := append([]string(nil), d.VerifiedBy...)
			want := append([]string(nil), byThreat[d.ID]...)
			sort.Strings(got)
			sort.Strings(want)
			for _, id := range got {
				require.NotContains(t, id, "planned", "%s: a planned scenario is not a verification", d.ID)
			}
			require.NotEmpty(t, want, "%s is marked verified but no scenario in Catalog() names it", d.ID)
			require.Equal(t, want, got, "%s: the doc's Verified by and the catalog disagree", d.ID)
		default:
			require.Empty(t, byThreat[d.ID], "%s is marked %q but scenarios name it: say Verified by", d.ID, d.Status)
			require.NotEmpty(t, d.Note, "%s: give the reason", d.ID)
		}
	}
	for th, scs := range byThreat {
		require.True(t, docIDs[th], "scenarios %v name %s, which docs/threat-model.md lacks (anchor #%s)", scs, th, th)
	}

	// The Go index (for `relay attack --list`) matches the doc.
	idx := Threats()
	require.Len(t, idx, len(doc), "Threats() and the doc list different threats")
	for i, d := range doc {
		require.Equal(t, d.ID, idx[i].ID, "threat order")
		require.Equal(t, d.Title, idx[i].Title, "%s title", d.ID)
		require.Equal(t, d.Status, idx[i].Status, "%s status", d.ID)
		if d.Status != Verified {
			require.Equal(t, d.Note, idx[i].Note, "%s reason", d.ID)
		}
	}

	// In-page links point at anchors that exist.
	for _, m := range regexp.MustCompile(`\(#(TM-[A-Z]+-\d+)\)`).FindAllStringSubmatch(text, -1) {
		require.True(t, docIDs[m[1]], "link to missing anchor #%s", m[1])
	}
	// The first paragraph scopes the doc and links to the protocol's security model.
	first := strings.SplitN(strings.SplitN(text, "\n\n", 3)[1], "\n\n", 2)[0]
	require.Contains(t, first, "deployed process")
	require.Contains(t, first, "protocol.md#security-model")
	for _, s := range []string{"## Triggers for re-review", "## Out of scope"} {
		require.Contains(t, text, s)
	}

	pending := []string{}
	for _, d := range doc {
		if d.Status == Pending {
			pending = append(pending, d.ID)
		}
	}
	t.Logf("threats not yet verified by a scenario: %v", pending)
}

// TestThreatModel_CitedFilesExist: every repository file the doc cites exists.
func TestThreatModel_CitedFilesExist(t *testing.T) {
	_, text := parseThreatModel(t)
	re := regexp.MustCompile(`\b((?:internal|cmd|attacks|docs)/[A-Za-z0-9_./-]*[A-Za-z0-9_])`)
	cited := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		cited[m[1]] = true
	}
	for _, m := range regexp.MustCompile(`\]\(([a-z_./-]+\.md)(?:#([^)]*))?\)`).FindAllStringSubmatch(text, -1) {
		cited["docs/"+m[1]] = true
		if m[2] == "" {
			continue
		}
		// The fragment is a heading there (GitHub's slug: lower case, spaces to '-').
		b, err := os.ReadFile(filepath.Join("..", "docs", m[1]))
		if err != nil {
			continue // reported as a missing file below
		}
		found := false
		for _, h := range regexp.MustCompile(`(?m)^#+ (.+)$`).FindAllStringSubmatch(string(b), -1) {
			slug := regexp.MustCompile(`[^a-z0-9 -]`).ReplaceAllString(strings.ToLower(strings.TrimSpace(h[1])), "")
			if strings.ReplaceAll(slug, " ", "-") == m[2] {
				found = true
			}
		}
		require.True(t, found, "docs/threat-model.md links to %s#%s, which has no such heading", m[1], m[2])
	}
	require.NotEmpty(t, cited)
	var missing []string
	for p := range cited {
		if _, err := os.Stat(filepath.Join("..", p)); err != nil {
			missing = append(missing, p)
		}
	}
	sort.Strings(missing)
	require.Empty(t, missing, "docs/threat-model.md cites files that do not exist")
}

// TestLogAllowlistMatchesSource keeps allowedLogKeys (data, because this
// package is a black box) equal to internal/logging's allowlist.
func TestLogAllowlistMatchesSource(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "internal", "logging", "keys.go"))
	require.NoError(t, err)
	src := map[string]bool{"time": true, "level": true, "msg": true}
	for _, m := range regexp.MustCompile(`(?m)^\s*Key\w+\s*=\s*"([a-z_]+)"`).FindAllStringSubmatch(string(b), -1) {
		src[m[1]] = true
	}
	require.Greater(t, len(src), 5, "parsed too few keys from internal/logging/keys.go")
	require.Equal(t, src, allowedLogKeys)
}
