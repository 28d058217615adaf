package attacks

import (
	"context"
	"net"
	"os"
	"strings"
	"time"
)

// Push credentials in the clear: the FCM bearer token goes to
// --fcm-endpoint and the service account's signed assertion to the key
// file's token_uri. Plain http is allowed only to a loopback IP literal
// (test servers), so neither ever crosses a network unencrypted. The
// scenario:
//
//  1. Starts the real binary with --fcm-endpoint, then with a key file's
//     token_uri, set to plain http URLs that are not a loopback IP literal:
//     private and link-local ranges, IPv4-mapped IPv6 of a private address,
//     a zoned IPv6, names ("localhost" and look-alikes), 127.0.0.1 spelled
//     as inet_aton reads it (decimal, hex, octal, short), and userinfo
//     that puts 127.0.0.1 before the real host. Each must exit 2 before
//     binding a port, one stderr line naming --fcm-endpoint (or the file
//     and token_uri). http to 127.0.0.1, [::1] and [::ffff:127.0.0.1] start.
//  2. On a running relay with push on, makes the token endpoint and then
//     FCM answer 307 to a trap server: a redirect would resend the
//     assertion or the bearer token wherever Location points. Nothing may
//     reach the trap; each wake ends "failed", and with the redirects gone
//     a wake is sent (the setup works).
func pushCleartext() Scenario {
	return Scenario{
		ID:        "ATK-PUSH-CLEARTEXT",
		Title:     "Plain-http FCM endpoint or token_uri other than a loopback IP (private, mapped, zoned, names, 127.1, userinfo): exit 2 naming it; redirects of the token or FCM request never followed",
		Threats:   []string{"TM-OUT-6"},
		Mode:      LocalOnly,
		LocalOnly: "it starts relays with refused FCM endpoints and key files on this machine, against a fake token endpoint and FCM that redirect to a trap",
		Run:       runPushCleartext,
	}
}

// cleartextRefused are plain-http URLs that must be refused; each is
// tried as --fcm-endpoint and as token_uri.
var cleartextRefused = []string{
	"http://10.0.0.1", "http://172.16.0.1:8080", "http://192.168.1.1", "http://169.254.169.254", "http://0.0.0.0",
	"http://[fd00::1]", "http://[fe80::1%25lo]", "http://[::ffff:10.0.0.1]", "http://[::1%25lo]", "http://[::127.0.0.1]",
	"http://localhost:8080", "http://localhost.", "http://127.0.0.1.nip.io", "http://localhost.attacker.example",
	"http://2130706433", "http://0x7f.0.0.1", "http://0177.0.0.1", "http://127.1",
	"http://127.0.0.1@attacker.example", "http://127.0.0.1:80@attacker.example",
}

