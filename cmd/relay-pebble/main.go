// Command relay-pebble runs Pebble, Let's Encrypt's test ACME server, on
// 127.0.0.1, so autocert mode can be tried without a public name
// (docs/deploy.md, "Trying push and autocert locally"). Validation is
// skipped (PEBBLE_VA_ALWAYS_VALID), so any dotted name such as
// relay.example.test is issued without DNS or port 80. It writes into
// --dir: pebble-wfe-ca.pem (the ACME listener's own certificate, for the
// relay's --acme-ca), pebble-root.pem (the root Pebble's certificates
// chain to, for clients: curl --cacert, relay attack --ca) and relay-flags
// (--acme-directory and --acme-ca), then runs until Ctrl-C.
//
// It is internal/acmetest, the Pebble the relay's own autocert tests use.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/pyrycode/relay/internal/acmetest"
)

func main() {
	dir := flag.String("dir", "", "directory for the CA files and relay-flags (created 0700)")
	listen := flag.String("listen", "127.0.0.1:14000", "the ACME listener (loopback)")
	flag.Parse()
	if *dir == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: relay-pebble --dir DIR [--listen 127.0.0.1:14000]")
		os.Exit(2)
	}
	if err := run(*dir, *listen); err != nil {
		fmt.Fprintln(os.Stderr, "relay-pebble:", err)
		os.Exit(1)
	}
}

func run(dir, listen string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	s, err := acmetest.Run(listen)
	if err != nil {
		return err
	}
	defer s.Close()
	ca := s.WriteCAFile(dir)
	root := filepath.Join(dir, "pebble-root.pem")
	if err := os.WriteFile(root, s.RootsPEM, 0o644); err != nil {
		return err
	}
	flags := fmt.Sprintf("--acme-directory %s --acme-ca %s", s.DirectoryURL, ca)
	if err := os.WriteFile(filepath.Join(dir, "relay-flags"), []byte(flags+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Printf("Pebble ACME directory %s; clients trust %s\n", s.DirectoryURL, root)
	fmt.Printf("relay flags (also in %s): %s\n", filepath.Join(dir, "relay-flags"), flags)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return nil
}
