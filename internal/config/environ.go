package config

import (
	"flag"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// EnvVariable is a RELAY_* variable that is not a flag's.
type EnvVariable struct {
	Name string
	// Serve: relay serve reads it. Otherwise a tool or test of this
	// repository reads it and relay serve ignores it.
	Serve bool
	What  string
}

// OtherVariables lists every RELAY_* name the repository reads that is not
// a flag's variable (docs/deploy.md §8 lists them too;
// TestOtherVariables_EveryNameInTheRepository keeps this list complete).
// relay serve refuses any other RELAY_* name (CheckEnviron).
var OtherVariables = []EnvVariable{
	{"RELAY_PRODUCTION", true, "production policy: refuse plain HTTP, root and extra capabilities"},
	{"RELAY_ATTACK_TARGET", false, "the daily attack unit's target, read by systemd from /etc/relay/attack.env"},
	{"RELAY_ATTACK_BINARY", false, "go test ./attacks: attack this build instead (the mutation harness)"},
	{"RELAY_ATTACK_HOOKS_BINARY", false, "go test ./attacks: its test-hooks build"},
	{"RELAY_ATTACK_EXTRA_FLAGS", false, "go test ./attacks: flags appended to every relay it starts"},
	{"RELAY_SBOM", false, "make sbom: the SBOM the test checks"},
	{"RELAY_SBOM_BINARY", false, "make sbom: the binary it describes"},
	{"RELAY_SBOM_VERSION", false, "make sbom: the version stamped"},
	{"RELAY_CLUSTER_FIGURES", false, "make cluster-figures: run the figures test"},
	{"RELAY_CLUSTER_SCALE_AGENT", false, "make cluster-scale: an agent process of the scale model"},
	{"RELAY_BENCH_FORWARDER", false, "the load harness: serve the baseline forwarder"},
	{"RELAY_DEB", false, "make deb: the package its test inspects"},
	{"RELAY_DEB_VERSION", false, "make deb: the package's version"},
	{"RELAY_DEB_ARCH", false, "make deb: the package's architecture"},
	{"RELAY_DEB_BINARY", false, "make deb: the binary it packages (nfpm.yaml's ${RELAY_DEB_BINARY})"},
	{"RELAY_NFPM", false, "make deb: the pinned nfpm its test builds with"},
}

// CheckEnviron refuses a RELAY_* variable in environ (os.Environ) that is
// neither a flag's (--max-conns: RELAY_MAX_CONNS) nor in OtherVariables: a
// mistyped name (RELAY_MAX_CON=5) would otherwise be ignored while the
// same mistake on the command line is refused. Names without the prefix
// are not the relay's business.
func CheckEnviron(environ []string) error {
	known := map[string]bool{}
	var c Config
	var trust string
	newFlagSet(&c, func(string) string { return "" }, &trust, new(flagSink)).VisitAll(func(f *flag.Flag) {
		if !notFromEnv[f.Name] {
			known[EnvName(f.Name)] = true
		}
	})
	for _, v := range OtherVariables {
		known[v.Name] = true
	}
	var unknown []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "RELAY_") && !known[name] {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	p := fmt.Sprintf("unknown variable %s: no flag sets it", show(unknown[0]))
	if near := nearest(unknown[0], known); near != "" {
		p += "; did you mean " + near + "?"
	}
	p += " (a flag's variable is RELAY_ and its name: --max-conns is RELAY_MAX_CONNS; relay serve -h lists the flags)"
	if len(unknown) > 1 {
		p += fmt.Sprintf(" (and %d more)", len(unknown)-1)
	}
	return &Error{Problem: p}
}

// nearest is the known name within an edit distance of 3 of name, if one is
// closest.
func nearest(name string, known map[string]bool) string {
	best, bestD := "", 4
	names := make([]string, 0, len(known))
	for k := range known {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		if d := editDistance(name, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance, capped in effect by the
// caller's 4 (names are short).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
