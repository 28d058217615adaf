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

// reportThreat is one threat row of the HTML report.
type reportThreat struct {
	ID, Title, Status, Note, Defence string
	Scenarios                        []reportScenario
}

type reportScenario struct {
	ID, Title, Mode, Bounds, Verdict, Evidence, Duration string
}

var reportTmpl = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>relay attack report: {{.Target}}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%}
th,td{border:1px solid #ccc;padding:.35em .5em;vertical-align:top;text-align:left}
th{background:#f3f3f3}
code{font-size:12px}
.PASS{background:#e6f4ea}.FAIL{background:#fce8e6;font-weight:bold}.SKIP{background:#fef7e0}.COULD-NOT-RUN{background:#e8eaf6}
.none{color:#888}
</style></head><body>
<h1>relay attack report</h1>
<p>Target <code>{{.Target}}</code>, started {{.Started}}, took {{.Duration}}:
{{.Passed}} passed, {{.Failed}} failed, {{.Skipped}} skipped, {{.NotRun}} could not run, of {{.Total}} scenarios.</p>
<table>
<tr><th>Threat</th><th>Defence (code that enforces it)</th><th>Scenario</th><th>Bounds used</th><th>Result</th><th>Evidence</th></tr>
{{range .Threats}}{{$t := .}}{{if .Scenarios}}{{range $i, $s := .Scenarios}}<tr>
{{if eq $i 0}}<td rowspan="{{len $t.Scenarios}}"><b>{{$t.ID}}</b> {{$t.Title}}</td><td rowspan="{{len $t.Scenarios}}"><code>{{$t.Defence}}</code></td>{{end}}
<td><b>{{$s.ID}}</b> ({{$s.Mode}})<br>{{$s.Title}}</td><td>{{$s.Bounds}}</td><td class="{{$s.Verdict}}">{{$s.Verdict}}<br>{{$s.Duration}}</td><td>{{$s.Evidence}}</td>
</tr>{{end}}{{else}}<tr><td><b>{{.ID}}</b> {{.Title}}</td><td><code>{{.Defence}}</code></td><td colspan="4" class="none">{{.Status}}{{if .Note}}: {{.Note}}{{end}}</td></tr>{{end}}
{{end}}</table>
</body></html>
`))

// RenderHTML writes a self-contained page (no scripts, no external
// resources): per threat of the model, the code that defends it and each
// scenario run against it, with its bounds, verdict and evidence line.
// Threats whose scenarios did not run here say why.
func RenderHTML(w io.Writer, reports []Report, info RunInfo) error {
	ran := map[string][]Report{}
	for _, r := range reports {
		for _, th := range r.Scenario.Threats {
			ran[th] = append(ran[th], r)
		}
	}
	n := tally(reports)
	defences := Defences()
	var threats []reportThreat
	for _, th := range Threats() {
		rt := reportThreat{ID: th.ID, Title: th.Title, Status: th.Status.String(), Note: th.Note, Defence: defences[th.ID]}
		if th.Status == Verified && len(ran[th.ID]) == 0 {
			rt.Status, rt.Note = "not run here", "its scenarios are local-only or were not selected"
		}
		reps := ran[th.ID]
		sort.SliceStable(reps, func(i, j int) bool { return reps[i].Scenario.ID < reps[j].Scenario.ID })
		for _, r := range reps {
			b := r.Scenario.Bounds
			if b == "" {
				b = "local relay of its own"
			}
			ev := r.Result.Evidence
			if r.Proxy != nil {
				ev = fmt.Sprintf("[tests the %s behind a TLS-terminating proxy: %s] %s", r.Proxy.Tests, r.Proxy.Why, ev)
			}
			rt.Scenarios = append(rt.Scenarios, reportScenario{ID: r.Scenario.ID, Title: r.Scenario.Title, Mode: r.Scenario.Mode.String(),
				Bounds: b, Verdict: r.Result.Verdict.String(), Evidence: ev, Duration: r.Duration.Round(time.Millisecond).String()})
		}
		threats = append(threats, rt)
	}
	return reportTmpl.Execute(w, map[string]any{
		"Target": info.Target, "Started": info.Started.UTC().Format(time.RFC3339), "Duration": info.Duration.Round(time.Millisecond).String(),
		"Passed": n[Pass], "Failed": n[Fail], "Skipped": n[Skip], "NotRun": n[CouldNotRun], "Total": len(reports), "Threats": threats,
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
