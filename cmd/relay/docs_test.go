package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// flagLine matches a flag in -h output: "  --name TYPE", as relay serve
// and relay attack print them (one dash also matches, the flag package's
// own format).
var flagLine = regexp.MustCompile(`(?m)^  --?([a-z0-9][a-z0-9-]*)`)

// Every flag `relay serve -h` and `relay attack -h` print is named in
// docs/deploy.md as --name (not as a prefix of a longer flag), so an
// operator reading the guide meets every knob.
func TestDocs_NameEveryFlag(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "deploy.md"))
	require.NoError(t, err)
	for _, cmd := range []string{"serve", "attack"} {
		r := runRelay(t, relayEnv(t), cmd, "-h")
		require.Equal(t, 0, r.code, r.stderr)
		flags := flagLine.FindAllStringSubmatch(r.stdout, -1)
		require.NotEmpty(t, flags, "no flags parsed from relay %s -h:\n%s", cmd, r.stdout)
		var missing []string
		for _, f := range flags {
			named := regexp.MustCompile(`(^|[^a-z0-9-])--` + regexp.QuoteMeta(f[1]) + `($|[^a-z0-9-])`)
			if !named.Match(doc) {
				missing = append(missing, "--"+f[1])
			}
		}
		if len(missing) > 0 {
			t.Errorf("docs/deploy.md does not name %d flag(s) that `relay %s -h` prints: %s\n"+
				"Add each, as `--name`, where an operator would look for it (a section of docs/deploy.md and its row in §8 Flag reference).",
				len(missing), cmd, strings.Join(missing, ", "))
		}
	}
}
