package loadbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Config is one harness invocation.
type Config struct {
	// RelayBin is the relay binary to start; empty builds ./cmd/relay of
	// the module the working directory is in.
	RelayBin string
	// Target is a running relay's ws:// or wss:// base URL instead of one
	// the harness starts. Its CPU and memory cannot be read, so only
	// throughput and round trips are reported for it.
	Target string
	// ForwarderArgv starts the baseline forwarder process (the harness
	// re-executes itself; see ForwarderEnv).
	ForwarderArgv []string
	Suite         string        // table, sizes, conns, all, smoke
	Cycles        int           // paired relay/forwarder repetitions
	Warmup, Run   time.Duration // per traffic run
	Idle          time.Duration // idle window per idle run
	Settle        time.Duration // idle runs: pause between connecting and the first RSS reading (0: 2 s)
	PingInterval  time.Duration // the relay's --ping-interval for idle runs
	Pin           bool          // pin servers to the last CPU and the load to the first
	GOMAXPROCS    int           // for the server processes (0: leave)
	Conns         []int         // idle sweep (conns suite)
	Sizes         []int         // size sweep (sizes suite)
	InstrSizes    []int         // message sizes of the instruction suite
	// RelayB is a second relay binary (a PGO build, a change) measured
	// by the instruction suite beside RelayBin, as relay_b.
	RelayB string
	// CPUProfile, for the pgo suite: the relay (built with -tags
	// relay_cpuprofile) writes its CPU profile of the traffic runs here.
	CPUProfile string
	// CallgrindDir keeps the instruction suite's callgrind dumps there
	// (callgrind_annotate reads them).
	CallgrindDir string
	Only         *regexp.Regexp // run only the workloads whose Name matches (nil: all)
	Progress     io.Writer      // one line per run; nil discards
	Command      string         // the command line, recorded in the report
}

// ForwarderEnv, set to a listen address in a process's environment, makes
// the harness's command (or test binary) serve the baseline forwarder.
const ForwarderEnv = "RELAY_BENCH_FORWARDER"

// Report is everything one invocation measured.
type Report struct {
	Command     string       `json:"command"`
	Started     time.Time    `json:"started"`
	Machine     Machine      `json:"machine"`
	LoadBefore  float64      `json:"loadavg_before"`
	LoadAfter   float64      `json:"loadavg_after"`
	Results     []Result     `json:"results"`
	Comparisons []Comparison `json:"comparisons"`
	// Instr are the instruction suite's counts (valgrind), load-independent.
	Instr            []InstrResult     `json:"instructions,omitempty"`
	InstrComparisons []InstrComparison `json:"instruction_comparisons,omitempty"`
	Notes            []string          `json:"notes,omitempty"`
	// OthersMax is the largest share of the machine's CPUs that other
	// processes took during any measured window; Busy is OthersMax over
	// BusyThreshold: figures taken so are not a quiet machine's.
	OthersMax float64 `json:"others_max"`
	Busy      bool    `json:"busy"`
	// Forced: written although Busy (relay-bench --force).
	Forced bool `json:"forced,omitempty"`
}

// BusyThreshold is the share of the CPUs other processes may take during a
// measured window before a report counts as taken on a busy machine.
const BusyThreshold = 0.10

// settleBusy sets OthersMax and Busy from the results.
func (rep *Report) settleBusy() {
	rep.OthersMax = 0
	for _, r := range rep.Results {
		rep.OthersMax = max(rep.OthersMax, r.OthersShare)
	}
	rep.Busy = rep.OthersMax > BusyThreshold
}

// Machine describes where the figures were taken.
type Machine struct {
	CPUModel   string `json:"cpu_model"`
	CPUs       int    `json:"cpus"`
	GoVersion  string `json:"go_version"`
	Kernel     string `json:"kernel"`
	Pinned     bool   `json:"pinned"`
	GOMAXPROCS int    `json:"server_gomaxprocs"`
	FileLimit  uint64 `json:"file_limit"`
}

