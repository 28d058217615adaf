package attacks

import (
	"bufio"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
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
	Defence             string   // the **Defence:** line's text
	Mutants             []string // the **Mutants:** line's mutant names
	statusLines         int
}

var (
	anchorRE  = regexp.MustCompile(`^<a id="(TM-[A-Z]+-\d+)"></a>$`)
	headingRE = regexp.MustCompile(`^### (TM-[A-Z]+-\d+) (.+)$`)
	fieldRE   = regexp.MustCompile(`^- \*\*(Severity|Verified by|Not executable|Not yet verified|Defence|Mutants):\*\* ?(.*)$`)
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
		case "Defence":
			cur.Defence = m[2]
		case "Mutants":
			for _, n := range strings.Split(m[2], ",") {
				cur.Mutants = append(cur.Mutants, strings.Trim(strings.TrimSpace(n), "`"))
			}
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

// defenceRefRE is one `file` `symbol` pair of a **Defence:** line.
var defenceRefRE = regexp.MustCompile("`([A-Za-z0-9_./-]+\\.go)` `([A-Za-z_][A-Za-z0-9_]*(?:\\.[A-Za-z_][A-Za-z0-9_]*)?)`")

// declaredSymbols lists what a Go file declares at top level: functions
// and types by name, methods as Type.Method, vars and consts by name.
func declaredSymbols(path string) (map[string]bool, error) {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil || len(d.Recv.List) == 0 {
				out[d.Name.Name] = true
				continue
			}
			rt := d.Recv.List[0].Type
			if s, ok := rt.(*ast.StarExpr); ok {
				rt = s.X
			}
			if ix, ok := rt.(*ast.IndexExpr); ok { // generic receiver T[K]
				rt = ix.X
			}
			if id, ok := rt.(*ast.Ident); ok {
				out[id.Name+"."+d.Name.Name] = true
			}
		case *ast.GenDecl:
			for _, sp := range d.Specs {
				switch sp := sp.(type) {
				case *ast.TypeSpec:
					out[sp.Name.Name] = true
				case *ast.ValueSpec:
					for _, n := range sp.Names {
						out[n.Name] = true
					}
				}
			}
		}
	}
	return out, nil
}

// TestThreatModel_DefenceNamesCode: every verified threat names the code
// that enforces it, one hop from the threat: a **Defence:** line of
// `file` `symbol` pairs, each symbol declared in that file. A flag is not a
// defence; the function, method or type that enforces it is.
func TestThreatModel_DefenceNamesCode(t *testing.T) {
	doc, _ := parseThreatModel(t)
	verified := 0
	for _, d := range doc {
		if d.Status != Verified {
			require.Empty(t, Defences()[d.ID], "%s is not verified: drop it from Defences() in attacks/defences.go", d.ID)
			continue
		}
		verified++
		require.Equal(t, d.Defence, Defences()[d.ID], "%s: Defences() in attacks/defences.go (what `relay attack --report` shows) must hold the threat's Defence line as written in docs/threat-model.md", d.ID)
		refs := defenceRefRE.FindAllStringSubmatch(d.Defence, -1)
		require.NotEmpty(t, refs, "%s is verified but has no Defence line naming the code that enforces it.\n"+
			"Add, on one line just above its **Verified by:** line in docs/threat-model.md:\n"+
			"  - **Defence:** `internal/PKG/FILE.go` `Func` (or `Type.Method`); more pairs separated by '; '", d.ID)
		for _, r := range refs {
			file, sym := r[1], r[2]
			require.False(t, strings.HasPrefix(file, "attacks/") || strings.HasSuffix(file, "_test.go"),
				"%s: Defence names %s, a test; name the relay code that enforces the defence", d.ID, file)
			syms, err := declaredSymbols(filepath.Join("..", file))
			require.NoError(t, err, "%s: Defence names %s, which does not parse or exist (moved? update the Defence line)", d.ID, file)
			require.True(t, syms[sym], "%s: Defence names `%s` in %s, which declares no such function, method (Type.Method), type, var or const (renamed or moved? update the Defence line)", d.ID, sym, file)
		}
	}
	require.Len(t, Defences(), verified, "Defences() in attacks/defences.go names a threat docs/threat-model.md lacks")
}

