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
	if progress == nil {
		progress = io.Discard
	}
	want := map[string]bool{}
	for _, id := range filter {
		want[strings.TrimSpace(id)] = true
	}
	var reports []Report
	for _, sc := range Catalog() {
		if len(want) > 0 && !want[sc.ID] {
			continue
		}
		if target.Local == nil && sc.Mode == LocalOnly && len(want) == 0 {
			continue
		}
		fmt.Fprintf(progress, "%s: running (%s)\n", sc.ID, sc.Title)
		rep := RunOne(ctx, target, sc)
		fmt.Fprintf(progress, "%s: %s in %v\n", sc.ID, rep.Result.Verdict, rep.Duration.Round(time.Millisecond))
		reports = append(reports, rep)
	}
	return reports
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

// Failed reports whether any report failed.
func Failed(reports []Report) bool {
	for _, r := range reports {
		if r.Result.Verdict == Fail {
			return true
		}
	}
	return false
}

// RenderTable writes one row per report: ID, threats, verdict, duration,
// evidence. Under --profile behind-proxy a TESTS column (relay, proxy or
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
	ID         string   `json:"id"`
	Title      string   `json:"title"`
	Threats    []string `json:"threats"`
	Mode       Mode     `json:"mode"`
	Verdict    Verdict  `json:"verdict"`
	Evidence   string   `json:"evidence"`
	DurationMS int64    `json:"duration_ms"`
	// Under --profile behind-proxy: relay, proxy or relay+proxy, and why.
	Tests    string `json:"tests,omitempty"`
	TestsWhy string `json:"tests_why,omitempty"`
}

// RenderJSON writes the reports as a JSON array.
func RenderJSON(w io.Writer, reports []Report) error {
	out := make([]jsonReport, 0, len(reports))
	for _, r := range reports {
		jr := jsonReport{ID: r.Scenario.ID, Title: r.Scenario.Title, Threats: r.Scenario.Threats, Mode: r.Scenario.Mode,
			Verdict: r.Result.Verdict, Evidence: r.Result.Evidence, DurationMS: r.Duration.Milliseconds()}
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
	fmt.Fprintln(tw, "SCENARIO\tMODE\tTHREATS\tBOUNDS (remote)")
	for _, sc := range Catalog() {
		b := sc.Bounds
		if sc.Mode == LocalOnly {
			b = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", sc.ID, sc.Mode, strings.Join(sc.Threats, ","), b)
	}
	return tw.Flush()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