// Suites.
func tableWorkloads() []Workload {
	return []Workload{
		{Kind: StreamP2B, Size: 512, Binaries: 1, PhonesPer: 16, InFlight: 8},
		{Kind: StreamB2P, Size: 512, Binaries: 1, PhonesPer: 16, InFlight: 8},
		{Kind: StreamP2B, Size: 16 << 10, Binaries: 1, PhonesPer: 16, InFlight: 8},
		{Kind: StreamB2P, Size: 16 << 10, Binaries: 1, PhonesPer: 16, InFlight: 8},
		{Kind: PingPong, Size: 512, Binaries: 4, PhonesPer: 16},
	}
}

func sizeWorkloads(sizes []int) []Workload {
	var ws []Workload
	for _, kind := range []string{StreamP2B, StreamB2P} {
		for _, s := range sizes {
			ws = append(ws, Workload{Kind: kind, Size: s, Binaries: 1, PhonesPer: 16, InFlight: 8})
		}
	}
	return ws
}

// DefaultSizes and DefaultConns are the sweeps of docs/performance.md.
var (
	DefaultSizes = []int{128, 512, 2 << 10, 8 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20}
	DefaultConns = []int{1000, 10000, 50000}
)

// Run executes cfg's suite and returns the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Cycles < 1 {
		cfg.Cycles = 1
	}
	progress := cfg.Progress
	if progress == nil {
		progress = io.Discard
	}
	say := func(line string) { fmt.Fprintln(progress, line) }
	rep := &Report{Command: cfg.Command, Started: time.Now().UTC(), LoadBefore: loadAvg()}
	defer func() { rep.LoadAfter = loadAvg() }()
	defer rep.settleBusy()
	rep.Machine = Machine{CPUModel: cpuModel(), CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		Kernel: kernel(), GOMAXPROCS: cfg.GOMAXPROCS, FileLimit: raiseFileLimit()}

	serverCPU, loadCPU := -1, -1
	if cfg.Pin && runtime.NumCPU() >= 2 {
		serverCPU, loadCPU = runtime.NumCPU()-1, 0
		rep.Machine.Pinned = true
	}
	env := []string{}
	if cfg.GOMAXPROCS > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(cfg.GOMAXPROCS))
	}
	if loadCPU >= 0 {
		pinProcess(os.Getpid(), loadCPU)
	}

	relayBin := cfg.RelayBin
	if relayBin == "" && cfg.Target == "" {
		root, err := moduleRoot()
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp("", "relay-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		relayBin = filepath.Join(dir, "relay")
		fmt.Fprintf(progress, "building %s/cmd/relay\n", root)
		if err := buildRelay(ctx, root, relayBin); err != nil {
			return nil, err
		}
	}
	// startRelayBin starts bin (under prefix, e.g. valgrind) with the
	// heartbeat at ping; the caps are lifted so that the sweeps' loopback
	// connections and 1 MiB frames (16 phones x 8 in flight) are admitted.
	startRelayBin := func(bin, kind string, prefix, extraEnv []string, ping time.Duration) (*proc, error) {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		maddr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		argv := append(append([]string{}, prefix...), bin, "serve", "--insecure-listen", addr,
			"--metrics-listen", maddr, "--log-level", "warn", "--ping-interval", ping.String())
		argv = append(argv, relayLimits...)
		p, err := startProc(ctx, kind, addr, serverCPU, append(append([]string{}, env...), extraEnv...), argv...)
		if p != nil {
			p.memURL = "http://" + maddr + "/metrics"
		}
		return p, err
	}
	startRelay := func(ping time.Duration) (*proc, error) {
		return startRelayBin(relayBin, kindRelay, nil, nil, ping)
	}
	startForwarderWith := func(prefix, extraEnv []string) (*proc, error) {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		argv := append(append([]string{}, prefix...), cfg.ForwarderArgv...)
		p, err := startProc(ctx, kindForwarder, addr, serverCPU, append(append(append([]string{}, env...), extraEnv...), ForwarderEnv+"="+addr), argv...)
		if p != nil {
			p.memURL = "http://" + addr + "/memstats"
		}
		return p, err
	}
	startForwarder := func() (*proc, error) { return startForwarderWith(nil, nil) }
	d := newDialer(64)

	// Traffic workloads share one relay and one forwarder process.
	var traffic, idle, instr []Workload
	idleSweep := func(conns []int) {
		for _, n := range conns {
			idle = append(idle, Workload{Kind: Idle, Conns: n, PhonesPer: 16})
		}
	}
	switch cfg.Suite {
	case "table":
		traffic = tableWorkloads()
		idleSweep([]int{10000})
	case "sizes":
		traffic = sizeWorkloads(orDefault(cfg.Sizes, DefaultSizes))
	case "conns":
		idleSweep(orDefault(cfg.Conns, DefaultConns))
	case "instr":
		instr = instrWorkloads(orDefault(cfg.InstrSizes, DefaultInstrSizes))
	case "pgo":
		// The profile for profile-guided optimisation: the table's and
		// the size sweep's traffic, as make perf runs it, on the relay.
		if cfg.CPUProfile == "" {
			return nil, errors.New("the pgo suite needs a CPU profile path (--cpuprofile)")
		}
		traffic = tableWorkloads()
		for _, w := range sizeWorkloads([]int{128, 2 << 10, 64 << 10}) {
			if !slices.Contains(traffic, w) {
				traffic = append(traffic, w)
			}
		}
	case "all":
		traffic = tableWorkloads()
		for _, w := range sizeWorkloads(orDefault(cfg.Sizes, DefaultSizes)) {
			if !slices.Contains(traffic, w) {
				traffic = append(traffic, w)
			}
		}
		idleSweep(orDefault(cfg.Conns, DefaultConns))
		instr = instrWorkloads(orDefault(cfg.InstrSizes, DefaultInstrSizes))
	case "smoke":
		traffic = []Workload{
			{Kind: StreamP2B, Size: 512, Binaries: 1, PhonesPer: 2, InFlight: 4},
			{Kind: StreamB2P, Size: 512, Binaries: 1, PhonesPer: 2, InFlight: 4},
			{Kind: PingPong, Size: 512, Binaries: 1, PhonesPer: 2},
		}
		idle = []Workload{{Kind: Idle, Conns: 20, PhonesPer: 4}}
	default:
		return nil, fmt.Errorf("unknown suite %q (table, sizes, conns, instr, all, smoke)", cfg.Suite)
	}
	if cfg.Only != nil {
		keep := func(ws []Workload) []Workload {
			return slices.DeleteFunc(ws, func(w Workload) bool { return !cfg.Only.MatchString(w.Name()) })
		}
		traffic, idle, instr = keep(traffic), keep(idle), keep(instr)
	}

	if len(traffic) > 0 {
		var relay *proc
		rt := target{kind: kindRelay, base: cfg.Target}
		if cfg.Target == "" {
			var err error
			var extra []string
			if cfg.CPUProfile != "" {
				extra = []string{"PGO_CPUPROFILE=" + cfg.CPUProfile}
			}
			if relay, err = startRelayBin(relayBin, kindRelay, nil, extra, 30*time.Second); err != nil {
				return nil, err
			}
			defer relay.stop()
			rt = target{kind: kindRelay, base: "ws://" + relay.addr, pid: relay.pid}
		}
		fwd, err := startForwarder()
		if err != nil {
			return nil, err
		}
		defer fwd.stop()
		ft := target{kind: kindForwarder, base: "ws://" + fwd.addr, pid: fwd.pid}
		seq := 0
		for cycle := 1; cycle <= cfg.Cycles; cycle++ {
			for _, w := range traffic {
				// Back to back, alternating which goes first, so drift in
				// the machine's other load falls on both alike.
				order := []target{ft, rt}
				if cycle%2 == 0 {
					order = []target{rt, ft}
				}
				for _, t := range order {
					seq++
					r, err := runTraffic(ctx, d, t, w, fmt.Sprintf("c%d-%d", cycle, seq), cfg.Warmup, cfg.Run)
					if err != nil {
						return rep, fmt.Errorf("%s, %s, cycle %d: %w", w.Name(), t.kind, cycle, err)
					}
					r.Cycle = cycle
					rep.Results = append(rep.Results, r)
					say(progressLine(r))
					sleepCtx(ctx, 100*time.Millisecond) // closes settle
				}
			}
		}
		if cfg.CPUProfile != "" {
			if err := relay.flushProfile(cfg.CPUProfile); err != nil {
				return rep, err
			}
		}
		relay.stop()
		fwd.stop()
	}

	settle := cfg.Settle
	if settle <= 0 {
		settle = 2 * time.Second
	}
	if cfg.Target != "" && len(idle) > 0 {
		rep.Notes = append(rep.Notes, "idle runs need a local relay process and were skipped for --target")
		idle = nil
	}
	largest := 0
	for _, w := range idle {
		// Each side holds one descriptor per connection (the harness its
		// clients, the server its sockets), plus a few. A point over the
		// limit is measured at the most the limit allows instead, if that
		// is above the points before it.
		if need := uint64(w.Conns) + fdSlack; rep.Machine.FileLimit < need {
			most := 0
			if rep.Machine.FileLimit > fdSlack {
				most = int(rep.Machine.FileLimit-fdSlack) / 1000 * 1000
			}
			note := fmt.Sprintf("idle %d conns needs `ulimit -n` of at least %d on both sides; the hard limit here is %d", w.Conns, need, rep.Machine.FileLimit)
			if most <= largest {
				rep.Notes = append(rep.Notes, note+": skipped")
				say(rep.Notes[len(rep.Notes)-1])
				continue
			}
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s: measured at %d instead", note, most))
			say(rep.Notes[len(rep.Notes)-1])
			w.Conns = most
		}
		largest = w.Conns
		// The forwarder first: it has no heartbeat, so its window only
		// needs to show the memory is flat.
		fr, err := runIdle(ctx, d, w, kindForwarder, min(cfg.Idle, 10*time.Second), settle, 0, startForwarder)
		if err != nil {
			return rep, fmt.Errorf("%s, forwarder: %w", w.Name(), err)
		}
		fr.Cycle = 1
		rep.Results = append(rep.Results, fr)
		say(progressLine(fr))
		rr, err := runIdle(ctx, d, w, kindRelay, cfg.Idle, settle, cfg.PingInterval, func() (*proc, error) { return startRelay(cfg.PingInterval) })
		if err != nil {
			return rep, fmt.Errorf("%s, relay: %w", w.Name(), err)
		}
		rr.Cycle = 1
		rep.Results = append(rep.Results, rr)
		say(progressLine(rr))
	}
	rep.Comparisons = compare(rep.Results)

	if len(instr) > 0 && cfg.Target == "" {
		if err := haveValgrind(); err != nil {
			rep.Notes = append(rep.Notes, "instruction suite skipped: "+err.Error())
			say("skipped: " + rep.Notes[len(rep.Notes)-1])
		} else {
			servers := []instrServer{
				{kind: kindForwarder, start: func(prefix, extraEnv []string, _ time.Duration) (*proc, error) {
					return startForwarderWith(prefix, extraEnv)
				}},
				{kind: kindRelay, binary: relayBin, pings: true, start: func(prefix, extraEnv []string, ping time.Duration) (*proc, error) {
					return startRelayBin(relayBin, kindRelay, prefix, extraEnv, ping)
				}},
			}
			if cfg.RelayB != "" {
				servers = append(servers, instrServer{kind: kindRelayB, binary: cfg.RelayB, pings: true,
					start: func(prefix, extraEnv []string, ping time.Duration) (*proc, error) {
						return startRelayBin(cfg.RelayB, kindRelayB, prefix, extraEnv, ping)
					}})
			}
			if err := runInstr(ctx, d, rep, instr, servers, cfg.CallgrindDir, say); err != nil {
				return rep, fmt.Errorf("instruction suite: %w", err)
			}
		}
	}
	return rep, ctx.Err()
}

