// Command relay-load measures the relay under a connection flood, for the
// admission-control figures: connections held at the global cap, refusals
// per second answered over it, and a legitimate pair's round-trip latency
// idle and during the flood. It starts the given relay build on 127.0.0.1
// (all traffic stays on loopback), runs for well under a minute and stops
// it. `make load` builds the relay and runs this.
//
//	relay-load [--relay bin/relay] [--max-conns 2000] [--flood 5s] [--workers 32] [--json]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/pyrycode/relay/attacks"
)

func main() {
	def := attacks.DefaultLoadConfig()
	bin := flag.String("relay", "bin/relay", "relay binary to start")
	maxConns := flag.Int("max-conns", def.MaxConns, "the relay's --max-conns, which the run fills (10..10000)")
	flood := flag.Duration("flood", def.FloodFor, "how long to flood over the cap (at most 30s)")
	workers := flag.Int("workers", def.FloodWorkers, "concurrent flooding clients (at most 256)")
	rtts := flag.Int("rtts", def.RTTs, "round trips measured idle and at the quiet cap")
	asJSON := flag.Bool("json", false, "print the report as JSON")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "relay-load: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}
	cfg := def
	cfg.Binary, cfg.MaxConns, cfg.FloodFor, cfg.FloodWorkers, cfg.RTTs, cfg.Progress = *bin, *maxConns, *flood, *workers, *rtts, os.Stderr

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := attacks.RunLoad(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "relay-load: %v\n", err)
		os.Exit(1)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = attacks.RenderLoad(os.Stdout, rep)
	}
	if err != nil {
		os.Exit(1)
	}
	if rep.AdmittedOverCap > 0 {
		fmt.Fprintf(os.Stderr, "relay-load: %d upgrades admitted over --max-conns\n", rep.AdmittedOverCap)
		os.Exit(1)
	}
}
