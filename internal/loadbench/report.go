package loadbench

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// Target is one of issue 16's goals, checked against a report.
type Target struct {
	What  string  `json:"what"`
	Goal  string  `json:"goal"`
	Value float64 `json:"value"`
	Met   bool    `json:"met"`
	Found bool    `json:"found"` // the report holds the workload
}

// Targets evaluates issue 22's targets on rep's comparisons.
func Targets(rep *Report) []Target {
	find := func(kind string, size, pairs, conns int) *Comparison {
		for i := range rep.Comparisons {
			w := rep.Comparisons[i].Workload
			if w.Kind == kind && (size == 0 || w.Size == size) && (pairs == 0 || w.Binaries*w.PhonesPer == pairs) && (conns == 0 || w.Conns == conns) {
				return &rep.Comparisons[i]
			}
		}
		return nil
	}
	floor := func(what string, c *Comparison, goal float64) Target {
		t := Target{What: what, Goal: fmt.Sprintf(">= %.2f", goal)}
		if c != nil && c.CPURatio.N > 0 {
			t.Found, t.Value, t.Met = true, c.CPURatio.Median, c.CPURatio.Median >= goal
		}
		return t
	}
	// minFloor is the smallest ratio of a direction over the size sweep
	// (16 pairs, 128 B to 1 MiB).
	minFloor := func(what, kind string, goal float64) Target {
		t := Target{What: what, Goal: fmt.Sprintf(">= %.2f at every size", goal)}
		for _, c := range rep.Comparisons {
			w := c.Workload
			if w.Kind != kind || w.Binaries*w.PhonesPer != 16 || c.CPURatio.N == 0 || w.Size < 128 || w.Size > 1<<20 {
				continue
			}
			if !t.Found || c.CPURatio.Median < t.Value {
				t.Value = c.CPURatio.Median
				t.What = fmt.Sprintf("%s (lowest: %s)", what, sizeLabel(w.Size))
			}
			t.Found = true
		}
		t.Met = t.Found && t.Value >= goal
		return t
	}
	var ts []Target
	ts = append(ts,
		floor("CPU/msg ratio, 512 B phone->binary", find(StreamP2B, 512, 16, 0), 0.9),
		floor("CPU/msg ratio, 512 B binary->phone", find(StreamB2P, 512, 16, 0), 0.9),
		floor("CPU/msg ratio, 16 KiB phone->binary", find(StreamP2B, 16<<10, 16, 0), 0.9),
		floor("CPU/msg ratio, 16 KiB binary->phone", find(StreamB2P, 16<<10, 16, 0), 0.9),
		minFloor("CPU/msg ratio, 128 B-1 MiB phone->binary", StreamP2B, 0.85),
		minFloor("CPU/msg ratio, 128 B-1 MiB binary->phone", StreamB2P, 0.85),
	)
	pp := Target{What: "ping-pong p99, relay / forwarder, 64 pairs", Goal: "<= 1.20"}
	if c := find(PingPong, 512, 64, 0); c != nil && c.P99Ratio.N > 0 {
		pp.Found, pp.Value, pp.Met = true, c.P99Ratio.Median, c.P99Ratio.Median <= 1.2
	}
	ts = append(ts, pp)
	rss := Target{What: "RSS per idle connection (KiB), 10,000 conns, heartbeats on", Goal: "<= 27"}
	cpu := Target{What: "heartbeat CPU, 10,000 idle conns (% of a core)", Goal: "< 1"}
	perPing := Target{What: "relay CPU per ping, 10,000 idle conns (µs)", Goal: "< 30"}
	growth := Target{What: "RSS growth over two heartbeat periods (KiB/conn)", Goal: "flat (< 0.5)"}
	if c := find(Idle, 0, 0, 10000); c != nil && c.Relay.RSSPerConnKiB > 0 {
		rss.Found, rss.Value, rss.Met = true, c.Relay.RSSPerConnKiB, c.Relay.RSSPerConnKiB <= 27
		cpu.Found, cpu.Value, cpu.Met = true, c.Relay.IdleCPUPercent, c.Relay.IdleCPUPercent < 1
		if c.Relay.CPUPerPingUS > 0 {
			perPing.Found, perPing.Value, perPing.Met = true, c.Relay.CPUPerPingUS, c.Relay.CPUPerPingUS < 30
		}
		growth.Found, growth.Value, growth.Met = true, c.Relay.RSSGrowthKiB, c.Relay.RSSGrowthKiB < 0.5
	}
	return append(ts, rss, cpu, perPing, growth)
}

