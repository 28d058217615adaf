// Command relay-bench is the relay's load harness. It starts the relay
// (built from this checkout, or --relay) and a baseline forwarder (this
// same command, re-executed) on 127.0.0.1, drives phones and binaries
// against both back to back, and reports every figure as a ratio to the
// forwarder's in the same run: msg/s, MB/s, server CPU per message (from
// /proc), round trips (p50/p95/p99), resident memory per idle connection,
// heartbeat CPU and set-up rate. A table with progress goes to the terminal;
// --json and --plots write the rest. All traffic stays on loopback.
//
//	relay-bench [--suite table|sizes|conns|instr|all|smoke] [--cycles 3] [--json FILE] [--markdown FILE] [--plots DIR] [--doc FILE]
//
// The figures are written only when the machine was quiet: when other
// processes took more than 10 % of the CPUs during any measured window it
// refuses (exit 3, the report kept in a temporary file) unless --force,
// and then every output says the machine was busy.
//
// It is a separate command, not `relay bench`: operators have no use for
// it on a server, and its plotting dependencies stay out of the relay
// binary and its supply chain.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pyrycode/relay/internal/loadbench"
)

func main() {
	if addr := os.Getenv(loadbench.ForwarderEnv); addr != "" {
		if err := loadbench.ServeForwarder(addr); err != nil {
			fmt.Fprintf(os.Stderr, "relay-bench forwarder: %v\n", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("relay-bench", flag.ContinueOnError)
	relayBin := fs.String("relay", "", "relay binary to start (default: build ./cmd/relay of this checkout)")
	targetURL := fs.String("target", "", "ws:// or wss:// base URL of a running relay instead (no CPU or memory figures)")
	suite := fs.String("suite", "table", "table (the issue's table), sizes (128 B..1 MiB), conns (1k/10k/50k idle), instr (instruction counts under valgrind), all, smoke, pgo (a CPU profile for PGO)")
	cycles := fs.Int("cycles", 3, "paired relay/forwarder repetitions of each traffic workload")
	warmup := fs.Duration("warmup", 500*time.Millisecond, "traffic before each measured window")
	dur := fs.Duration("duration", 2*time.Second, "measured window of each traffic run")
	idle := fs.Duration("idle", 65*time.Second, "idle window of each idle run (covers two 30 s heartbeats)")
	ping := fs.Duration("ping-interval", 30*time.Second, "the relay's --ping-interval in idle runs")
	pin := fs.Bool("pin", true, "pin the servers to the last CPU and the load generator to the first")
	procs := fs.Int("gomaxprocs", 1, "GOMAXPROCS of the relay and forwarder processes (0 = Go's default)")
	sizes := fs.String("sizes", "", "comma-separated frame sizes for the sizes suite (default 128,512,2048,8192,16384,65536,262144,1048576)")
	conns := fs.String("conns", "", "comma-separated idle connection counts for the conns suite (default 1000,10000,50000)")
	instrSizes := fs.String("instr-sizes", "", "comma-separated frame sizes for the instruction suite (default 128,512,16384,65536)")
	relayB := fs.String("relay-b", "", "a second relay binary (a PGO build, a change) whose instructions per message the instr suite counts beside --relay's")
	cpuprofile := fs.String("cpuprofile", "", "pgo suite: where the relay (built with -tags relay_cpuprofile) writes its CPU profile of the traffic")
	cgDir := fs.String("callgrind-dir", "", "keep the instr suite's callgrind dumps in this directory (for callgrind_annotate)")
	force := fs.Bool("force", false, "write the figures even if the machine was busy (they are marked so)")
	doc := fs.String("doc", "", "replace the tables between <!-- relay-bench:tables --> and <!-- /relay-bench:tables --> in this Markdown file")
	jsonOut := fs.String("json", "", "write the full report as JSON to this file (- for stdout, replacing the table)")
	plots := fs.String("plots", "", "write PNG plots of the sweeps into this directory")
	markdown := fs.String("markdown", "", "write the tables as Markdown to this file")
	fromJSON := fs.String("from-json", "", "render a saved --json report (table, --markdown, --plots) instead of running")
	only := fs.String("only", "", "run only the workloads whose name matches this regular expression (e.g. 'b2p 16KiB')")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "relay-bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	sz, err := intList(*sizes)
	if err != nil {
		fmt.Fprintf(os.Stderr, "relay-bench: --sizes: %v\n", err)
		return 2
	}
	cn, err := intList(*conns)
	if err != nil {
		fmt.Fprintf(os.Stderr, "relay-bench: --conns: %v\n", err)
		return 2
	}
	isz, err := intList(*instrSizes)
	if err != nil {
		fmt.Fprintf(os.Stderr, "relay-bench: --instr-sizes: %v\n", err)
		return 2
	}
	for _, n := range sz {
		if n < 40 || n > 1<<20 {
			fmt.Fprintf(os.Stderr, "relay-bench: --sizes: %d is outside 40..1048576\n", n)
			return 2
		}
	}
	var onlyRE *regexp.Regexp
	if *only != "" {
		if onlyRE, err = regexp.Compile(*only); err != nil {
			fmt.Fprintf(os.Stderr, "relay-bench: --only: %v\n", err)
			return 2
		}
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "relay-bench: %v\n", err)
		return 1
	}
	cfg := loadbench.Config{
		RelayBin: *relayBin, Target: strings.TrimSuffix(*targetURL, "/"), ForwarderArgv: []string{self},
		Suite: *suite, Cycles: *cycles, Warmup: *warmup, Run: *dur, Idle: *idle, PingInterval: *ping,
		Pin: *pin, GOMAXPROCS: *procs, Sizes: sz, Conns: cn, InstrSizes: isz, RelayB: *relayB, CallgrindDir: *cgDir, CPUProfile: *cpuprofile, Only: onlyRE, Progress: os.Stderr,
		Command: "relay-bench " + strings.Join(args, " "),
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var rep *loadbench.Report
	if *fromJSON != "" {
		b, rerr := os.ReadFile(*fromJSON)
		if rerr == nil {
			rep = new(loadbench.Report)
			rerr = json.Unmarshal(b, rep)
		}
		if rerr != nil {
			fmt.Fprintf(os.Stderr, "relay-bench: --from-json: %v\n", rerr)
			return 1
		}
	} else {
		rep, err = loadbench.Run(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "relay-bench: %v\n", err)
		if rep == nil || len(rep.Results) == 0 {
			return 1
		}
	}
	if *jsonOut != "-" {
		_ = loadbench.RenderTable(os.Stdout, rep)
	}
	writes := (*jsonOut != "" && *jsonOut != "-") || *markdown != "" || *plots != "" || *doc != ""
	if rep.Busy && writes && *fromJSON == "" {
		if !*force {
			kept := filepath.Join(os.TempDir(), "relay-bench-busy-"+rep.Started.Format("20060102-150405")+".json")
			b, _ := json.MarshalIndent(rep, "", "  ")
			_ = os.WriteFile(kept, append(b, '\n'), 0o644)
			fmt.Fprintf(os.Stderr, "relay-bench: the machine was busy: other processes took up to %.0f%% of the CPUs during a measured window (limit %.0f%%); no figures written (the report is kept in %s). Rerun on a quiet machine, or pass --force to write them marked as busy.\n",
				rep.OthersMax*100, loadbench.BusyThreshold*100, kept)
			return 3
		}
		rep.Forced = true
	}
	for _, f := range []string{*markdown, *jsonOut} { // docs/perf may not exist yet
		if f != "" && f != "-" {
			_ = os.MkdirAll(filepath.Dir(f), 0o755)
		}
	}
	if *markdown != "" {
		var b strings.Builder
		_ = loadbench.RenderMarkdown(&b, rep)
		if werr := os.WriteFile(*markdown, []byte(b.String()), 0o644); werr != nil {
			fmt.Fprintf(os.Stderr, "relay-bench: %v\n", werr)
			return 1
		}
	}
	if *doc != "" {
		if werr := loadbench.UpdateDoc(*doc, rep); werr != nil {
			fmt.Fprintf(os.Stderr, "relay-bench: --doc: %v\n", werr)
			return 1
		}
	}
	if *jsonOut != "" && *fromJSON == "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		b = append(b, '\n')
		if *jsonOut == "-" {
			os.Stdout.Write(b)
		} else if werr := os.WriteFile(*jsonOut, b, 0o644); werr != nil {
			fmt.Fprintf(os.Stderr, "relay-bench: %v\n", werr)
			return 1
		}
	}
	if *plots != "" {
		files, perr := loadbench.WritePlots(rep, *plots)
		for _, f := range files {
			fmt.Fprintf(os.Stderr, "wrote %s\n", f)
		}
		if perr != nil {
			fmt.Fprintf(os.Stderr, "relay-bench: plots: %v\n", perr)
			return 1
		}
	}
	if err != nil {
		return 1
	}
	return 0
}

func intList(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}