// fdSlack is the descriptors a side needs beyond one per connection.
const fdSlack = 300

// relayLimits lift the relay's admission caps (every sweep connects from
// loopback, tens of thousands of sockets from a few addresses) and its
// message and queue limits (1 MiB frames, 16 phones with 8 in flight
// each). Neither changes what a message costs.
var relayLimits = []string{
	"--max-conns", "200000", "--max-conns-per-ip", "200000", "--max-sockets", "200000",
	"--max-sockets-per-ip", "200000", "--upgrade-rate", "1000000", "--upgrade-burst", "1000000",
	"--max-tracked-ips", "400000",
	"--max-message-bytes", strconv.Itoa(1<<20 + 1<<10), "--phone-queue-bytes", strconv.Itoa(16 << 20),
	"--max-queued-bytes", strconv.Itoa(1 << 30),
}

func orDefault(v, def []int) []int {
	if len(v) > 0 {
		return v
	}
	return def
}

func progressLine(r Result) string {
	busy := make([]string, len(r.MachineBusy))
	for i, b := range r.MachineBusy {
		busy[i] = fmt.Sprintf("%.0f%%", b*100)
	}
	load := fmt.Sprintf("machine busy %s, others %.0f%%", strings.Join(busy, "/"), r.OthersShare*100)
	if r.Workload.Kind == Idle {
		mem := ""
		if m, n := r.MemSettled, float64(max(r.ConnsHeld, 1)); m != nil {
			mem = fmt.Sprintf("  (Go: stacks %.1f, heap %.1f KiB/conn, %.2f goroutines/conn, %v GCs", m.StackInuse/n/1024, m.HeapInuse/n/1024, m.Goroutines/n, m.NumGC)
			if e := r.MemEnd; e != nil {
				mem += fmt.Sprintf("; at the end stacks %.1f, heap %.1f KiB/conn, %v GCs", e.StackInuse/n/1024, e.HeapInuse/n/1024, e.NumGC)
			}
			mem += ")"
		}
		return fmt.Sprintf("cycle %d  %-26s %-9s  %5.1f KiB/conn  %+.2f KiB/conn over %.0fs  %.3f%% of a core  %.0f conns/s set-up%s  (%s)",
			r.Cycle, r.Workload.Name(), r.Server, r.RSSPerConnKiB, r.RSSGrowthKiB, r.IdleSeconds, r.IdleCPUPercent, r.SetupPerSec, mem, load)
	}
	line := fmt.Sprintf("cycle %d  %-26s %-9s  %8.0f msg/s  %7.1f MB/s  %6.2f µs/msg  %.2f cores",
		r.Cycle, r.Workload.Name(), r.Server, r.MsgPerSec, r.MBPerSec, r.CPUPerMsgUS, r.ServerCPU)
	if r.RTTP99MS > 0 {
		line += fmt.Sprintf("  rtt p50 %.2f p95 %.2f p99 %.2f ms", r.RTTP50MS, r.RTTP95MS, r.RTTP99MS)
	}
	return line + "  (" + load + ")"
}

