// Command relay-cluster-scale runs the cluster's scale model
// (internal/clusterscale, docs/cluster.md "Scale model"): 1 to 10 relay
// instances (each this command re-executed as an agent: the routing core
// and its NATS backplane, no sockets) and 1,000 to 100,000 server-ids on
// one real NATS server on 127.0.0.1, claims driven through the backplane.
// It prints the tables, and writes them (--markdown), the JSON (--json) and
// the plots (--plots). `make cluster-scale` runs the full matrix.
//
//	relay-cluster-scale [--instances 1,2,5,10] [--ids 1000,10000,100000] [--lease 0] [--window 10s]
//
// It is a separate command, not a relay subcommand: operators have no use
// for it on a server, and its plotting dependencies stay out of the relay
// binary.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pyrycode/relay/internal/cluster"
	"github.com/pyrycode/relay/internal/clusterscale"
)

func main() {
	clusterscale.MaybeAgent()
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("relay-cluster-scale", flag.ContinueOnError)
	instances := fs.String("instances", "1,2,5,10", "comma-separated instance counts")
	ids := fs.String("ids", "1000,10000,100000", "comma-separated server-id counts")
	lease := fs.Duration("lease", 0, "--cluster-lease of every instance (0: the relay's default)")
	window := fs.Duration("window", 10*time.Second, "steady-state window whose KV writes and NATS messages are counted")
	trials := fs.Int("trials", 3, "kill -9s of an owner per cell with two or more instances")
	sample := fs.Int("sample", 20, "server-ids of the killed owner redialed (every 100 ms) per kill")
	jsonOut := fs.String("json", "", "write the report as JSON to this file")
	markdown := fs.String("markdown", "", "write the tables as Markdown to this file")
	plots := fs.String("plots", "", "write the PNG plots into this directory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ns, err1 := ints(*instances)
	ss, err2 := ints(*ids)
	if err1 != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, "relay-cluster-scale: --instances and --ids are comma-separated positive integers")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := clusterscale.Run(ctx, clusterscale.Config{Instances: ns, ServerIDs: ss, Lease: *lease, Window: *window,
		Trials: *trials, Sample: *sample, Progress: os.Stderr}, cluster.DefaultLease)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay-cluster-scale:", err)
		if rep == nil {
			return 1
		}
	}
	rep.WriteMarkdown(os.Stdout)
	for _, f := range []string{*markdown, *jsonOut} {
		if f != "" {
			if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
				fmt.Fprintln(os.Stderr, "relay-cluster-scale:", err)
				return 1
			}
		}
	}
	if *markdown != "" {
		f, err := os.Create(*markdown)
		if err != nil {
			fmt.Fprintln(os.Stderr, "relay-cluster-scale:", err)
			return 1
		}
		rep.WriteMarkdown(f)
		f.Close()
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "relay-cluster-scale:", err)
			return 1
		}
	}
	if *plots != "" {
		files, err := rep.WritePlots(*plots)
		if err != nil {
			fmt.Fprintln(os.Stderr, "relay-cluster-scale:", err)
			return 1
		}
		for _, f := range files {
			fmt.Fprintln(os.Stderr, "wrote", f)
		}
	}
	for _, c := range rep.Cells {
		if c.Err != "" {
			return 1
		}
	}
	return 0
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}
