// Command relay-mutate is the mutation harness behind `make mutate`: it
// proves that every scenario can fail. For each mutant in attacks/mutants/
// (format: attacks/mutants/README.md) it copies the working tree to a
// scratch directory, applies the mutant with `git apply`, and runs the
// checks its header names there: scenarios through `go test ./attacks`
// (whose TestMain builds the mutated relay), white-box tests through
// `go test ./PKGDIR`. A mutant is caught when one of its checks fails with
// a test failure (not a build error). The run fails when a mutant
// survives, no longer applies, or no longer builds.
//
//	relay-mutate [-only NAME,NAME] [-checks CHECK,CHECK] [-baseline] [-j N] [-v]
//
// -checks runs the named checks against every selected mutant instead of
// the checks its header names: `make chaos-mutants` proves with it that the
// cluster's chaos harness alone catches each cluster mutant.
//
// Run from the repository root. -baseline first runs every named check on
// an unmutated copy, so that a check failing anyway is not mistaken for a
// catch (`make test` does that already in CI).
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pyrycode/relay/attacks"
)

// mutantTimeout bounds one mutant's checks; a scenario's own bound is 2 min.
const mutantTimeout = 6 * time.Minute

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("relay-mutate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", filepath.Join("attacks", "mutants"), "directory of *.patch mutants")
	only := fs.String("only", "", "comma-separated mutant names to run (default: all)")
	baseline := fs.Bool("baseline", false, "first run every named check on an unmutated copy; it must pass")
	jobs := fs.Int("j", 1, "mutants run at once (each starts relays and times them: keep it at the core count or below)")
	verbose := fs.Bool("v", false, "print each check's output tail")
	override := fs.String("checks", "", "comma-separated checks (scenario IDs or PKGDIR:TestName) to run against every mutant instead of its Caught-by")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	all, err := attacks.LoadMutants(*dir)
	if err != nil {
		fmt.Fprintln(stderr, "relay-mutate:", err)
		return 2
	}
	mutants := all
	if *only != "" {
		byName := map[string]attacks.Mutant{}
		for _, m := range all {
			byName[m.Name] = m
		}
		mutants = nil
		for _, n := range strings.Split(*only, ",") {
			m, ok := byName[strings.TrimSuffix(strings.TrimSpace(n), ".patch")]
			if !ok {
				fmt.Fprintf(stderr, "relay-mutate: no mutant %q in %s\n", n, *dir)
				return 2
			}
			mutants = append(mutants, m)
		}
	}
	if len(mutants) == 0 {
		fmt.Fprintln(stderr, "relay-mutate: no mutants")
		return 2
	}
	if *override != "" {
		var checks []string
		for _, c := range strings.Split(*override, ",") {
			c = strings.TrimSpace(c)
			if !attacks.IsWhiteBox(c) && !strings.HasPrefix(c, "ATK-") {
				fmt.Fprintf(stderr, "relay-mutate: -checks entry %q is neither a scenario ID nor PKGDIR:TestName\n", c)
				return 2
			}
			checks = append(checks, c)
		}
		for i := range mutants {
			mutants[i].CaughtBy = checks
		}
	}
	start := time.Now()
	if *baseline {
		var checks []string
		seen := map[string]bool{}
		for _, m := range mutants {
			for _, c := range m.CaughtBy {
				if !seen[c] {
					seen[c] = true
					checks = append(checks, c)
				}
			}
		}
		sort.Strings(checks)
		r := runOne(attacks.Mutant{Name: "(baseline: no mutant)", CaughtBy: checks}, false, 0)
		if r.err != nil || len(r.failed) > 0 {
			fmt.Fprintf(stdout, "BASELINE FAILED: the checks must pass on the unmutated tree first: %v %v\n%s\n", r.err, r.failed, tail(r.output, 3000))
			return 1
		}
		fmt.Fprintf(stdout, "baseline: %d checks pass on the unmutated tree (%v)\n", len(checks), r.took.Round(time.Second))
	}

	results := make([]result, len(mutants))
	var wg sync.WaitGroup
	// Each job has a scratch directory of its own, at the same path every
	// run: the go command's build cache keys on the package's directory, so
	// a fixed path rebuilds only what the mutant changed.
	slots := make(chan int, max(1, *jobs))
	for i := range max(1, *jobs) {
		slots <- i
	}
	for i, m := range mutants {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slot := <-slots
			defer func() { slots <- slot }()
			results[i] = runOne(m, true, slot)
			fmt.Fprintln(stdout, results[i].line())
			if *verbose {
				fmt.Fprintln(stdout, tail(results[i].output, 2000))
			}
		}()
	}
	wg.Wait()
	bad := 0
	for _, r := range results {
		if !r.caught() {
			bad++
		}
	}
	fmt.Fprintf(stdout, "mutate: %d mutants, %d caught, %d not (%v)\n", len(results), len(results)-bad, bad, time.Since(start).Round(time.Second))
	if bad > 0 {
		for _, r := range results {
			if !r.caught() {
				fmt.Fprintf(stdout, "\n== %s\n%s\n", r.line(), tail(r.output, 3000))
			}
		}
		return 1
	}
	return 0
}