// loadLine says what the machine did besides the run.
func loadLine(rep *Report) string {
	state := "quiet"
	if rep.Busy {
		state = "BUSY"
		if rep.Forced {
			state = "BUSY (written with --force)"
		}
	}
	return fmt.Sprintf("other processes took at most %.1f%% of the CPUs during any measured window (%s; the limit is %.0f%%)",
		rep.OthersMax*100, state, BusyThreshold*100)
}

// RenderTable writes the report as readable tables.
func RenderTable(w io.Writer, rep *Report) error {
	m := rep.Machine
	fmt.Fprintf(w, "relay-bench  %s\n", rep.Started.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "machine: %s, %d CPUs, %s, Linux %s; servers pinned=%v GOMAXPROCS=%d; loadavg %.1f before, %.1f after\n",
		m.CPUModel, m.CPUs, m.GoVersion, m.Kernel, m.Pinned, m.GOMAXPROCS, rep.LoadBefore, rep.LoadAfter)
	if rep.Command != "" {
		fmt.Fprintf(w, "command: %s\n", rep.Command)
	}
	fmt.Fprintf(w, "load: %s\n", loadLine(rep))
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tforwarder\trelay\tCPU ratio (fwd/relay per msg)\tthroughput ratio\tp99 ratio\tsyscalls/msg (fwd / relay)\tcycles\tmachine busy (relay runs)")
	for _, c := range rep.Comparisons {
		if c.Workload.Kind == Idle {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.2f / %.2f\t%d\t%s\n", c.Workload.Name(), figures(c.Forwarder), figures(c.Relay),
			ratioText(c.CPURatio), ratioText(c.ThroughputRatio), ratioText(c.P99Ratio), c.Forwarder.SyscallsPerMsg, c.Relay.SyscallsPerMsg, c.CPURatio.N, busyText(rep, c.Workload, kindRelay))
	}
	tw.Flush()
	idle := false
	for _, c := range rep.Comparisons {
		if c.Workload.Kind != Idle {
			continue
		}
		if !idle {
			idle = true
			fmt.Fprintln(w)
			tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "idle\tforwarder KiB/conn\trelay KiB/conn\tRSS ratio\trelay growth KiB/conn (window)\trelay heartbeat CPU\tper ping\tset-up conns/s (fwd / relay)\trelay Go stacks / heap KiB/conn")
		}
		fmt.Fprintf(tw, "%d conns\t%.1f\t%.1f\t%s\t%+.2f (%.0f s)\t%.3f%% of a core\t%.1f µs\t%.0f / %.0f\t%s\n", c.Workload.Conns,
			c.Forwarder.RSSPerConnKiB, c.Relay.RSSPerConnKiB, ratioText(c.RSSRatio), c.Relay.RSSGrowthKiB,
			c.Relay.IdleSeconds, c.Relay.IdleCPUPercent, c.Relay.CPUPerPingUS, c.Forwarder.SetupPerSec, c.Relay.SetupPerSec, goMem(c.Relay))
	}
	if idle {
		tw.Flush()
	}
	if len(rep.InstrComparisons) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "instructions (user space, valgrind)\tforwarder\trelay\tratio (fwd/relay)\trelay_b\trelay / relay_b")
		for _, c := range rep.InstrComparisons {
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%s\t%s\t%s\n", c.Workload.Name(), orDash(c.Forwarder, "%.0f"), c.Relay,
				orDash(c.Ratio, "%.2f"), orDash(c.RelayB, "%.0f"), orDash(c.RatioB, "%.3f"))
		}
		tw.Flush()
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "target\tgoal\tmeasured\tmet")
	for _, t := range Targets(rep) {
		if !t.Found {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t%v\n", t.What, t.Goal, t.Value, t.Met)
	}
	tw.Flush()
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}

