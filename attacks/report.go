package attacks

import (
	"encoding/xml"
	"errors"
	"fmt"
	"html/template"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Outputs of `relay attack` for review, CI and monitoring, besides the
// table and JSON: JUnit XML (what CI systems display), a self-contained
// HTML page (threat -> scenario -> defence -> result, readable offline),
// and a Prometheus textfile (for node_exporter's textfile collector, so a
// regression in a deployed relay raises an alert).

// RunInfo describes one run for the report formats.
type RunInfo struct {
	Target   string
	Started  time.Time
	Duration time.Duration
	// ExitCode is the run's exit status as far as it is known when the
	// file is written (ExitPassed, ExitFinding or ExitCouldNotRun).
	ExitCode int
	// Peer is the second instance of a cluster (--peer-target), if any.
	Peer string
	// SourceBase prefixes repository paths in links (links.go); empty:
	// the repository at the build's revision.
	SourceBase string
}

type junitSuites struct {
	XMLName xml.Name     `xml:"testsuites"`
	Suites  []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name      string      `xml:"name,attr"`
	Tests     int         `xml:"tests,attr"`
	Failures  int         `xml:"failures,attr"`
	Errors    int         `xml:"errors,attr"`
	Skipped   int         `xml:"skipped,attr"`
	Time      string      `xml:"time,attr"`
	Timestamp string      `xml:"timestamp,attr"`
	Cases     []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Error     *junitMessage `xml:"error,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

// RenderJUnit writes the reports as JUnit XML: one testsuite for the run,
// one testcase per scenario (classname: its threats), failures (findings),
// errors (could not run) and skips carrying the evidence.
func RenderJUnit(w io.Writer, reports []Report, info RunInfo) error {
	s := junitSuite{Name: "relay attack " + info.Target, Tests: len(reports),
		Time: secs(info.Duration), Timestamp: info.Started.UTC().Format(time.RFC3339)}
	for _, r := range reports {
		c := junitCase{Name: r.Scenario.ID + ": " + r.Scenario.Title, Classname: "attacks." + strings.Join(r.Scenario.Threats, "+"),
			Time: secs(r.Duration), SystemOut: r.Result.Evidence}
		if r.Proxy != nil {
			c.SystemOut = fmt.Sprintf("tests the %s behind a TLS-terminating proxy: %s\n%s", r.Proxy.Tests, r.Proxy.Why, r.Result.Evidence)
		}
		msg := &junitMessage{Message: oneLine(r.Result.Evidence), Text: r.Result.Evidence}
		switch r.Result.Verdict {
		case Fail:
			s.Failures++
			c.Failure = msg
		case CouldNotRun:
			s.Errors++
			c.Error = msg
		case Skip:
			s.Skipped++
			c.Skipped = msg
		}
		s.Cases = append(s.Cases, c)
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(junitSuites{Suites: []junitSuite{s}}); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// promResult is the value of relay_attack_scenario_result.
func promResult(v Verdict) int {
	switch v {
	case Pass:
		return 1
	case Skip:
		return -1
	case CouldNotRun:
		return -2
	}
	return 0
}

// RenderPromTextfile writes the run in the Prometheus text format for the
// node_exporter textfile collector: one result gauge per scenario (1 pass,
// 0 fail, -1 skipped, -2 could not run), its duration, the counts of
// findings and of scenarios that could not run, the exit code, and the
// run's time and length. A finding is relay_attack_failed_scenarios > 0,
// a run that says nothing about the defences
// relay_attack_could_not_run_scenarios > 0, a timer that stopped
// time() - relay_attack_last_run_timestamp_seconds growing past a day
// (docs/deploy.md §6).
func RenderPromTextfile(w io.Writer, reports []Report, info RunInfo) error {
	var b strings.Builder
	gauge := func(name, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
	}
	gauge("relay_attack_scenario_result", "Last `relay attack` result per scenario: 1 pass, 0 fail (a finding), -1 skipped, -2 could not run.")
	for _, r := range reports {
		fmt.Fprintf(&b, "relay_attack_scenario_result{scenario=%q,threats=%q} %d\n", r.Scenario.ID, strings.Join(r.Scenario.Threats, ","), promResult(r.Result.Verdict))
	}
	gauge("relay_attack_scenario_duration_seconds", "How long each scenario of the last run took.")
	for _, r := range reports {
		fmt.Fprintf(&b, "relay_attack_scenario_duration_seconds{scenario=%q} %s\n", r.Scenario.ID, secs(r.Duration))
	}
	n := tally(reports)
	gauge("relay_attack_failed_scenarios", "Scenarios that failed (findings) in the last run.")
	fmt.Fprintf(&b, "relay_attack_failed_scenarios %d\n", n[Fail])
	gauge("relay_attack_could_not_run_scenarios", "Scenarios of the last run that could not run (target unreachable, an output not writable, the deadline ran out).")
	fmt.Fprintf(&b, "relay_attack_could_not_run_scenarios %d\n", n[CouldNotRun])
	gauge("relay_attack_exit_code", "Exit code of the last run: 0 passed, 1 a finding, 3 could not run.")
	fmt.Fprintf(&b, "relay_attack_exit_code %d\n", info.ExitCode)
	gauge("relay_attack_last_run_timestamp_seconds", "When the last run started (Unix time).")
	fmt.Fprintf(&b, "relay_attack_last_run_timestamp_seconds %d\n", info.Started.Unix())
	gauge("relay_attack_run_duration_seconds", "How long the last run took.")
	fmt.Fprintf(&b, "relay_attack_run_duration_seconds %s\n", secs(info.Duration))
	_, err := io.WriteString(w, b.String())
	return err
}

// The HTML report, for a reviewer: a summary first (counts by verdict and
// by mode, then each finding and each scenario that could not run), then
// per threat the code that defends it and each scenario run against it,
// then the threat model's entries as built. A threat ID links to its entry
// in the page; a file (scenario, defence, the entry in
// docs/threat-model.md) links under the run's source base (links.go).

// reportThreat is one threat row of the HTML report.
type reportThreat struct {
	ID, Title, Status string
	Note, Defence     template.HTML
	Scenarios         []reportScenario
	rank              int // 0 a scenario failed, 1 one could not run, 2 the rest
}

type reportScenario struct {
	ID, Title, Mode, Bounds, Verdict, Evidence, Duration string
	Source, SourceURL                                    string
	Threats                                              []reportRef
}

// reportRef is a threat named by a scenario: its ID and title.
type reportRef struct{ ID, Title string }

// reportCount is one row of the summary: a verdict, by mode.
type reportCount struct {
	Verdict              string
	Remote, Local, Total int
}

// reportEntry is one threat model entry, rendered.
type reportEntry struct {
	ID, Title, Ref, RefURL string
	Items                  []template.HTML
}

var reportTmpl = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>relay attack report: {{.Target}}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222;max-width:110em}
table{border-collapse:collapse}
.threats{width:100%}
th,td{border:1px solid #ccc;padding:.35em .5em;vertical-align:top;text-align:left}
th{background:#f3f3f3}
td.n{text-align:right}
code{font:12px ui-monospace,monospace;background:#f5f5f5;padding:0 .2em}
a code{color:inherit}
.PASS{background:#e6f4ea}.FAIL{background:#fce8e6;font-weight:bold}.SKIP{background:#fef7e0}.COULD-NOT-RUN{background:#e8eaf6}
.none{color:#888}
section.entry{border-top:1px solid #ddd;margin-top:1em}
section.entry:target{background:#fffbe6}
</style></head><body>
<h1>relay attack report</h1>
<p>Target <code>{{.Target}}</code>{{if .Peer}} and its peer instance <code>{{.Peer}}</code>{{end}}, started {{.Started}}, took {{.Duration}}.
Exit code <b>{{.ExitCode}}</b>: {{.ExitMeaning}}.</p>
<h2 id="summary">Summary</h2>
<table class="summary">
<tr><th>Verdict</th><th>remote-safe</th><th>local-only</th><th>all</th></tr>
{{range .Counts}}<tr><td class="{{.Verdict}}">{{.Verdict}}</td><td class="n">{{.Remote}}</td><td class="n">{{.Local}}</td><td class="n">{{.Total}}</td></tr>
{{end}}</table>
{{if .Findings}}<h2 id="findings">Findings ({{len .Findings}})</h2>
<ol>{{range .Findings}}<li>{{template "scenario" .}}</li>
{{end}}</ol>{{else}}<p>No findings: no defence failed in this run.</p>{{end}}
{{if .NotRun}}<h2 id="could-not-run">Could not run ({{len .NotRun}})</h2>
<p>Nothing was attacked by these, so nothing is known about their defences.</p>
<ol>{{range .NotRun}}<li>{{template "scenario" .}}</li>
{{end}}</ol>{{end}}
<h2 id="threats">Threats, defences and scenarios</h2>
<table class="threats">
<tr><th>Threat</th><th>Defence (code that enforces it)</th><th>Scenario</th><th>Bounds used</th><th>Result</th><th>Evidence</th></tr>
{{range .Threats}}{{$t := .}}{{if .Scenarios}}{{range $i, $s := .Scenarios}}<tr>
{{if eq $i 0}}<td rowspan="{{len $t.Scenarios}}"><a href="#{{$t.ID}}"><b>{{$t.ID}}</b></a> {{$t.Title}}</td><td rowspan="{{len $t.Scenarios}}">{{$t.Defence}}</td>{{end}}
<td><a href="{{$s.SourceURL}}"><b>{{$s.ID}}</b></a> ({{$s.Mode}})<br>{{$s.Title}}</td><td>{{$s.Bounds}}</td><td class="{{$s.Verdict}}">{{$s.Verdict}}<br>{{$s.Duration}}</td><td>{{$s.Evidence}}</td>
</tr>{{end}}{{else}}<tr><td><a href="#{{.ID}}"><b>{{.ID}}</b></a> {{.Title}}</td><td>{{.Defence}}</td><td colspan="4" class="none">{{.Status}}{{if .Note}}: {{.Note}}{{end}}</td></tr>{{end}}
{{end}}</table>
<h2 id="threat-model">The threat model, as built into this binary</h2>
<p>Each entry of <a href="{{.ThreatModelURL}}"><code>docs/threat-model.md</code></a> at the build this report came from.</p>
{{range .Entries}}<section class="entry" id="{{.ID}}"><h3>{{.ID}} {{.Title}}</h3>
<p><a href="{{.RefURL}}"><code>{{.Ref}}</code></a></p>
<ul>{{range .Items}}<li>{{.}}</li>{{end}}</ul></section>
{{end}}
</body></html>
{{define "scenario"}}<span class="{{.Verdict}}">{{.Verdict}}</span> <a href="{{.SourceURL}}"><b>{{.ID}}</b></a> {{.Title}}
({{range $i, $r := .Threats}}{{if $i}}, {{end}}<a href="#{{$r.ID}}">{{$r.ID}}</a> {{$r.Title}}{{end}}): {{.Evidence}}{{end}}
`))