// Comparison pairs the relay's and the forwarder's results for one
// workload: medians over cycles and the per-cycle ratios' median and range.
type Comparison struct {
	Workload  Workload `json:"workload"`
	Relay     Result   `json:"relay_median"`
	Forwarder Result   `json:"forwarder_median"`
	// CPURatio is forwarder CPU per message ÷ relay CPU per message (1 is
	// as cheap as the forwarder; the targets are floors on it).
	CPURatio Ratio `json:"cpu_ratio"`
	// ThroughputRatio is relay msg/s ÷ forwarder msg/s.
	ThroughputRatio Ratio `json:"throughput_ratio"`
	// P99Ratio is relay p99 round trip ÷ forwarder p99 (ping-pong).
	P99Ratio Ratio `json:"p99_ratio"`
	// RSSRatio is relay RSS per connection ÷ forwarder's (idle).
	RSSRatio Ratio `json:"rss_ratio"`
}

// Ratio is a median over paired cycles, with the smallest and largest.
type Ratio struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

func ratioOf(vs []float64) Ratio {
	var clean []float64
	for _, v := range vs {
		if v > 0 && !isInf(v) {
			clean = append(clean, v)
		}
	}
	if len(clean) == 0 {
		return Ratio{}
	}
	sort.Float64s(clean)
	return Ratio{Median: median(clean), Min: clean[0], Max: clean[len(clean)-1], N: len(clean)}
}