func runPushCleartext(ctx context.Context, t *Target) Result {
	l, g, skip := localFakeGoogle(t)
	if skip != nil {
		return *skip
	}
	defer g.Close()
	dir, err := os.MkdirTemp(l.TempDir, "push-cleartext-")
	if err != nil {
		return Failf("scratch dir: %v", err)
	}
	defer os.RemoveAll(dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Failf("hold a port: %v", err)
	}
	defer ln.Close()
	held := ln.Addr().String()
	good, err := g.writeCredentials(dir)
	if err != nil {
		return Failf("key file: %v", err)
	}
	start := func(creds, endpoint, listen string) (*Process, error) {
		return l.Start(ctx, "--fcm-credentials", creds, "--fcm-endpoint", endpoint, "--insecure-listen", listen)
	}
	// refused checks a start was refused before any port, naming want.
	refused := func(what string, p *Process, err error, want ...string) *Result {
		if err == nil {
			p.Stop()
			r := Failf("%s: the relay started and listened on %s", what, p.Addr)
			return &r
		}
		line, code := refusalLine(p)
		low := strings.ToLower(line)
		switch {
		case strings.Contains(line, "address already in use"):
			r := Failf("%s accepted: the relay went on to bind the port this scenario holds (%q)", what, line)
			return &r
		case code != 2:
			r := Failf("%s: exit code %d, want 2; stderr: %q", what, code, tail(logText(p), 300))
			return &r
		case len(nonEmpty(p.Log())) != 1:
			r := Failf("%s: %d stderr lines, want one: %q", what, len(nonEmpty(p.Log())), tail(logText(p), 300))
			return &r
		case !strings.Contains(low, "https"):
			r := Failf("%s: refusal %q does not say https is needed", what, line)
			return &r
		}
		for _, w := range want {
			if !strings.Contains(line, w) {
				r := Failf("%s: refusal %q does not name %s", what, line, w)
				return &r
			}
		}
		return nil
	}

	// 1. Refusals through the real binary, and the loopback controls.
	for _, u := range []string{"http://127.0.0.1:1", "http://[::1]:1", "http://[::ffff:127.0.0.1]:1"} {
		p, err := start(good, u, "127.0.0.1:0")
		if err != nil {
			return Failf("--fcm-endpoint %s (a loopback IP) did not start: %v: %s", u, err, tail(logText(p), 300))
		}
		p.Stop()
	}
	for _, u := range cleartextRefused {
		p, err := start(good, u, held)
		if r := refused("--fcm-endpoint "+u, p, err, "--fcm-endpoint"); r != nil {
			return *r
		}
	}
	for _, u := range cleartextRefused {
		creds, err := g.writeCredentialsURI(dir, u+"/token")
		if err != nil {
			return Failf("key file: %v", err)
		}
		p, err := start(creds, g.base, held)
		if r := refused("token_uri "+u, p, err, creds, "token_uri"); r != nil {
			return *r
		}
		if strings.Contains(p.LogText(), strings.TrimPrefix(u, "http://")) {
			return Failf("token_uri %s: the refusal quotes the key file: %q", u, tail(logText(p), 200))
		}
	}

	// 2. Redirects on a running relay. The token endpoint redirects first,
	// so no access token is cached yet.
	g.redirectTokens(true)
	p, err := startPushRelay(ctx, l, g, "--push-timeout", "2s")
	if err != nil {
		return Failf("start relay: %v: %s", err, tail(logText(p), 300))
	}
	defer p.Stop()
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return Failf("%v", err)
	}
	s, err := newSession(ctx, &Target{Base: p.URL})
	if err != nil {
		return Failf("binary: %v", err)
	}
	defer s.Close()
	failed := func(n int) bool {
		return pollUntil(ctx, 5*time.Second, 20*time.Millisecond, func() bool {
			v, err := m.value(ctx, `relay_push_wakes_total{outcome="failed"}`)
			return err == nil && int(v) >= n
		})
	}
	if err := s.wake("token-redirected-" + randHex(8)); err != nil {
		return Failf("wake: %v", err)
	}
	if !failed(1) {
		all, _ := m.scrape(ctx)
		return Failf("the wake whose token request was redirected did not end failed: %v (trap hits %d)", pushCounts(all), g.trapped())
	}
	if n := g.trapped(); n != 0 {
		return Failf("the token request followed a 307 redirect: %d request(s) carried the signed assertion to the redirect's target", n)
	}
	g.redirectTokens(false)
	ok := "ok-" + randHex(8)
	if err := s.wake(ok); err != nil {
		return Failf("wake: %v", err)
	}
	if !pollUntil(ctx, 5*time.Second, 20*time.Millisecond, func() bool {
		sends, _, _, _ := g.stats()
		n, _ := countSends(sends, ok)
		return n == 1
	}) {
		return Failf("with the redirect gone, a wake never reached FCM: the setup is broken, so the redirect checks prove nothing")
	}
	if err := s.wake("redirect-" + randHex(8)); err != nil {
		return Failf("wake: %v", err)
	}
	if !failed(2) {
		all, _ := m.scrape(ctx)
		return Failf("the wake FCM redirected did not end failed: %v (trap hits %d)", pushCounts(all), g.trapped())
	}
	if n := g.trapped(); n != 0 {
		return Failf("the FCM request followed a 307 redirect: %d request(s) carried the bearer token to the redirect's target", n)
	}
	return Passf("%d plain-http URLs (private, link-local, mapped, zoned, names, 127.1 forms, userinfo) each refused as --fcm-endpoint and as token_uri: exit 2, one line naming it, no port bound; http to 127.0.0.1, [::1], [::ffff:127.0.0.1] started; 307 from the token endpoint and from FCM: nothing reached the target, both wakes failed, a wake without redirect was sent",
		len(cleartextRefused))
}
