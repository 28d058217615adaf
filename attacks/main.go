package attacks

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Main implements `relay attack`:
//
//	relay attack --target URL [--peer-target URL] [--only IDS] [--json] [--ca FILE] [--timeout D]
//	             [--read-timeout D] [--read-header-timeout D] [--write-timeout D]
//	             [--ping-interval D] [--pong-timeout D] [--probe-timeout D] [--cluster-lease D]
//	             [--profile behind-proxy]
//	             [--junit FILE] [--report FILE.html] [--source-base URL] [--prom-textfile FILE]
//	relay attack --list
//
// It runs the remote-safe scenarios (each with the load stated in its
// Bounds: at most a few dozen connections, never more than 22 open at
// once, and 24 MiB per scenario, one scenario at a time) against a deployed relay, prints progress on stderr
// and a table (or JSON) on stdout. Exit 0: every scenario passed (or was
// skipped); 1: a finding (a scenario failed); 2: usage error, nothing run;
// 3: no finding, but a scenario could not run (the target did not answer
// before it, e.g. down or its certificate not verifiable without --ca, or
// an output file cannot be written: checked before anything is attacked).
// Admission refusals (429, 503) are waited out per Retry-After, within
// 30 s per request.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("relay attack", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are printed below as one line; -h prints to stdout
	target := fs.String("target", "", "relay base URL: https://relay.example.com or http://127.0.0.1:8080")
	only := fs.String("only", "", "comma-separated scenario IDs to run (default: every remote-safe scenario)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	caFile := fs.String("ca", "", "PEM file of CA certificates that verify the relay (default: system roots)")
	serverName := fs.String("server-name", "", "TLS server name to verify (default: the target's host)")
	list := fs.Bool("list", false, "print the threat <-> scenario map and exit")
	timeout := fs.Duration("timeout", 10*time.Minute, "deadline for the whole run")
	junitFile := fs.String("junit", "", "also write the results as JUnit XML to FILE")
	reportFile := fs.String("report", "", "also write a self-contained HTML report (threat, defence, scenario, bounds, result, evidence) to FILE")
	promFile := fs.String("prom-textfile", "", "also write Prometheus textfile-collector metrics (one result gauge per scenario, the run's time) to FILE")
	readTimeout := fs.Duration("read-timeout", 0, "the target relay's --read-timeout, when it is not the default 30s (ATK-SLOW-MESSAGE trickles for that long)")
	readHeaderTimeout := fs.Duration("read-header-timeout", 0, "the target relay's --read-header-timeout, when it is not the default 5s (ATK-SLOWLORIS's bound)")
	sourceBase := fs.String("source-base", "", "URL (or path) that repository files are linked under in --report and --json, e.g. a mirror at a tag (default: the checkout a --report is written into, else the repository at the binary's revision)")
	peerTarget := fs.String("peer-target", "", "a second instance of the same deployed cluster (its own URL, e.g. https://relay-b.example.com): the cross-instance scenarios put a server-id's binary on --target and its phones on this one, and back")
	writeTimeout := fs.Duration("write-timeout", 0, "the target relay's --write-timeout, when it is not the default 10s (ATK-SLOW-BINARY loads it for longer than that)")
	pingInterval := fs.Duration("ping-interval", 0, "the target relay's --ping-interval, when it is not the default 30s (ATK-DEAD-PEER waits for ping + pong)")
	pongTimeout := fs.Duration("pong-timeout", 0, "the target relay's --pong-timeout, when it is not the default 30s (ATK-DEAD-PEER)")
	probeTimeout := fs.Duration("probe-timeout", 0, "the target relay's --probe-timeout, when it is not the default 10s (ATK-DEAD-PEER, ATK-SLOW-BINARY)")
	clusterLease := fs.Duration("cluster-lease", 0, "the target cluster's --cluster-lease, when it is not the default 2.4s (ATK-CLUSTER-CROSS-TENANT waits two leases)")
	profile := fs.String("profile", "direct", "what stands in front of the relay: direct (the relay's own TLS, or an L4 balancer) or behind-proxy (a TLS-terminating proxy; each result says whether it tested the relay or the proxy)")
	help := func() int {
		fmt.Fprintln(stdout, "usage: relay attack --target URL [--peer-target URL] [--only IDS] [--json] [--ca FILE] [--server-name NAME] [--timeout D] [--read-timeout D] [--read-header-timeout D] [--write-timeout D] [--ping-interval D] [--pong-timeout D] [--probe-timeout D] [--cluster-lease D] [--profile behind-proxy] [--junit FILE] [--report FILE.html] [--source-base URL] [--prom-textfile FILE]\n       relay attack --list")
		// As relay serve -h prints them: --name TYPE, then the help.
		fs.VisitAll(func(f *flag.Flag) {
			kind, usage := flag.UnquoteUsage(f)
			line := "  --" + f.Name
			if kind != "" {
				line += " " + kind
			}
			line += "\n    \t" + usage
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0s" {
				line += " (default " + f.DefValue + ")"
			}
			fmt.Fprintln(stdout, line)
		})
		return 0
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return help()
		}
		fmt.Fprintf(stderr, "relay: %s (relay attack -h lists the flags)\n", flagProblem(fs, err))
		return ExitUsage
	}
	if fs.NArg() == 1 && fs.Arg(0) == "help" {
		return help()
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "relay: unexpected argument %q (relay attack -h lists the flags)\n", fs.Arg(0))
		return ExitUsage
	}
	if *list {
		if err := RenderThreatMap(stdout); err != nil {
			return ExitCouldNotRun
		}
		return ExitPassed
	}
	base, err := parseTarget(*target)
	if err != nil {
		fmt.Fprintf(stderr, "relay: %v\n", err)
		return ExitUsage
	}
	prof, err := ParseProfile(*profile)
	if err != nil {
		fmt.Fprintf(stderr, "relay: %v\n", err)
		return ExitUsage
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"read-timeout", *readTimeout}, {"read-header-timeout", *readHeaderTimeout}, {"write-timeout", *writeTimeout},
		{"ping-interval", *pingInterval}, {"pong-timeout", *pongTimeout}, {"probe-timeout", *probeTimeout}, {"cluster-lease", *clusterLease}} {
		if d.v < 0 {
			fmt.Fprintf(stderr, "relay: --%s %v: must be positive, like 30s (zero: the relay's default)\n", d.name, d.v)
			return ExitUsage
		}
	}
	t := &Target{Base: base, ServerName: *serverName, Profile: prof, ReadTimeout: *readTimeout, ReadHeaderTimeout: *readHeaderTimeout,
		WriteTimeout: *writeTimeout, PingInterval: *pingInterval, PongTimeout: *pongTimeout, ProbeTimeout: *probeTimeout, ClusterLease: *clusterLease}
	if *peerTarget != "" {
		peer, err := parseTarget(*peerTarget)
		if err != nil {
			fmt.Fprintf(stderr, "relay: --peer-%v\n", strings.TrimPrefix(err.Error(), "--"))
			return ExitUsage
		}
		if peer.String() == base.String() {
			fmt.Fprintln(stderr, "relay: --peer-target names the --target itself: give another instance of the same cluster")
			return ExitUsage
		}
		pt := *t
		pt.Base = peer
		t.Peer = &pt
	}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fmt.Fprintf(stderr, "relay: --ca: %v\n", err)
			return ExitUsage
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			fmt.Fprintf(stderr, "relay: --ca: no PEM certificates in %s\n", *caFile)
			return ExitUsage
		}
		if t.Peer != nil {
			t.Peer.RootCAs = t.RootCAs
		}
	}
	var filter []string
	if *only != "" {
		known := map[string]Scenario{}
		for _, sc := range Catalog() {
			known[sc.ID] = sc
		}
		for _, id := range strings.Split(*only, ",") {
			id = strings.TrimSpace(id)
			sc, ok := known[id]
			if !ok {
				fmt.Fprintf(stderr, "relay: unknown scenario %q (see --list)\n", id)
				return ExitUsage
			}
			if sc.Mode == LocalOnly {
				fmt.Fprintf(stderr, "relay: %s is local-only; it runs in `go test ./attacks`\n", id)
				return ExitUsage
			}
			filter = append(filter, id)
		}
	}
	outputs := []struct {
		flag, file string
		render     func(io.Writer, []Report, RunInfo) error
	}{{"--junit", *junitFile, RenderJUnit}, {"--report", *reportFile, RenderHTML}, {"--prom-textfile", *promFile, RenderPromTextfile}}
	scs := Select(t, filter)
	info := RunInfo{Target: base.String(), Started: time.Now(), SourceBase: reportBase(*sourceBase, *reportFile)}
	if t.Peer != nil {
		info.Peer = t.Peer.Base.String()
	}
	// Every output is checked before anything is attacked: a run whose
	// results cannot be kept is not run.
	var unwritable []string
	writable := map[string]bool{}
	for _, out := range outputs {
		if out.file == "" {
			continue
		}
		if err := checkWritable(out.file); err != nil {
			fmt.Fprintf(stderr, "relay: %s %s cannot be written: %v\n", out.flag, out.file, err)
			unwritable = append(unwritable, out.flag+" "+out.file)
			continue
		}
		writable[out.flag] = true
	}
	var reports []Report
	if len(unwritable) > 0 {
		reports = NotRun(scs, "cannot write "+strings.Join(unwritable, ", "))
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		reports = runScenarios(ctx, t, scs, stderr)
		cancel()
	}
	info.Duration = time.Since(info.Started)
	code := ExitCode(reports)
	if *asJSON {
		err = RenderJSON(stdout, reports, RunInfo{SourceBase: normBase(*sourceBase)})
	} else {
		err = RenderTable(stdout, reports)
	}
	if err != nil && code == ExitPassed {
		code = ExitCouldNotRun
	}
	// The textfile last, so that its relay_attack_exit_code counts a
	// report that could not be written.
	for _, out := range outputs {
		if !writable[out.flag] {
			continue
		}
		info.ExitCode = code
		if werr := writeFileAtomic(out.file, func(w io.Writer) error { return out.render(w, reports, info) }); werr != nil {
			fmt.Fprintf(stderr, "relay: %s: %v\n", out.flag, werr)
			if code == ExitPassed {
				code = ExitCouldNotRun
			}
		}
	}
	return code
}