func figures(r Result) string {
	if r.Workload.Kind == PingPong {
		return fmt.Sprintf("%.1fk rt/s, %.2f µs/msg, p99 %.2f ms", r.MsgPerSec/1000, r.CPUPerMsgUS, r.RTTP99MS)
	}
	return fmt.Sprintf("%.1fk msg/s, %.1f MB/s, %.2f µs/msg", r.MsgPerSec/1000, r.MBPerSec, r.CPUPerMsgUS)
}

func ratioText(r Ratio) string {
	if r.N == 0 {
		return "-"
	}
	if r.N == 1 {
		return fmt.Sprintf("%.2f", r.Median)
	}
	return fmt.Sprintf("%.2f (%.2f-%.2f)", r.Median, r.Min, r.Max)
}

// busyText is the machine's per-CPU busy share during a workload's relay
// runs, so a reader can see how much else shared the cores.
func busyText(rep *Report, w Workload, server string) string {
	var parts []string
	for _, r := range rep.Results {
		if r.Server != server || r.Workload != w {
			continue
		}
		var cpus []string
		for _, b := range r.MachineBusy {
			cpus = append(cpus, fmt.Sprintf("%.0f%%", b*100))
		}
		parts = append(parts, strings.Join(cpus, "/"))
	}
	return strings.Join(parts, " ")
}

// RenderMarkdown writes the report's tables in Markdown, as
// docs/performance.md shows them.
func RenderMarkdown(w io.Writer, rep *Report) error {
	m := rep.Machine
	fmt.Fprintf(w, "Run %s on %s, %d CPUs, %s, Linux %s; servers pinned: %v, GOMAXPROCS=%d; load average %.1f before and %.1f after; %s.\n\n",
		rep.Started.Format("2006-01-02 15:04 UTC"), m.CPUModel, m.CPUs, m.GoVersion, m.Kernel, m.Pinned, m.GOMAXPROCS, rep.LoadBefore, rep.LoadAfter, loadLine(rep))
	if rep.Busy {
		fmt.Fprintf(w, "**These figures were taken on a busy machine** (other processes took up to %.0f%% of the CPUs): compare the ratios, not the absolute figures.\n\n", rep.OthersMax*100)
	}
	traffic := false
	for _, c := range rep.Comparisons {
		if c.Workload.Kind == Idle {
			continue
		}
		if !traffic {
			traffic = true
			fmt.Fprintln(w, "| workload | forwarder | relay | CPU ratio (forwarder ÷ relay per message) | throughput ratio | p99 ratio | system calls per message (forwarder / relay) | cycles |")
			fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %.2f / %.2f | %d |\n", c.Workload.Name(), figures(c.Forwarder), figures(c.Relay),
			ratioText(c.CPURatio), ratioText(c.ThroughputRatio), ratioText(c.P99Ratio), c.Forwarder.SyscallsPerMsg, c.Relay.SyscallsPerMsg, c.CPURatio.N)
	}
	idle := false
	for _, c := range rep.Comparisons {
		if c.Workload.Kind != Idle {
			continue
		}
		if !idle {
			idle = true
			fmt.Fprintln(w, "\n| idle connections | forwarder KiB/conn | relay KiB/conn | RSS ratio | relay RSS growth, KiB/conn (window) | relay CPU while idle | relay CPU per ping | set-up conns/s (forwarder / relay) | relay's Go stacks / heap, KiB/conn |")
			fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
		}
		fmt.Fprintf(w, "| %d | %.1f | %.1f | %s | %+.2f (%.0f s) | %.3f %% of a core | %.1f µs | %.0f / %.0f | %s |\n", c.Workload.Conns,
			c.Forwarder.RSSPerConnKiB, c.Relay.RSSPerConnKiB, ratioText(c.RSSRatio), c.Relay.RSSGrowthKiB,
			c.Relay.IdleSeconds, c.Relay.IdleCPUPercent, c.Relay.CPUPerPingUS, c.Forwarder.SetupPerSec, c.Relay.SetupPerSec, goMem(c.Relay))
	}
	if len(rep.InstrComparisons) > 0 {
		fmt.Fprintln(w, "\n| instructions per message (user space, callgrind) | forwarder | relay | ratio (forwarder ÷ relay) | relay_b | relay ÷ relay_b |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|")
		for _, c := range rep.InstrComparisons {
			name := c.Workload.Name()
			if c.Workload.Kind == Ping {
				name += " (per ping)"
			}
			fmt.Fprintf(w, "| %s | %s | %.0f | %s | %s | %s |\n", name, orDash(c.Forwarder, "%.0f"), c.Relay,
				orDash(c.Ratio, "%.2f"), orDash(c.RelayB, "%.0f"), orDash(c.RatioB, "%.3f"))
		}
	}
	renderParts(w, rep)
	fmt.Fprintln(w, "\n| target | goal | measured | met |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, t := range Targets(rep) {
		if t.Found {
			fmt.Fprintf(w, "| %s | %s | %.3f | %s |\n", t.What, t.Goal, t.Value, map[bool]string{true: "yes", false: "**no**"}[t.Met])
		}
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "\nNote: %s\n", n)
	}
	return nil
}

