package attacks

import (
	"bufio"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// Where the reports' references point. Every threat and scenario a report
// names has a stable place in the repository: the threat's entry in
// docs/threat-model.md (its anchor, `<a id="TM-DOS-1">`) and the
// scenario's file, named after its ID. JSON carries those paths as they
// are; the HTML report links them from a base:
//
//   - --source-base URL when given (a mirror, a tag on a code browser);
//   - else, for a report written inside a checkout of this repository, the
//     checkout itself, relative from the report's directory (works offline
//     and moves with the checkout);
//   - else the repository at the revision the binary was built from
//     (SourceRevision), so an operator reads the scenario and the threat
//     model exactly as built.
//
// The threat model itself also travels inside the binary (package docs):
// the HTML report embeds each threat's entry and links a threat ID to it
// in the page, so that link works with no network and no checkout.

// modulePath is this repository's module, and repoURL where it is published.
const (
	modulePath = "github.com/pyrycode/relay"
	repoURL    = "https://" + modulePath
)

// threatModelPath is the threat model, relative to the repository root.
const threatModelPath = "docs/threat-model.md"

// SourceRevision is the VCS revision the running binary was built from.
// cmd/relay sets it before Main from internal/buildinfo, which this
// package may not import. When it is not a full commit hash (unknown, a
// dirty tree) links point at the main branch.
var SourceRevision string

// threatRef is the repository path and fragment of threat id's entry.
func threatRef(id string) string { return threatModelPath + "#" + id }

// scenarioFile is the file that hosts a scenario: ATK-PER-IP-FLOOD is in
// attacks/scenario_peripflood.go (lower case, hyphens dropped).
func scenarioFile(id string) string {
	return "scenario_" + strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(id, "ATK-"), "-", "")) + ".go"
}

// scenarioSource is the repository path of a scenario's file.
func scenarioSource(id string) string { return "attacks/" + scenarioFile(id) }

var commitRE = regexp.MustCompile(`^[0-9a-f]{40}$`)

// publishedBase is the repository's file browser at SourceRevision.
func publishedBase() string {
	rev := "main"
	if commitRE.MatchString(SourceRevision) {
		rev = SourceRevision
	}
	return repoURL + "/blob/" + rev + "/"
}

// normBase makes a --source-base value end in exactly one slash.
func normBase(b string) string {
	if b == "" {
		return ""
	}
	return strings.TrimRight(b, "/") + "/"
}

// reportBase is the base the HTML report written to reportPath links
// repository files from (see the top of this file); flag is --source-base.
func reportBase(flag, reportPath string) string {
	if flag != "" {
		return normBase(flag)
	}
	if reportPath != "" {
		dir, err := filepath.Abs(filepath.Dir(reportPath))
		if err == nil {
			if root, ok := checkoutRoot(dir); ok {
				if rel, err := filepath.Rel(dir, root); err == nil {
					return normBase(filepath.ToSlash(rel))
				}
			}
		}
	}
	return publishedBase()
}

// checkoutRoot walks up from dir to the directory whose go.mod declares
// this module and which holds the threat model.
func checkoutRoot(dir string) (string, bool) {
	for {
		if isCheckout(dir) {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

func isCheckout(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) == 2 && fs[0] == "module" {
			if fs[1] != modulePath {
				return false
			}
			_, err := os.Stat(filepath.Join(dir, filepath.FromSlash(threatModelPath)))
			return err == nil
		}
	}
	return false
}

// docLink resolves a link target found in docs/threat-model.md (relative
// to docs/) to a URL under base; in-page fragments and absolute URLs stay.
func docLink(base, target string) string {
	if strings.HasPrefix(target, "#") || strings.Contains(target, "://") {
		return target
	}
	p, frag, _ := strings.Cut(target, "#")
	ref := path.Clean(path.Join("docs", p))
	if frag != "" {
		ref += "#" + frag
	}
	return base + ref
}