func isInf(v float64) bool { return v > 1e300 }

func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func compare(results []Result) []Comparison {
	type key struct {
		w     string
		cycle int
	}
	byKey := map[key]map[string]Result{}
	var order []Workload
	seen := map[string]bool{}
	for _, r := range results {
		name := r.Workload.Name()
		if r.Workload.Kind == Idle {
			name = fmt.Sprintf("idle %d", r.Workload.Conns)
		}
		k := key{name, r.Cycle}
		if byKey[k] == nil {
			byKey[k] = map[string]Result{}
		}
		byKey[k][r.Server] = r
		if !seen[name] {
			seen[name] = true
			order = append(order, r.Workload)
		}
	}
	var out []Comparison
	for _, w := range order {
		name := w.Name()
		if w.Kind == Idle {
			name = fmt.Sprintf("idle %d", w.Conns)
		}
		var cpu, thr, p99, rss []float64
		var rel, fwd []Result
		for k, m := range byKey {
			if k.w != name {
				continue
			}
			r, okR := m[kindRelay]
			f, okF := m[kindForwarder]
			if okR {
				rel = append(rel, r)
			}
			if okF {
				fwd = append(fwd, f)
			}
			if !okR || !okF {
				continue
			}
			cpu = append(cpu, safeDiv(f.CPUPerMsgUS, r.CPUPerMsgUS))
			thr = append(thr, safeDiv(r.MsgPerSec, f.MsgPerSec))
			p99 = append(p99, safeDiv(r.RTTP99MS, f.RTTP99MS))
			rss = append(rss, safeDiv(r.RSSPerConnKiB, f.RSSPerConnKiB))
		}
		out = append(out, Comparison{Workload: w, Relay: medianResult(rel), Forwarder: medianResult(fwd),
			CPURatio: ratioOf(cpu), ThroughputRatio: ratioOf(thr), P99Ratio: ratioOf(p99), RSSRatio: ratioOf(rss)})
	}
	return out
}

