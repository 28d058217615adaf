package attacks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// Push token leakage: FCM device tokens are secrets (whoever holds one can
// wake that phone through any sender of the app's project), and so are the
// service-account key and the OAuth2 access tokens it earns. The scenario
// drives every push path of a relay logging at debug level (sent, FCM
// hanging past --push-timeout, an unsupported platform, a rate-limited
// flood, shutdown with a send in flight) and then reads everything the
// relay wrote: no device token, access token, private key or account
// e-mail may appear in its log or on /metrics; each sent wake's log line
// carries the token's 8-hex SHA-256 fingerprint instead. gitleaks scans
// the log too, after showing on a control file that it finds a leaked
// token of the same shape.
func pushTokenLeak() Scenario {
	return Scenario{
		ID:        "ATK-PUSH-TOKEN-LEAK",
		Title:     "FCM device tokens, access tokens and the service-account key never reach the log or /metrics; only an 8-hex fingerprint is logged",
		Threats:   []string{"TM-OUT-3"},
		Mode:      LocalOnly,
		LocalOnly: "it reads the relay's log and its metrics listener (loopback only on a deployment), with a fake FCM",
		Run:       runPushTokenLeak,
	}
}

func runPushTokenLeak(ctx context.Context, t *Target) Result {
	l, g, skip := localFakeGoogle(t)
	if skip != nil {
		return *skip
	}
	defer g.Close()
	p, err := startPushRelay(ctx, l, g, "--log-level", "debug", "--push-timeout", "2s", "--push-burst", "6", "--shutdown-timeout", "1s")
	if err != nil {
		return Failf("start relay: %v: %s", err, tail(logText(p), 300))
	}
	defer p.Stop()
	tt := &Target{Base: p.URL}
	s, err := newSession(ctx, tt)
	if err != nil {
		return Failf("session: %v", err)
	}
	defer s.Close()

	// Shaped like a GitHub token so that gitleaks would flag a leak; FCM
	// tokens themselves match no gitleaks rule, so the others are canaries.
	ghp := "ghp_" + randHex(18)
	sent := []string{ghp, "c" + randHex(5) + ":APA91b" + canary("fcmsent"), canary("fcmsent2")}
	others := []string{"hang-" + canary("fcmhang"), canary("fcmflood"), canary("fcmflood2")}
	for _, tok := range sent {
		if err := s.wake(tok); err != nil {
			return Failf("wake: %v", err)
		}
	}
	if !pollUntil(ctx, 5*time.Second, 10*time.Millisecond, func() bool {
		sends, _, _, _ := g.stats()
		return len(sends) == len(sent)
	}) {
		return Failf("FCM did not receive the %d wakes: push is not working, so the log proves nothing: %s", len(sent), tail(logText(p), 300))
	}
	// A hang past --push-timeout (failed), then the bucket is empty: floods are dropped.
	if err := s.wake(others[0]); err != nil {
		return Failf("wake: %v", err)
	}
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return Failf("%v", err)
	}
	if !pollUntil(ctx, 6*time.Second, 20*time.Millisecond, func() bool {
		v, _ := m.value(ctx, `relay_push_wakes_total{outcome="failed"}`)
		return v == 1
	}) {
		return Failf("the hanging wake was not counted failed after --push-timeout 2s")
	}
	for _, tok := range others[1:] {
		_ = s.wake(tok)
		_ = s.wake(tok)
	}
	apns := canary("apns")
	others = append(others, apns)
	_ = s.Bin.Write(ctx, websocket.MessageText, []byte(`{"push_wake":{"platform":"apns","token":"`+apns+`"}}`))
	// A send in flight at shutdown.
	s2, err := newSession(ctx, tt)
	if err != nil {
		return Failf("session: %v", err)
	}
	defer s2.Close()
	shutdownTok := "hang-" + canary("fcmshutdown")
	_ = s2.wake(shutdownTok)
	if !pollUntil(ctx, 3*time.Second, 10*time.Millisecond, func() bool {
		sends, _, _, _ := g.stats()
		n, _ := countSends(sends, shutdownTok)
		return n == 1
	}) {
		return Failf("the wake to be in flight at shutdown never reached FCM")
	}
	others = append(others, shutdownTok)

	// Every path ran: 3 sent + 2 of the flood (the bucket of 6 then is
	// empty), 1 timed out, 2 dropped, 1 apns.
	want := map[string]float64{"sent": 5, "failed": 1, "dropped_rate": 2, "invalid_token": 1}
	var counts map[string]float64
	if !pollUntil(ctx, 5*time.Second, 20*time.Millisecond, func() bool {
		counts, _ = m.scrape(ctx)
		for o, n := range want {
			if counts[`relay_push_wakes_total{outcome="`+o+`"}`] != n {
				return false
			}
		}
		return true
	}) {
		return Failf("outcomes %s, want sent=5 failed=1 dropped_rate=2 invalid_token=1: not every path was exercised", pushCounts(counts))
	}
	metricsBody := ""
	if addr, ok := metricsAddr(p); ok {
		if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			metricsBody = string(b)
		}
	}
	if metricsBody == "" {
		return Failf("could not read /metrics")
	}
	if code := p.Stop(); code != 0 {
		return Failf("relay exit code %d after SIGTERM, want 0", code)
	}

	log := p.LogText()
	never := map[string]string{g.email: "service-account e-mail", "PRIVATE KEY": "private key PEM", fakeKeyID: "private key id",
		g.key.N.Text(16)[:32]: "RSA modulus"}
	for _, tok := range append(append([]string(nil), sent...), others...) {
		never[tok] = "device token"
		never[strings.TrimPrefix(tok, "hang-")] = "device token"
	}
	for _, at := range g.issuedTokens() {
		never[at] = "OAuth2 access token"
	}
	for secret, what := range never {
		if strings.Contains(log, secret) {
			return Failf("the log contains a %s", what)
		}
		if strings.Contains(metricsBody, secret) {
			return Failf("/metrics contains a %s", what)
		}
	}
	for _, tok := range sent {
		fp := sha256.Sum256([]byte(tok))
		if !strings.Contains(log, `"token_fp":"`+hex.EncodeToString(fp[:4])+`"`) {
			return Failf("no log line carries the sent wake's token fingerprint %s: %s", hex.EncodeToString(fp[:4]), tail(log, 300))
		}
	}
	for i, line := range p.Log() {
		if bad := checkLogLine(line); bad != "" {
			return Failf("log line %d: %s", i+1, bad)
		}
	}

	// gitleaks must find a token of this shape in a control file before
	// its silence about the log means anything.
	gl := "gitleaks not on PATH (skipped that part)"
	if _, err := exec.LookPath("gitleaks"); err == nil {
		ctl := runGitleaks(ctx, l.TempDir, `{"msg":"push wake","token":"`+ghp+`"}`)
		if !strings.HasPrefix(ctl, "FAIL: gitleaks found") {
			return Failf("gitleaks control: a log line with the token was not flagged (%s)", ctl)
		}
		gl = runGitleaks(ctx, l.TempDir, log)
		if strings.HasPrefix(gl, "FAIL") {
			return Failf("%s", gl)
		}
		gl += " (and flags the token in a control file)"
	}
	return Passf("%d log lines after 3 sent wakes, a timed-out one, a flood, an apns wake and a send aborted at shutdown: %d secrets (device tokens, access tokens, key, e-mail) absent from the log and /metrics; sent wakes logged by 8-hex fingerprint; %s",
		len(p.Log()), len(never), gl)
}

// checkLogLine: a JSON object whose keys are all allowlisted.
func checkLogLine(line string) string {
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		return fmt.Sprintf("not a JSON object: %q", tail(line, 80))
	}
	return checkLogValue("", m)
}