// TestScenarioFiles_NamedAfterIDs: a reader finds a scenario's code from
// its ID without searching, and each scenario file hosts the ID it is
// named after.
func TestScenarioFiles_NamedAfterIDs(t *testing.T) {
	want := map[string]bool{}
	for _, sc := range Catalog() {
		f := scenarioFile(sc.ID)
		want[f] = true
		b, err := os.ReadFile(f)
		require.NoError(t, err, "%s must live in attacks/%s (the ID in lower case, hyphens dropped)", sc.ID, f)
		require.Contains(t, string(b), `"`+sc.ID+`"`, "attacks/%s must declare %s", f, sc.ID)
	}
	files, err := filepath.Glob("scenario_*.go")
	require.NoError(t, err)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		require.True(t, want[f], "attacks/%s is named like a scenario file but hosts no scenario of Catalog(); rename it for what it holds", f)
	}
}

// TestMutants_EveryVerifiedThreat: attacks/mutants/ (format in its
// README.md) holds at least one mutant per verified threat, each naming
// real threats and real checks, and the threat model lists, per verified
// threat, exactly the mutants that prove its scenarios (**Mutants:**).
// That the mutants are caught is `make mutate`'s job.
func TestMutants_EveryVerifiedThreat(t *testing.T) {
	t.Parallel()
	doc, _ := parseThreatModel(t)
	mutants, err := LoadMutants("mutants")
	require.NoError(t, err)
	scenarios := map[string]Scenario{}
	for _, sc := range Catalog() {
		scenarios[sc.ID] = sc
	}
	status := map[string]Status{}
	for _, d := range doc {
		status[d.ID] = d.Status
	}
	byThreat := map[string][]string{}
	for _, m := range mutants {
		for _, th := range m.Threats {
			st, ok := status[th]
			require.True(t, ok, "mutant %s: Threat %s is not in docs/threat-model.md", m.Name, th)
			require.Equal(t, Verified, st, "mutant %s: Threat %s is not verified; mutants prove verified threats' scenarios", m.Name, th)
			byThreat[th] = append(byThreat[th], m.Name)
		}
		for _, c := range m.CaughtBy {
			if IsWhiteBox(c) {
				dir, name, _ := strings.Cut(c, ":")
				found := false
				tests, _ := filepath.Glob(filepath.Join("..", dir, "*_test.go"))
				for _, f := range tests {
					if syms, err := declaredSymbols(f); err == nil && syms[name] {
						found = true
					}
				}
				require.True(t, found, "mutant %s: Caught-by %s: no %s in %s/*_test.go", m.Name, c, name, dir)
				continue
			}
			sc, ok := scenarios[c]
			require.True(t, ok, "mutant %s: Caught-by %s is not a scenario in Catalog()", m.Name, c)
			overlap := false
			for _, th := range sc.Threats {
				for _, mt := range m.Threats {
					overlap = overlap || th == mt
				}
			}
			require.True(t, overlap, "mutant %s: %s verifies %v, none of the mutant's threats %v", m.Name, c, sc.Threats, m.Threats)
		}
		for _, f := range m.Files {
			_, err := os.Stat(filepath.Join("..", f))
			require.NoError(t, err, "mutant %s patches %s, which does not exist (moved? regenerate the diff)", m.Name, f)
		}
	}
	for _, d := range doc {
		if d.Status != Verified {
			continue
		}
		have := byThreat[d.ID]
		require.NotEmpty(t, have, "%s is verified but no mutant in attacks/mutants/ weakens its defence.\n"+
			"Add attacks/mutants/<name>.patch (format: attacks/mutants/README.md): a header\n"+
			"  Threat: %s\n  Caught-by: %s\n  Weakens: <one line: what the diff does to the defence>\n"+
			"a blank line, then `git diff` of the weakened defence (%s); check that `make mutate MUTANTS=<name>` catches it,\n"+
			"and list it on the threat's **Mutants:** line in docs/threat-model.md.", d.ID, d.ID, strings.Join(d.VerifiedBy, ", "), d.Defence)
		got := append([]string(nil), d.Mutants...)
		sort.Strings(got)
		sort.Strings(have)
		require.Equal(t, have, got, "%s: the **Mutants:** line in docs/threat-model.md must list exactly the mutants whose Threat names it", d.ID)
	}
}

