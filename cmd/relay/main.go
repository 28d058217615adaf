// Command relay is the pyrycode WebSocket relay.
//
//	relay serve [flags]   run the relay (see relay serve -h)
//	relay attack [flags]  run the remote-safe attack suite against a deployment
//	relay healthcheck --url URL  GET URL once: exit 0 on 200, 1 otherwise
//	relay version         print the version, VCS revision and Go version
//
// Exit codes: 0 clean shutdown, 1 runtime failure, 2 refused to start.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pyrycode/relay/attacks"
	"github.com/pyrycode/relay/internal/buildinfo"
	"github.com/pyrycode/relay/internal/config"
	"github.com/pyrycode/relay/internal/logging"
	"github.com/pyrycode/relay/internal/privilege"
	"github.com/pyrycode/relay/internal/server"
)

const (
	exitOK      = 0
	exitRuntime = 1
	exitRefused = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitRefused
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stdout, stderr)
	case "attack":
		// The report links the scenarios' source at the build's revision.
		attacks.SourceRevision = buildinfo.Get().Revision
		return attacks.Main(args[1:], stdout, stderr)
	case "healthcheck":
		return healthcheck(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		switch {
		case len(args) == 1:
			fmt.Fprintln(stdout, buildinfo.Get())
			return exitOK
		case len(args) == 2 && isHelp(args[1]):
			fmt.Fprintln(stdout, "usage: relay version\n  print the version, VCS revision and Go version (no flags)")
			return exitOK
		}
		return unexpected(stderr, args[1], "relay version takes none")
	case "help", "-h", "-help", "--help":
		switch {
		case len(args) == 1:
			usage(stdout)
			return exitOK
		case len(args) == 2 && (args[1] == "serve" || args[1] == "attack" || args[1] == "healthcheck" || args[1] == "version"):
			// relay help serve|attack|healthcheck|version is their -h.
			return run([]string{args[1], "-h"}, stdout, stderr)
		}
		fmt.Fprintf(stderr, "relay: unknown command %q (see relay help)\n", args[1])
		return exitRefused
	default:
		if strings.HasPrefix(args[0], "-") {
			// relay --domain x: the flags belong to a command.
			fmt.Fprintf(stderr, "relay: unknown flag %s: flags follow a command, e.g. relay serve %s (relay serve -h lists the flags)\n", dashed(args[0]), dashed(args[0]))
			return exitRefused
		}
		fmt.Fprintf(stderr, "relay: unknown command %q (see relay help)\n", args[0])
		return exitRefused
	}
}

func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "help"
}

// unexpected refuses an argument a command does not take: a flag is named
// as --name, anything else quoted.
func unexpected(stderr io.Writer, arg, why string) int {
	if strings.HasPrefix(arg, "-") {
		fmt.Fprintf(stderr, "relay: unknown flag %s (%s)\n", dashed(arg), why)
	} else {
		fmt.Fprintf(stderr, "relay: unexpected argument %q (%s)\n", arg, why)
	}
	return exitRefused
}

