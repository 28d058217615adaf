// Command relay is the pyrycode WebSocket relay.
//
//	relay serve [flags]   run the relay (see relay serve -h)
//	relay attack [flags]  run the remote-safe attack suite against a deployment
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
		return attacks.Main(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, buildinfo.Get())
		return exitOK
	case "help", "-h", "-help", "--help":
		// relay help serve|attack is their -h.
		if len(args) == 2 && (args[1] == "serve" || args[1] == "attack") {
			return run([]string{args[1], "-h"}, stdout, stderr)
		}
		usage(stdout)
		return exitOK
	default:
		fmt.Fprintf(stderr, "relay: unknown command %q (see relay help)\n", args[0])
		return exitRefused
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  relay serve [flags]    run the relay (relay serve -h lists every flag)
  relay attack [flags]   run the remote-safe attack suite (relay attack -h)
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
	cfg, err := config.Parse(args, os.Getenv, stdout)
	if errors.Is(err, config.ErrHelp) {
		return exitOK
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
	log := logging.New(stderr, parseLevel(cfg.LogLevel))

	srv, err := server.New(cfg, log)
	if err != nil {
		return refuse(stderr, err)
	}
	if err := srv.Listen(); err != nil {
		return refuse(stderr, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv.Serve()
	log.Info("relay started", "event", "started", "version", buildinfo.Get().Version, "mode", string(cfg.Mode))

	code := exitOK
	select {
	case <-ctx.Done():
		log.Info("shutting down", "event", "shutdown")
	case err := <-srv.Done():
		log.Error("listener failed", "event", "listener_failed", "error", err.Error())
		code = exitRuntime
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown deadline passed; remaining connections dropped", "event", "shutdown_forced")
	}
	log.Info("stopped", "event", "stopped")
	return code
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
