package attacks

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// ScenarioTimeout bounds one scenario's run.
const ScenarioTimeout = 2 * time.Minute

// Run runs the catalog's scenarios against target, one at a time, and
// reports each. filter, when non-empty, selects scenario IDs. Local-only
// scenarios are left out against a remote target (target.Local == nil)
// unless the filter names them, in which case they report Skip. Progress
// lines go to progress (nil: none).
func Run(ctx context.Context, target *Target, filter []string, progress io.Writer) []Report {
	return runScenarios(ctx, target, Select(target, filter), progress)
}

// Select is the scenarios a run against target attacks, in catalog order:
// those filter names (IDs), or with no filter every scenario that can run
// there (remote-safe ones against a remote target).
func Select(target *Target, filter []string) []Scenario {
	want := map[string]bool{}
	for _, id := range filter {
		want[strings.TrimSpace(id)] = true
	}
	var out []Scenario
	for _, sc := range Catalog() {
		if len(want) > 0 && !want[sc.ID] {
			continue
		}
		if target.Local == nil && sc.Mode == LocalOnly && len(want) == 0 {
			continue
		}
		out = append(out, sc)
	}
	return out
}

// NotRun reports every scenario of scs as could not run, for why (a run
// that cannot start: an output that cannot be written, a target that is
// down).
func NotRun(scs []Scenario, why string) []Report {
	reps := make([]Report, 0, len(scs))
	for _, sc := range scs {
		reps = append(reps, Report{Scenario: sc, Result: CouldNotRunf("not attacked: %s", why)})
	}
	return reps
}

// runScenarios runs scs in order. The target must answer (reachable)
// before each scenario that would attack it, else that scenario could not
// run; a scenario that failed is followed by a second probe, and a target
// gone by then is named in its evidence (the attack may have taken it
// down: still a finding). When the first probe fails nothing is attacked.
func runScenarios(ctx context.Context, target *Target, scs []Scenario, progress io.Writer) []Report {
	if progress == nil {
		progress = io.Discard
	}
	if len(scs) == 0 {
		return nil
	}
	if err := target.reachable(ctx); err != nil {
		fmt.Fprintf(progress, "relay attack: %v; nothing attacked\n", err)
		return NotRun(scs, err.Error())
	}
	var reports []Report
	probed := true // the probe above covers the first scenario
	for _, sc := range scs {
		fmt.Fprintf(progress, "%s: running (%s)\n", sc.ID, sc.Title)
		rep := runProbed(ctx, target, sc, &probed)
		fmt.Fprintf(progress, "%s: %s in %v\n", sc.ID, rep.Result.Verdict, rep.Duration.Round(time.Millisecond))
		reports = append(reports, rep)
	}
	return reports
}

// runProbed runs sc after making sure the target answers, unless *probed
// says it answered since the last attack; see runScenarios.
func runProbed(ctx context.Context, target *Target, sc Scenario, probed *bool) Report {
	if ctx.Err() != nil {
		return Report{Scenario: sc, Result: CouldNotRunf("not started: the run's deadline (--timeout) ran out first")}
	}
	if target.Local == nil && sc.Mode == LocalOnly {
		return RunOne(ctx, target, sc) // a Skip; nothing is sent
	}
	if !*probed {
		if err := target.reachable(ctx); err != nil {
			return Report{Scenario: sc, Result: CouldNotRunf("not attacked: %v", err)}
		}
	}
	*probed = false
	rep := RunOne(ctx, target, sc)
	if rep.Result.Verdict == Fail {
		if err := target.reachable(ctx); err != nil {
			rep.Result.Evidence += fmt.Sprintf(" [after this scenario the target stopped answering, so the attack may have taken it down: %v]", err)
		} else {
			*probed = true
		}
	}
	return rep
}