// dashed is a command-line flag as --name (whatever dashes were typed,
// without a =value), its name quoted if it is not plain text.
func dashed(arg string) string {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	if q := fmt.Sprintf("%q", name); q[1:len(q)-1] != name {
		return "--" + q
	}
	return "--" + name
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  relay serve [flags]    run the relay (relay serve -h lists every flag)
  relay attack [flags]   run the remote-safe attack suite (relay attack -h)
  relay healthcheck --url URL   GET URL once: exit 0 on 200, 1 otherwise (container HEALTHCHECK)
  relay version          print the version
  relay help [COMMAND]   print this, or a command's flags
`)
}

// refuse prints one line and returns the refused-to-start code. Sentinel
// errors carry their package's prefix ("relay: ", "tlsconf: ") so that they
// read on their own; an operator needs none of them, and the line keeps
// exactly one "relay:".
func refuse(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "relay: refusing to start: %s\n", packagePrefixes.Replace(err.Error()))
	return exitRefused
}

// packagePrefixes removes the internal packages' error prefixes.
var packagePrefixes = strings.NewReplacer("relay: ", "", "tlsconf: ", "", "admission: ", "", "push: ", "", "cluster: ", "")

func serve(args []string, stdout, stderr io.Writer) int {
	// Signals are caught from the start: SIGHUP's default action would
	// kill the process (exit 129, which systemd counts as clean).
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	cfg, err := config.Parse(args, os.Getenv, stdout)
	if errors.Is(err, config.ErrHelp) {
		return exitOK
	}
	if eerr := config.CheckEnviron(os.Environ()); eerr != nil {
		return refuse(stderr, eerr)
	}
	if err != nil {
		return refuse(stderr, err)
	}
	// Production also refuses capabilities beyond CAP_NET_BIND_SERVICE (config
	// already refuses root). Not checked otherwise: developers and CI run as
	// root with every capability.
	if cfg.Production {
		if err := privilege.CheckCapabilities(privilege.ProcStatus); err != nil {
			return refuse(stderr, err)
		}
	}
	if cfg.Check {
		if err := server.Check(cfg); err != nil {
			return refuse(stderr, err)
		}
		fmt.Fprintf(stdout, "# relay serve --check: ok (mode %s); the effective settings, as a --config file would hold them\n", cfg.Mode)
		config.WriteSettings(stdout, cfg.Settings())
		return exitOK
	}
	level := new(slog.LevelVar) // SIGHUP may change it
	level.Set(parseLevel(cfg.LogLevel))
	log := slog.New(logging.NewHandler(stderr, &logging.Options{Level: level}))

	srv, err := server.New(cfg, log)
	if err != nil {
		return refuse(stderr, err)
	}
	if err := srv.Listen(); err != nil {
		if errors.Is(err, os.ErrPermission) {
			return refuse(stderr, err) // a port below 1024 without the capability: configuration
		}
		// A port in use (or an address not up yet) is a runtime failure:
		// exit 1, which systemd restarts, unlike a refusal.
		fmt.Fprintf(stderr, "relay: cannot start: %s\n", packagePrefixes.Replace(err.Error()))
		return exitRuntime
	}
	srv.Serve()
	logSettings(log, cfg) // after every refusal: a refusal stays one line
	log.Info("relay started", "event", "started", "version", buildinfo.Get().Version, "mode", string(cfg.Mode))

	r := &reloader{args: args, cfg: cfg, level: level, srv: srv, log: log}
	code := exitOK
	stopping := false
	for !stopping {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				r.reload()
				continue
			}
			log.Info("shutting down", "event", "shutdown")
			stopping = true
		case err := <-srv.Done():
			log.Error("listener failed", "event", "listener_failed", "error", err.Error())
			code = exitRuntime
			stopping = true
		}
	}
	if code == exitOK && r.cfg.DrainDelay > 0 { // as SIGHUP may have set it
		lameDuck(r, r.cfg.DrainDelay, sigs)
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown deadline passed; remaining connections dropped", "event", "shutdown_forced")
	}
	log.Info("stopped", "event", "stopped")
	return code
}

// lameDuck answers /readyz and /healthz 503 for d while every listener
// keeps serving, so that load balancers stop sending new clients before the
// drain closes anyone. A second SIGINT/SIGTERM ends it early; SIGHUP still
// reloads.
func lameDuck(r *reloader, d time.Duration, sigs <-chan os.Signal) {
	srv, log := r.srv, r.log
	srv.LameDuck()
	log.Info("lame duck: /readyz and /healthz answer 503 while the listeners keep serving; the drain follows", "event", "lame_duck", "duration_ms", d.Milliseconds())
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				r.reload()
				continue
			}
			log.Info("second signal: draining now", "event", "lame_duck_cut")
			return
		}
	}
}

// logSettings logs each setting that is not its default, once at start,
// with where it came from: what an operator changed, in the journal.
func logSettings(log *slog.Logger, cfg config.Config) {
	for _, s := range cfg.NonDefault() {
		log.Info("setting", "event", "setting", "setting", s.Name, "setting_value", s.Value, "setting_from", s.From)
	}
}

func parseLevel(s string) slog.Level {
	switch s {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}