// goMem is the relay's own account of an idle connection's memory.
func goMem(r Result) string {
	m, n := r.MemSettled, float64(max(r.ConnsHeld, 1))
	if m == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f / %.1f", m.StackInuse/n/1024, m.HeapInuse/n/1024)
}

func orDash(v float64, format string) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

// Doc markers: UpdateDoc replaces what lies between them.
const (
	docBegin = "<!-- relay-bench:tables -->"
	docEnd   = "<!-- /relay-bench:tables -->"
)

// UpdateDoc replaces the tables between the markers of a Markdown file
// (docs/performance.md) with rep's, so that one run rewrites every figure
// the document shows.
func UpdateDoc(path string, rep *Report) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, docBegin), strings.Index(s, docEnd)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %s ... %s block", path, docBegin, docEnd)
	}
	var t strings.Builder
	_ = RenderMarkdown(&t, rep)
	out := s[:i+len(docBegin)] + "\n\n" + t.String() + "\n" + s[j:]
	return os.WriteFile(path, []byte(out), 0o644)
}

// renderParts writes where the instructions per message go, relay against
// forwarder, for each workload of the instruction suite.
func renderParts(w io.Writer, rep *Report) {
	type key struct{ w, server string }
	by := map[key]InstrResult{}
	var names []string
	for _, r := range rep.Instr {
		if r.Parts == nil || (r.Server != kindRelay && r.Server != kindForwarder) {
			continue
		}
		k := key{r.Workload.Name(), r.Server}
		if _, ok := by[key{r.Workload.Name(), kindRelay}]; !ok {
			if _, ok := by[key{r.Workload.Name(), kindForwarder}]; !ok {
				names = append(names, r.Workload.Name())
			}
		}
		by[k] = r
	}
	if len(names) == 0 {
		return
	}
	fmt.Fprint(w, "\n| instructions per message by part: relay / forwarder |")
	for _, p := range partOrder {
		fmt.Fprintf(w, " %s |", p)
	}
	fmt.Fprint(w, "\n|---|")
	for range partOrder {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprintln(w)
	for _, n := range names {
		fmt.Fprintf(w, "| %s |", n)
		for _, p := range partOrder {
			rel, fwd := by[key{n, kindRelay}].Parts[p], by[key{n, kindForwarder}].Parts[p]
			if fwd == 0 && by[key{n, kindForwarder}].Parts == nil {
				fmt.Fprintf(w, " %.0f |", rel)
			} else {
				fmt.Fprintf(w, " %.0f / %.0f |", rel, fwd)
			}
		}
		fmt.Fprintln(w)
	}
}