// RunOne runs one scenario under ScenarioTimeout; a panic in the scenario
// is a Fail, not a crash of the runner.
func RunOne(ctx context.Context, target *Target, sc Scenario) (rep Report) {
	rep.Scenario = sc
	start := time.Now()
	defer func() {
		rep.Duration = time.Since(start)
		if r := recover(); r != nil {
			rep.Result = Failf("scenario panicked: %v", r)
		}
	}()
	if target.Local == nil && sc.Mode == LocalOnly {
		rep.Result = Skipf("local-only scenario; the target is remote")
		return rep
	}
	sctx, cancel := context.WithTimeout(ctx, ScenarioTimeout)
	defer cancel()
	since := 0
	if target.Local != nil {
		since = len(target.Local.Started())
	}
	rep.Result = sc.Run(sctx, target)
	if target.Profile == BehindProxy {
		n := sc.BehindProxy
		if n.Tests == "" {
			n = ProxyNote{TestsRelay, "the proxy forwards this attack to the relay unchanged; the relay's defence answers it"}
		}
		rep.Proxy = &n
	}
	if sctx.Err() != nil && rep.Result.Verdict == Pass {
		rep.Result = Failf("timed out after %v", ScenarioTimeout)
	}
	if target.Local != nil && rep.Result.Verdict == Pass {
		if err := target.Local.budgetsSettled(since); err != nil {
			rep.Result = Failf("%v (the attack itself held: %s)", err, rep.Result.Evidence)
		}
	}
	return rep
}

// Exit codes of `relay attack`.
const (
	ExitPassed      = 0 // every scenario passed or was skipped
	ExitFinding     = 1 // a scenario failed: a defence did not hold
	ExitUsage       = 2 // a usage error; nothing ran
	ExitCouldNotRun = 3 // no finding, but a scenario could not run (target unreachable, an output not writable)
)

// Failed reports whether any report failed.
func Failed(reports []Report) bool {
	for _, r := range reports {
		if r.Result.Verdict == Fail {
			return true
		}
	}
	return false
}

// ExitCode is the exit status for reports: a finding wins over a
// scenario that could not run, which wins over a pass.
func ExitCode(reports []Report) int {
	code := ExitPassed
	for _, r := range reports {
		switch r.Result.Verdict {
		case Fail:
			return ExitFinding
		case CouldNotRun:
			code = ExitCouldNotRun
		}
	}
	return code
}

// tally counts reports by verdict.
func tally(reports []Report) map[Verdict]int {
	n := map[Verdict]int{}
	for _, r := range reports {
		n[r.Result.Verdict]++
	}
	return n
}