// result is what one mutant's run found.
type result struct {
	m      attacks.Mutant
	err    error    // could not copy, apply or build: not a catch
	failed []string // checks that failed with a test failure
	output string
	took   time.Duration
}

func (r result) caught() bool { return r.err == nil && len(r.failed) > 0 }

func (r result) line() string {
	switch {
	case r.err != nil:
		return fmt.Sprintf("BROKEN   %s: %v", r.m.Name, r.err)
	case len(r.failed) == 0:
		return fmt.Sprintf("SURVIVED %s (%s): %s all passed (%v)", r.m.Name, strings.Join(r.m.Threats, ","), strings.Join(r.m.CaughtBy, ", "), r.took.Round(time.Second))
	}
	return fmt.Sprintf("caught   %s (%s) by %s (%v): %s", r.m.Name, strings.Join(r.m.Threats, ","), strings.Join(r.failed, ", "), r.took.Round(time.Second), firstFailure(r.output))
}

// scratchDir is job slot's scratch directory for the source tree in the
// working directory, locked for this run until unlock. The path is fixed
// per tree and slot, so the go command's build cache (keyed on package
// directories) rebuilds only what a mutant changed; it differs between
// trees, so that `make mutate` in two worktrees at once never copies over
// the other's tree, and the lock makes two runs from one tree take turns.
func scratchDir(slot int) (dir string, unlock func(), err error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", nil, err
	}
	sum := sha256.Sum256([]byte(wd))
	base := filepath.Join(os.TempDir(), fmt.Sprintf("relay-mutate-%d", os.Getuid()))
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", nil, err
	}
	dir = filepath.Join(base, fmt.Sprintf("%x-%d", sum[:6], slot))
	unlock, err = lockFile(dir + ".lock")
	if err != nil {
		return "", nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return dir, unlock, nil
}

// errBuild: the mutated tree or its tests do not compile, which is a
// broken mutant, not a catch.
var errBuild = errors.New("does not build")

// runOne copies the tree into scratch slot slot, applies m (when apply)
// and runs its checks.
func runOne(m attacks.Mutant, apply bool, slot int) (r result) {
	r.m = m
	start := time.Now()
	defer func() { r.took = time.Since(start) }()
	tmp, unlock, err := scratchDir(slot)
	if err != nil {
		r.err = err
		return r
	}
	defer unlock()
	if err := os.RemoveAll(tmp); err != nil {
		r.err = err
		return r
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		r.err = err
		return r
	}
	defer os.RemoveAll(tmp)
	if err := copyTree(tmp); err != nil {
		r.err = fmt.Errorf("copy: %w", err)
		return r
	}
	if apply {
		cmd := exec.Command("git", "apply", "--whitespace=nowarn", "-")
		cmd.Dir = tmp
		cmd.Stdin = strings.NewReader(m.Patch)
		if out, err := cmd.CombinedOutput(); err != nil {
			r.err = fmt.Errorf("no longer applies (regenerate the diff): %s", strings.TrimSpace(string(out)))
			return r
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), mutantTimeout)
	defer cancel()
	var scenarios []string
	pkgTests := map[string][]string{}
	for _, c := range m.CaughtBy {
		if attacks.IsWhiteBox(c) {
			dir, name, _ := strings.Cut(c, ":")
			pkgTests[dir] = append(pkgTests[dir], name)
		} else {
			scenarios = append(scenarios, c)
		}
	}
	var out bytes.Buffer
	if len(scenarios) > 0 {
		pattern := "^TestScenarios$/^(" + strings.Join(quoteAll(scenarios), "|") + ")$"
		failed, err := goTest(ctx, tmp, &out, "./attacks", pattern)
		if err != nil {
			r.err = err
		}
		for _, f := range failed {
			r.failed = append(r.failed, strings.TrimPrefix(f, "TestScenarios/"))
		}
	}
	dirs := make([]string, 0, len(pkgTests))
	for d := range pkgTests {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		failed, err := goTest(ctx, tmp, &out, "./"+d, "^("+strings.Join(pkgTests[d], "|")+")$")
		if err != nil && r.err == nil {
			r.err = err
		}
		for _, f := range failed {
			r.failed = append(r.failed, d+":"+f)
		}
	}
	r.output = out.String()
	if r.err == nil && ctx.Err() != nil {
		r.err = fmt.Errorf("timed out after %v", mutantTimeout)
	}
	return r
}