// exitMeaning says what an exit code of `relay attack` means.
func exitMeaning(code int) string {
	switch code {
	case ExitPassed:
		return "every scenario passed or was skipped"
	case ExitFinding:
		return "a defence did not hold (a finding)"
	case ExitCouldNotRun:
		return "no finding, but some scenarios could not run: nothing is known about their defences"
	}
	return "usage error"
}

// RenderHTML writes a self-contained page (no scripts, no external
// resources; links only): the summary, per threat of the model the code
// that defends it and each scenario run against it, with its bounds,
// verdict and evidence line, and the threat model's entries. Threats whose
// scenarios did not run here say why.
func RenderHTML(w io.Writer, reports []Report, info RunInfo) error {
	base := info.SourceBase
	if base == "" {
		base = publishedBase()
	}
	titles := map[string]string{}
	for _, th := range Threats() {
		titles[th.ID] = th.Title
	}
	toScenario := func(r Report) reportScenario {
		b := r.Scenario.Bounds
		if b == "" || r.Scenario.Mode == LocalOnly {
			b = "local relay of its own"
		}
		ev := r.Result.Evidence
		if r.Proxy != nil {
			ev = fmt.Sprintf("[tests the %s behind a TLS-terminating proxy: %s] %s", r.Proxy.Tests, r.Proxy.Why, ev)
		}
		rs := reportScenario{ID: r.Scenario.ID, Title: r.Scenario.Title, Mode: r.Scenario.Mode.String(),
			Bounds: b, Verdict: r.Result.Verdict.String(), Evidence: ev, Duration: r.Duration.Round(time.Millisecond).String(),
			Source: scenarioSource(r.Scenario.ID), SourceURL: base + scenarioSource(r.Scenario.ID)}
		for _, th := range r.Scenario.Threats {
			rs.Threats = append(rs.Threats, reportRef{th, titles[th]})
		}
		return rs
	}

	ran := map[string][]Report{}
	var findings, notRun []reportScenario
	counts := map[Verdict]*reportCount{}
	order := []Verdict{Fail, CouldNotRun, Pass, Skip}
	for _, v := range order {
		counts[v] = &reportCount{Verdict: v.String()}
	}
	for _, r := range reports {
		for _, th := range r.Scenario.Threats {
			ran[th] = append(ran[th], r)
		}
		c := counts[r.Result.Verdict]
		if r.Scenario.Mode == LocalOnly {
			c.Local++
		} else {
			c.Remote++
		}
		c.Total++
		switch r.Result.Verdict {
		case Fail:
			findings = append(findings, toScenario(r))
		case CouldNotRun:
			notRun = append(notRun, toScenario(r))
		}
	}
	total := &reportCount{Verdict: "all"}
	var rows []reportCount
	for _, v := range order {
		c := counts[v]
		total.Remote, total.Local, total.Total = total.Remote+c.Remote, total.Local+c.Local, total.Total+c.Total
		rows = append(rows, *c)
	}
	rows = append(rows, *total)

	defences := Defences()
	var threats []reportThreat
	for _, th := range Threats() {
		rt := reportThreat{ID: th.ID, Title: th.Title, Status: th.Status.String(), Note: mdInline(th.Note, base), Defence: mdInline(defences[th.ID], base), rank: 2}
		if th.Status == Verified && len(ran[th.ID]) == 0 {
			rt.Status, rt.Note = "not run here", "its scenarios are local-only or were not selected"
		}
		reps := ran[th.ID]
		sort.SliceStable(reps, func(i, j int) bool { return reps[i].Scenario.ID < reps[j].Scenario.ID })
		for _, r := range reps {
			switch r.Result.Verdict {
			case Fail:
				rt.rank = 0
			case CouldNotRun:
				rt.rank = min(rt.rank, 1)
			}
			rt.Scenarios = append(rt.Scenarios, toScenario(r))
		}
		threats = append(threats, rt)
	}
	// Failures first, then what could not run, each in the model's order.
	sort.SliceStable(threats, func(i, j int) bool { return threats[i].rank < threats[j].rank })

	var entries []reportEntry
	for _, e := range threatEntries() {
		re := reportEntry{ID: e.ID, Title: e.Title, Ref: threatRef(e.ID), RefURL: base + threatRef(e.ID)}
		for _, it := range e.Items {
			re.Items = append(re.Items, mdBlock(it, base))
		}
		entries = append(entries, re)
	}
	return reportTmpl.Execute(w, map[string]any{
		"Target": info.Target, "Peer": info.Peer, "Started": info.Started.UTC().Format(time.RFC3339),
		"Duration": info.Duration.Round(time.Millisecond).String(), "ExitCode": info.ExitCode, "ExitMeaning": exitMeaning(info.ExitCode),
		"Counts": rows, "Findings": findings, "NotRun": notRun, "Threats": threats,
		"Entries": entries, "ThreatModelURL": base + threatModelPath,
	})
}

// checkWritable reports whether writeFileAtomic can write path: path is
// not a directory and its directory takes a new file (created and removed).
func checkWritable(path string) error {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return errors.New("it is a directory")
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".check*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// writeFileAtomic writes path through a temporary file in the same
// directory and a rename, so a reader (the textfile collector, a CI
// artefact upload) never sees half a file.
func writeFileAtomic(path string, render func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op after the rename
	if err := render(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
