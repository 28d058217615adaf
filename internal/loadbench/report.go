package loadbench

import (
	"fmt"
	"io"
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

// Targets evaluates the targets on rep's comparisons.
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
	var ts []Target
	ts = append(ts,
		floor("CPU/msg ratio, 512 B phone->binary", find(StreamP2B, 512, 16, 0), 0.9),
		floor("CPU/msg ratio, 512 B binary->phone", find(StreamB2P, 512, 16, 0), 0.9),
		floor("CPU/msg ratio, 16 KiB phone->binary", find(StreamP2B, 16<<10, 16, 0), 0.6),
		floor("CPU/msg ratio, 16 KiB binary->phone", find(StreamB2P, 16<<10, 16, 0), 0.9),
	)
	pp := Target{What: "ping-pong p99, relay / forwarder, 64 pairs", Goal: "<= 1.50"}
	if c := find(PingPong, 512, 64, 0); c != nil && c.P99Ratio.N > 0 {
		pp.Found, pp.Value, pp.Met = true, c.P99Ratio.Median, c.P99Ratio.Median <= 1.5
	}
	ts = append(ts, pp)
	rss := Target{What: "RSS per idle connection (KiB), 10,000 conns, heartbeats on", Goal: "<= 27"}
	cpu := Target{What: "heartbeat CPU, 10,000 idle conns (% of a core)", Goal: "< 1"}
	growth := Target{What: "RSS growth over the idle window (KiB/conn)", Goal: "flat (< 0.5)"}
	if c := find(Idle, 0, 0, 10000); c != nil && c.Relay.RSSPerConnKiB > 0 {
		rss.Found, rss.Value, rss.Met = true, c.Relay.RSSPerConnKiB, c.Relay.RSSPerConnKiB <= 27
		cpu.Found, cpu.Value, cpu.Met = true, c.Relay.IdleCPUPercent, c.Relay.IdleCPUPercent < 1
		growth.Found, growth.Value, growth.Met = true, c.Relay.RSSGrowthKiB, c.Relay.RSSGrowthKiB < 0.5
	}
	return append(ts, rss, cpu, growth)
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
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tforwarder\trelay\tCPU ratio (fwd/relay per msg)\tthroughput ratio\tp99 ratio\tcycles\tmachine busy (relay runs)")
	for _, c := range rep.Comparisons {
		if c.Workload.Kind == Idle {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", c.Workload.Name(), figures(c.Forwarder), figures(c.Relay),
			ratioText(c.CPURatio), ratioText(c.ThroughputRatio), ratioText(c.P99Ratio), c.CPURatio.N, busyText(rep, c.Workload, kindRelay))
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
			fmt.Fprintln(tw, "idle\tforwarder KiB/conn\trelay KiB/conn\tRSS ratio\trelay growth KiB/conn (window)\trelay heartbeat CPU\tset-up conns/s (fwd / relay)")
		}
		fmt.Fprintf(tw, "%d conns\t%.1f\t%.1f\t%s\t%+.2f (%.0f s)\t%.3f%% of a core\t%.0f / %.0f\n", c.Workload.Conns,
			c.Forwarder.RSSPerConnKiB, c.Relay.RSSPerConnKiB, ratioText(c.RSSRatio), c.Relay.RSSGrowthKiB,
			c.Relay.IdleSeconds, c.Relay.IdleCPUPercent, c.Forwarder.SetupPerSec, c.Relay.SetupPerSec)
	}
	if idle {
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
	fmt.Fprintf(w, "Run %s on %s, %d CPUs, %s, Linux %s; servers pinned: %v, GOMAXPROCS=%d; load average %.1f before and %.1f after.\n\n",
		rep.Started.Format("2006-01-02 15:04 UTC"), m.CPUModel, m.CPUs, m.GoVersion, m.Kernel, m.Pinned, m.GOMAXPROCS, rep.LoadBefore, rep.LoadAfter)
	fmt.Fprintln(w, "| workload | forwarder | relay | CPU ratio (forwarder ÷ relay per message) | throughput ratio | p99 ratio | cycles |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, c := range rep.Comparisons {
		if c.Workload.Kind == Idle {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %d |\n", c.Workload.Name(), figures(c.Forwarder), figures(c.Relay),
			ratioText(c.CPURatio), ratioText(c.ThroughputRatio), ratioText(c.P99Ratio), c.CPURatio.N)
	}
	idle := false
	for _, c := range rep.Comparisons {
		if c.Workload.Kind != Idle {
			continue
		}
		if !idle {
			idle = true
			fmt.Fprintln(w, "\n| idle connections | forwarder KiB/conn | relay KiB/conn | RSS ratio | relay RSS growth, KiB/conn (window) | relay CPU while idle | set-up conns/s (forwarder / relay) |")
			fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
		}
		fmt.Fprintf(w, "| %d | %.1f | %.1f | %s | %+.2f (%.0f s) | %.3f %% of a core | %.0f / %.0f |\n", c.Workload.Conns,
			c.Forwarder.RSSPerConnKiB, c.Relay.RSSPerConnKiB, ratioText(c.RSSRatio), c.Relay.RSSGrowthKiB,
			c.Relay.IdleSeconds, c.Relay.IdleCPUPercent, c.Forwarder.SetupPerSec, c.Relay.SetupPerSec)
	}
	fmt.Fprintln(w, "\n| target | goal | measured | met |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, t := range Targets(rep) {
		if t.Found {
			fmt.Fprintf(w, "| %s | %s | %.3f | %s |\n", t.What, t.Goal, t.Value, map[bool]string{true: "yes", false: "**no**"}[t.Met])
		}
	}
	return nil
}
