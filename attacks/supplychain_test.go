package attacks

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestThreatModel_SupplyChainTableMatchesBuild: TM-SUP-1's table names every
// module in go.mod, and its "in the binary" column is exactly what the built
// binary links (go version -m), so a new dependency cannot slip in unreviewed.
func TestThreatModel_SupplyChainTableMatchesBuild(t *testing.T) {
	_, text := parseThreatModel(t)
	inTable := map[string]bool{} // module -> in the binary
	row := regexp.MustCompile(`(?m)^\s*\| ([^|]+) \| [^|]+ \| (yes|no) \|`)
	for _, m := range row.FindAllStringSubmatch(text, -1) {
		for _, mod := range strings.Split(m[1], ",") {
			inTable[strings.TrimSpace(mod)] = m[2] == "yes"
		}
	}
	require.NotEmpty(t, inTable, "no supply-chain table found in docs/threat-model.md")

	gomod, err := os.ReadFile(filepath.Join("..", "go.mod"))
	require.NoError(t, err)
	var missing []string
	for _, m := range regexp.MustCompile(`(?m)^\s+([a-z0-9.\-]+\.[a-z]+/\S+) v\S+`).FindAllStringSubmatch(string(gomod), -1) {
		if _, ok := inTable[m[1]]; !ok {
			missing = append(missing, m[1])
		}
	}
	sort.Strings(missing)
	require.Empty(t, missing, "modules in go.mod missing from the TM-SUP-1 table")

	require.NoError(t, buildErr)
	if os.Getenv("RELAY_ATTACK_BINARY") != "" {
		t.Skip("RELAY_ATTACK_BINARY is not this tree's build")
	}
	out, err := exec.Command("go", "version", "-m", builtBinary).CombinedOutput()
	require.NoError(t, err, string(out))
	linked := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+dep\s+(\S+)\s`).FindAllStringSubmatch(string(out), -1) {
		linked[m[1]] = true
	}
	require.NotEmpty(t, linked)
	for mod, yes := range inTable {
		require.Equalf(t, linked[mod], yes, "TM-SUP-1 says %s in the binary = %v; go version -m says %v", mod, yes, linked[mod])
	}
	for mod := range linked {
		_, ok := inTable[mod]
		require.Truef(t, ok, "the binary links %s, which the TM-SUP-1 table does not list", mod)
	}
}

// TestDocs_CitedTestsExist: every test a doc names in backticks exists.
func TestDocs_CitedTestsExist(t *testing.T) {
	defined := map[string]bool{}
	require.NoError(t, filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return err
		}
		b, err := os.ReadFile(path)
		for _, m := range regexp.MustCompile(`(?m)^func (Test\w+)\(`).FindAllStringSubmatch(string(b), -1) {
			defined[m[1]] = true
		}
		return err
	}))
	docs, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	require.NoError(t, err)
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		require.NoError(t, err)
		for _, m := range regexp.MustCompile("`(Test[A-Z]\\w+)`").FindAllStringSubmatch(string(b), -1) {
			require.Truef(t, defined[m[1]], "%s cites %s, which no test file defines", filepath.Base(doc), m[1])
		}
	}
}
