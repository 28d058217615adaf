package attacks

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Mutant is one file of attacks/mutants/: a defence weakened on purpose,
// as a unified diff against the repository, with a header naming the
// threats it weakens and the checks expected to catch it. `make mutate`
// (cmd/relay-mutate) applies each to a scratch copy, builds it and runs
// the checks; a mutant none of them catches has survived, which means the
// scenario cannot tell the defence from its absence. See
// attacks/mutants/README.md for the format.
type Mutant struct {
	Name    string   // file name without .patch
	Threats []string // "Threat:" IDs in docs/threat-model.md
	// CaughtBy are the checks expected to fail on the mutant: scenario IDs
	// ("ATK-SLOWLORIS", run as TestScenarios/ATK-SLOWLORIS) or white-box
	// tests as "PKGDIR:TestName" ("internal/relay:TestNewConnID_CryptoRand").
	CaughtBy []string
	Weakens  string   // one line: what the mutant does to the defence
	Files    []string // repository files the diff changes
	Patch    string   // the whole file, as `git apply` reads it
}

// ErrMutantFormat: a file in attacks/mutants/ does not follow the format
// of its README (header keys, a diff that names its files).
var ErrMutantFormat = errors.New("attacks: malformed mutant")

var (
	mutantHeaderRE = regexp.MustCompile(`^(Threat|Caught-by|Weakens):\s*(.*)$`)
	mutantFileRE   = regexp.MustCompile(`^\+\+\+ b/(\S+)`)
	whiteBoxRE     = regexp.MustCompile(`^[a-z0-9_/]+:Test\w+$`)
	scenarioIDRE   = regexp.MustCompile(`^ATK-[A-Z0-9-]+$`)
)

// IsWhiteBox reports whether a Caught-by entry is a package test
// ("PKGDIR:TestName") rather than a scenario ID.
func IsWhiteBox(check string) bool { return whiteBoxRE.MatchString(check) }

// ParseMutant reads one mutant file.
func ParseMutant(path string) (Mutant, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Mutant{}, err
	}
	m := Mutant{Name: strings.TrimSuffix(filepath.Base(path), ".patch"), Patch: string(b)}
	bad := func(format string, a ...any) (Mutant, error) {
		return Mutant{}, fmt.Errorf("%w %s: %s", ErrMutantFormat, path, fmt.Sprintf(format, a...))
	}
	inHeader := true
	sc := bufio.NewScanner(strings.NewReader(m.Patch))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if inHeader {
			if line == "" {
				inHeader = false
				continue
			}
			h := mutantHeaderRE.FindStringSubmatch(line)
			if h == nil {
				return bad("header line %q is not Threat:, Caught-by: or Weakens: (end the header with a blank line)", line)
			}
			switch h[1] {
			case "Threat":
				m.Threats = append(m.Threats, splitList(h[2])...)
			case "Caught-by":
				m.CaughtBy = append(m.CaughtBy, splitList(h[2])...)
			case "Weakens":
				m.Weakens = strings.TrimSpace(h[2])
			}
			continue
		}
		if f := mutantFileRE.FindStringSubmatch(line); f != nil {
			m.Files = append(m.Files, f[1])
		}
	}
	if err := sc.Err(); err != nil {
		return Mutant{}, err
	}
	switch {
	case len(m.Threats) == 0:
		return bad("no Threat: line")
	case len(m.CaughtBy) == 0:
		return bad("no Caught-by: line")
	case m.Weakens == "":
		return bad("no Weakens: line")
	case len(m.Files) == 0:
		return bad("no unified diff (+++ b/FILE) after the header")
	}
	for _, c := range m.CaughtBy {
		if !scenarioIDRE.MatchString(c) && !IsWhiteBox(c) {
			return bad("Caught-by entry %q is neither a scenario ID (ATK-...) nor PKGDIR:TestName", c)
		}
	}
	for _, f := range m.Files {
		if strings.HasPrefix(f, "attacks/") {
			return bad("the diff changes %s: a mutant weakens the relay, never the attack suite", f)
		}
	}
	return m, nil
}

// LoadMutants parses every *.patch in dir, sorted by name.
func LoadMutants(dir string) ([]Mutant, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.patch"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var out []Mutant
	for _, p := range paths {
		m, err := ParseMutant(p)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