func safeDiv(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// medianResult takes each figure's median across cycles.
func medianResult(rs []Result) Result {
	if len(rs) == 0 {
		return Result{}
	}
	m := rs[0]
	m.Cycle = 0
	pick := func(get func(Result) float64) float64 {
		vs := make([]float64, len(rs))
		for i, r := range rs {
			vs[i] = get(r)
		}
		sort.Float64s(vs)
		return median(vs)
	}
	m.MsgPerSec = pick(func(r Result) float64 { return r.MsgPerSec })
	m.MBPerSec = pick(func(r Result) float64 { return r.MBPerSec })
	m.CPUPerMsgUS = pick(func(r Result) float64 { return r.CPUPerMsgUS })
	m.SyscallsPerMsg = pick(func(r Result) float64 { return r.SyscallsPerMsg })
	m.OthersShare = pick(func(r Result) float64 { return r.OthersShare })
	m.ServerCPU = pick(func(r Result) float64 { return r.ServerCPU })
	m.RTTP50MS = pick(func(r Result) float64 { return r.RTTP50MS })
	m.RTTP95MS = pick(func(r Result) float64 { return r.RTTP95MS })
	m.RTTP99MS = pick(func(r Result) float64 { return r.RTTP99MS })
	m.RSSPerConnKiB = pick(func(r Result) float64 { return r.RSSPerConnKiB })
	m.RSSGrowthKiB = pick(func(r Result) float64 { return r.RSSGrowthKiB })
	m.IdleCPUPercent = pick(func(r Result) float64 { return r.IdleCPUPercent })
	m.CPUPerPingUS = pick(func(r Result) float64 { return r.CPUPerPingUS })
	m.SetupPerSec = pick(func(r Result) float64 { return r.SetupPerSec })
	return m
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return runtime.GOARCH
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// ErrTargetsMissed is returned by CheckTargets when a figure misses the
// issue's targets; the report is still complete.
var ErrTargetsMissed = errors.New("loadbench: targets missed")
