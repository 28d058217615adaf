// Command relay-fakefcm serves a fake FCM, and the OAuth2 token endpoint a
// service-account key names, on 127.0.0.1, so push wakes can be tried
// without a Firebase project (docs/deploy.md, "Trying push and autocert
// locally"). It writes a service-account key whose token_uri is the fake's
// into --dir (0600), and the relay flags that use both into
// DIR/relay-flags, then prints one line per wake FCM would deliver until
// Ctrl-C. The device token chooses the answer: one starting
// "unregistered", "invalid", "ratelimited", "unavailable", "servererror" or
// "revoke" gets that error, any other 200.
//
// It is internal/fcmtest, the fake the relay's own push tests use: the
// token endpoint verifies the key's signed assertion, and the fake FCM
// checks each request's path, bearer token and exact body.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/pyrycode/relay/internal/fcmtest"
)

func main() {
	dir := flag.String("dir", "", "directory for the service-account key and relay-flags (created 0700)")
	flag.Parse()
	if *dir == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: relay-fakefcm --dir DIR")
		os.Exit(2)
	}
	if err := run(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "relay-fakefcm:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	s, err := fcmtest.Start()
	if err != nil {
		return err
	}
	defer s.Close()
	s.Notify = func(r fcmtest.Request) {
		if r.Problem != "" {
			fmt.Printf("fcm: refused a malformed request (%s)\n", r.Problem)
			return
		}
		fmt.Printf("fcm: wake for device token %q\n", r.DeviceToken)
	}
	key, err := s.WriteCredentialsFile(dir, nil)
	if err != nil {
		return err
	}
	flags := fmt.Sprintf("--fcm-credentials %s --fcm-endpoint %s", key, s.Endpoint())
	if err := os.WriteFile(filepath.Join(dir, "relay-flags"), []byte(flags+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Printf("fake FCM on %s, token endpoint %s (project %s)\n", s.Endpoint(), s.TokenURL(), s.Project)
	fmt.Printf("relay flags (also in %s): %s\n", filepath.Join(dir, "relay-flags"), flags)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return nil
}