// TestMutants_StillApply: every mutant still applies to the tree, so a
// refactor of a defence's code cannot quietly retire the mutant that
// proves its scenario (`make mutate` then checks they are caught).
func TestMutants_StillApply(t *testing.T) {
	t.Parallel()
	git, err := exec.LookPath("git")
	if err != nil {
		t.Skip("git not installed")
	}
	mutants, err := LoadMutants("mutants")
	require.NoError(t, err)
	for _, m := range mutants {
		cmd := exec.Command(git, "apply", "--check", "-")
		cmd.Dir = ".."
		cmd.Stdin = strings.NewReader(m.Patch)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "attacks/mutants/%s.patch no longer applies to %v: %s\n"+
			"The defence's code changed: weaken it again the same way (%s), take `git diff` and replace the diff below the header\n"+
			"(attacks/mutants/README.md), then check `make mutate MUTANTS=%s` still catches it.", m.Name, m.Files, out, m.Weakens, m.Name)
	}
}

// messageCiteRE is a citation of relay code in a scenario's message:
// "(SYMBOL in internal/PKG/FILE.go, ...)", or a bare "(SYMBOL)" /
// "(SYMBOL, ...)" where SYMBOL looks like code (camelCase, or
// Type.method).
var messageCiteRE = regexp.MustCompile(`\(([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)(?: in ((?:internal|cmd)/[A-Za-z0-9_/]+\.go))?[,)]`)

// TestScenarioMessages_CitedCodeExists: the code a scenario's failure
// message points a reader at exists. Every citation names its file
// ("msgReader.read in internal/relay/conn.go") and the file declares the
// symbol, so a move or rename fails here instead of sending an operator
// to a function that is gone.
func TestScenarioMessages_CitedCodeExists(t *testing.T) {
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	looksLikeCode := regexp.MustCompile(`^[a-z][a-z0-9]*[A-Z]|^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_]`)
	checked := 0
	var bad []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.SkipObjectResolution)
		require.NoError(t, err)
		ast.Inspect(af, func(n ast.Node) bool {
			bl, ok := n.(*ast.BasicLit)
			if !ok || bl.Kind != token.STRING {
				return true
			}
			lit, err := strconv.Unquote(bl.Value)
			if err != nil {
				return true
			}
			for _, m := range messageCiteRE.FindAllStringSubmatch(lit, -1) {
				sym, file := m[1], m[2]
				if file == "" {
					if looksLikeCode.MatchString(sym) {
						bad = append(bad, fmt.Sprintf("%s: message cites (%s) without its file; write (%s in internal/PKG/FILE.go)", f, sym, sym))
					}
					continue
				}
				checked++
				syms, err := declaredSymbols(filepath.Join("..", file))
				if err != nil {
					bad = append(bad, fmt.Sprintf("%s: message cites %s, which does not exist (moved?)", f, file))
				} else if !syms[sym] {
					bad = append(bad, fmt.Sprintf("%s: message cites %s in %s, which declares no such symbol (renamed or moved?)", f, sym, file))
				}
			}
			return true
		})
	}
	require.Empty(t, bad)
	require.GreaterOrEqual(t, checked, 7, "found too few citations: is messageCiteRE still matching the messages?")
}