var (
	failLineRE = regexp.MustCompile(`(?m)^\s*--- FAIL: (\S+)`)
	// buildFailRE: go test's own lines for a package that did not compile
	// or whose TestMain could not build the relay.
	buildFailRE = regexp.MustCompile(`(?m)^FAIL\s+\S+\s+\[(build|setup) failed\]|building the relay`)
)

// goTest runs `go test -count=1 -run pattern pkg` in dir and returns the
// failed test names that are leaves of the pattern (subtests for
// TestScenarios, top-level tests otherwise).
func goTest(ctx context.Context, dir string, out *bytes.Buffer, pkg, pattern string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-run", pattern, pkg)
	cmd.Dir = dir
	cmd.Env = append(testEnv(), "GOFLAGS=-buildvcs=false")
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	runErr := cmd.Run()
	fmt.Fprintf(out, "$ go test -run '%s' %s\n%s", pattern, pkg, b.String())
	if buildFailRE.Match(b.Bytes()) {
		return nil, fmt.Errorf("%w: %s", errBuild, firstLine(b.String()))
	}
	var failed []string
	for _, m := range failLineRE.FindAllStringSubmatch(b.String(), -1) {
		name := m[1]
		if pkg == "./attacks" && !strings.HasPrefix(name, "TestScenarios/") {
			continue // the parent test, or a helper test the pattern matched
		}
		if strings.Count(name, "/") > 1 {
			name = strings.Join(strings.SplitN(name, "/", 3)[:2], "/") // a key-type subtest: report its scenario
		}
		if !contains(failed, name) {
			failed = append(failed, name)
		}
	}
	if runErr != nil && len(failed) == 0 && ctx.Err() == nil {
		return nil, fmt.Errorf("go test failed without a test failure: %s", tail(b.String(), 400))
	}
	return failed, nil
}

// testEnv is the environment without the attack suite's knobs, which
// would point it at another binary or change every relay's flags.
func testEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RELAY_ATTACK_") {
			env = append(env, kv)
		}
	}
	return env
}

// copyTree copies the working tree (tracked files and untracked ones git
// does not ignore, as they are on disk) into dst.
func copyTree(dst string) error {
	out, err := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		return fmt.Errorf("git ls-files: %w", err)
	}
	for _, f := range strings.Split(string(out), "\x00") {
		if f == "" {
			continue
		}
		fi, err := os.Lstat(f)
		if errors.Is(err, os.ErrNotExist) {
			continue // deleted in the working tree
		}
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		p := filepath.Join(dst, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, fi.Mode().Perm()); err != nil {
			return err
		}
	}
	return nil
}

// firstFailure is the first line that says why a check failed.
func firstFailure(out string) string {
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if i := strings.Index(l, "FAILED: "); i >= 0 {
			return cut(l[i+len("FAILED: "):], 220)
		}
	}
	lines := strings.Split(out, "\n")
	for _, l := range lines {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "Messages:") {
			return cut(l, 220)
		}
	}
	for i, l := range lines { // a plain t.Fatalf: the line after --- FAIL
		if strings.Contains(l, "--- FAIL:") && i+1 < len(lines) {
			return cut(strings.TrimSpace(lines[i+1]), 220)
		}
	}
	return ""
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = regexp.QuoteMeta(s)
	}
	return out
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func firstLine(s string) string { return cut(strings.SplitN(strings.TrimSpace(s), "\n", 2)[0], 200) }

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
