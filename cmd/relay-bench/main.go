// Command relay-bench is the relay's load harness. It starts the relay
// (built from this checkout, or --relay) and a baseline forwarder (this
// same command, re-executed) on 127.0.0.1, drives phones and binaries
// against both back to back, and reports every figure as a ratio to the
// forwarder's in the same run: msg/s, MB/s, server CPU per message (from
// /proc), round trips (p50/p95/p99), resident memory per idle connection,
// heartbeat CPU and set-up rate. A table with progress goes to the terminal;
// --json and --plots write the rest. All traffic stays on loopback.
//
//	relay-bench [--suite table|sizes|conns|all|smoke] [--cycles 3] [--json FILE] [--plots DIR]
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
	suite := fs.String("suite", "table", "table (the issue's table), sizes (128 B..64 KiB), conns (1k/5k/10k idle), all, smoke")
	cycles := fs.Int("cycles", 3, "paired relay/forwarder repetitions of each traffic workload")
	warmup := fs.Duration("warmup", 500*time.Millisecond, "traffic before each measured window")
	dur := fs.Duration("duration", 2*time.Second, "measured window of each traffic run")
	idle := fs.Duration("idle", 65*time.Second, "idle window of each idle run (covers two 30 s heartbeats)")
	ping := fs.Duration("ping-interval", 30*time.Second, "the relay's --ping-interval in idle runs")
	pin := fs.Bool("pin", true, "pin the servers to the last CPU and the load generator to the first")
	procs := fs.Int("gomaxprocs", 1, "GOMAXPROCS of the relay and forwarder processes (0 = Go's default)")
	sizes := fs.String("sizes", "", "comma-separated frame sizes for the sizes suite (default 128,512,2048,8192,16384,65536)")
	conns := fs.String("conns", "", "comma-separated idle connection counts for the conns suite (default 1000,5000,10000)")
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
		Pin: *pin, GOMAXPROCS: *procs, Sizes: sz, Conns: cn, Only: onlyRE, Progress: os.Stderr,
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
	if *markdown != "" {
		var b strings.Builder
		_ = loadbench.RenderMarkdown(&b, rep)
		if werr := os.WriteFile(*markdown, []byte(b.String()), 0o644); werr != nil {
			fmt.Fprintf(os.Stderr, "relay-bench: %v\n", werr)
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