// RenderTable writes one row per report: ID, threats, verdict, duration,
// evidence, then a line counting the verdicts with the exit code. Under --profile behind-proxy a TESTS column (relay, proxy or
// relay+proxy) follows the verdict, and a note per scenario after the
// table says why.
func RenderTable(w io.Writer, reports []Report) error {
	proxied := false
	for _, r := range reports {
		proxied = proxied || r.Proxy != nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if proxied {
		fmt.Fprintln(tw, "ID\tTHREATS\tVERDICT\tTESTS\tDURATION\tEVIDENCE")
	} else {
		fmt.Fprintln(tw, "ID\tTHREATS\tVERDICT\tDURATION\tEVIDENCE")
	}
	for _, r := range reports {
		verdict := r.Result.Verdict.String()
		if proxied {
			tests := "-"
			if r.Proxy != nil {
				tests = r.Proxy.Tests
			}
			verdict += "\t" + tests
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", r.Scenario.ID, strings.Join(r.Scenario.Threats, ","), verdict,
			r.Duration.Round(10*time.Millisecond), oneLine(r.Result.Evidence))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	n := tally(reports)
	fmt.Fprintf(w, "\nverdicts: PASS %d, FAIL %d, SKIP %d, COULD-NOT-RUN %d; exit %d\n", n[Pass], n[Fail], n[Skip], n[CouldNotRun], ExitCode(reports))
	if proxied {
		fmt.Fprintln(w, "\nBehind a TLS-terminating proxy (--profile behind-proxy), what each verdict tested:")
		for _, r := range reports {
			if r.Proxy != nil {
				fmt.Fprintf(w, "  %s (%s): %s\n", r.Scenario.ID, r.Proxy.Tests, oneLine(r.Proxy.Why))
			}
		}
	}
	return nil
}

type jsonReport struct {
	ID      string   `json:"id"`
	Title   string   `json:"title"`
	Threats []string `json:"threats"`
	// ThreatRefs: per threat, its entry in the threat model, as a
	// repository path with its anchor and as a URL under the source base.
	ThreatRefs []jsonThreatRef `json:"threat_refs"`
	// Source is the scenario's file in the repository; SourceURL the same
	// under the source base.
	Source     string  `json:"source"`
	SourceURL  string  `json:"source_url"`
	Mode       Mode    `json:"mode"`
	Verdict    Verdict `json:"verdict"`
	Evidence   string  `json:"evidence"`
	DurationMS int64   `json:"duration_ms"`
	// Under --profile behind-proxy: relay, proxy or relay+proxy, and why.
	Tests    string `json:"tests,omitempty"`
	TestsWhy string `json:"tests_why,omitempty"`
}

type jsonThreatRef struct {
	ID    string `json:"id"`
	Title string `json:"title"`
	Doc   string `json:"doc"` // docs/threat-model.md#TM-...
	URL   string `json:"url"`
}

// RenderJSON writes the reports as a JSON array, each with its threats'
// entries in the threat model and its scenario's source file (as
// repository paths, and as URLs under info.SourceBase: links.go).
func RenderJSON(w io.Writer, reports []Report, info RunInfo) error {
	base := info.SourceBase
	if base == "" {
		base = publishedBase()
	}
	titles := map[string]string{}
	for _, th := range Threats() {
		titles[th.ID] = th.Title
	}
	out := make([]jsonReport, 0, len(reports))
	for _, r := range reports {
		src := scenarioSource(r.Scenario.ID)
		jr := jsonReport{ID: r.Scenario.ID, Title: r.Scenario.Title, Threats: r.Scenario.Threats, Mode: r.Scenario.Mode,
			Source: src, SourceURL: base + src,
			Verdict: r.Result.Verdict, Evidence: r.Result.Evidence, DurationMS: r.Duration.Milliseconds()}
		for _, th := range r.Scenario.Threats {
			jr.ThreatRefs = append(jr.ThreatRefs, jsonThreatRef{ID: th, Title: titles[th], Doc: threatRef(th), URL: base + threatRef(th)})
		}
		if r.Proxy != nil {
			jr.Tests, jr.TestsWhy = r.Proxy.Tests, r.Proxy.Why
		}
		out = append(out, jr)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// RenderThreatMap writes the threat <-> scenario map for reviewers.
func RenderThreatMap(w io.Writer) error {
	byThreat := map[string][]string{}
	for _, sc := range Catalog() {
		for _, th := range sc.Threats {
			byThreat[th] = append(byThreat[th], fmt.Sprintf("%s (%s)", sc.ID, sc.Mode))
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "THREAT\tTITLE\tSTATUS\tVERIFIED BY / REASON")
	for _, th := range Threats() {
		detail := th.Note
		if th.Status == Verified {
			detail = strings.Join(byThreat[th.ID], ", ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", th.ID, th.Title, th.Status, detail)
	}
	fmt.Fprintln(tw, "\t\t\t")
	fmt.Fprintln(tw, "SCENARIO\tMODE\tTHREATS\tBOUNDS (remote) / WHY LOCAL-ONLY")
	for _, sc := range Catalog() {
		b := sc.Bounds
		if sc.Mode == LocalOnly {
			b = "local-only: " + sc.LocalOnly
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", sc.ID, sc.Mode, strings.Join(sc.Threats, ","), b)
	}
	return tw.Flush()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