func parseTarget(s string) (*url.URL, error) {
	if s == "" {
		return nil, fmt.Errorf("--target is required")
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("--target: want a URL such as https://relay.example.com")
	}
	switch u.Scheme {
	case "http", "https":
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	default:
		return nil, fmt.Errorf("--target: scheme must be http or https")
	}
	u.Path, u.RawQuery, u.Fragment = "", "", ""
	return u, nil
}

// flagProblem rewords the flag package's errors as the relay's other
// refusals read (cmd/relay's serve does the same in internal/config): the
// flag as an operator types it (--name), the value given, and what a valid
// one looks like, instead of "flag provided but not defined: -x" or
// `invalid value "30" for flag -timeout: parse error`.
func flagProblem(fs *flag.FlagSet, err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return "unknown flag --" + printable(name)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return "--" + printable(name) + " needs a value"
	}
	if arg, ok := strings.CutPrefix(msg, "bad flag syntax: "); ok {
		return "bad flag syntax " + strconv.Quote(arg) + ": use --name value or --name=value"
	}
	// invalid value "V" for flag -NAME: ..., invalid boolean value "V" for -NAME: ...
	for _, lead := range []string{"invalid value ", "invalid boolean value "} {
		rest, ok := strings.CutPrefix(msg, lead)
		if !ok {
			continue
		}
		quoted, err := strconv.QuotedPrefix(rest)
		if err != nil {
			break
		}
		value, _ := strconv.Unquote(quoted)
		rest = strings.TrimPrefix(strings.TrimPrefix(rest[len(quoted):], " for flag -"), " for -")
		name, _, _ := strings.Cut(rest, ":")
		f := fs.Lookup(name)
		if f == nil {
			break
		}
		shown := value
		if strings.ContainsFunc(value, func(r rune) bool { return !strconv.IsPrint(r) || r == ' ' || r == '"' }) || value == "" {
			shown = strconv.Quote(value)
		}
		switch f.Value.(flag.Getter).Get().(type) {
		case time.Duration:
			return "--" + name + " " + shown + " is not a duration: use a number with a unit, e.g. " + f.DefValue
		case bool:
			return "--" + name + " " + shown + " is not a boolean: use true or false"
		}
		return "--" + name + " " + shown + " is not valid"
	}
	return printable(msg)
}

// printable escapes control characters (a flag name is operator text).
func printable(s string) string {
	q := strconv.Quote(s)
	if q[1:len(q)-1] == s {
		return s
	}
	return q
}
