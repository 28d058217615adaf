package main

// Push wakes through the real binary: a binary's push_wake becomes exactly
// one FCM request at a fake FCM on loopback, signed through a fake token
// endpoint that verifies the service account's assertion; and a hanging
// FCM never slows the binary's frames.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/fcmtest"
	"github.com/pyrycode/relay/internal/push"
)

// scrapeMetric reads one series' value from the metrics listener.
func scrapeMetric(t *testing.T, addr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			require.NoError(t, err)
			return f
		}
	}
	t.Fatalf("series %s not exported", series)
	return 0
}

func pushRelay(t *testing.T, fake *fcmtest.Server, extra ...string) (p *proc, addr, metrics string) {
	t.Helper()
	creds := fake.WriteCredentials(t, t.TempDir(), nil)
	args := append([]string{"serve", "--insecure-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--fcm-endpoint", fake.Endpoint(), "--log-level", "debug"}, extra...)
	p = startRelay(t, relayEnv(t, "RELAY_FCM_CREDENTIALS="+creds), args...)
	return p, p.waitListening(t, "public"), p.waitListening(t, "metrics")
}

func randomToken(prefix string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func TestPush_OneWakeIsExactlyOneSignedWellShapedFCMRequest(t *testing.T) {
	fake := fcmtest.New(t)
	p, addr, maddr := pushRelay(t, fake)
	bin := dialWS(t, "ws://"+addr+"/v1/server", http.Header{"X-Pyrycode-Server": {"srv-push"}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"main_test"}})
	require.Eventually(t, func() bool { b, _ := healthz(t, addr); return b == 1 }, 5*time.Second, 10*time.Millisecond)

	token := randomToken("device")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, bin.Write(ctx, websocket.MessageText, []byte(`{"push_wake":{"platform":"fcm","token":"`+token+`"}}`)))

	reqs := fake.WaitRequests(ctx, 1, 5*time.Second)
	require.Len(t, reqs, 1)
	require.Empty(t, reqs[0].Problem, "request shape")
	require.Equal(t, token, reqs[0].DeviceToken)
	require.Equal(t, 1, fake.TokenRequests())
	require.Empty(t, fake.Rejected(), "the assertion verifies against the service account's public key")
	require.Eventually(t, func() bool {
		return scrapeMetric(t, maddr, `relay_push_wakes_total{outcome="sent"}`) == 1
	}, 5*time.Second, 10*time.Millisecond)
	for _, o := range push.AllOutcomes {
		if o != push.OutcomeSent {
			require.Zero(t, scrapeMetric(t, maddr, `relay_push_wakes_total{outcome="`+string(o)+`"}`), o)
		}
	}

	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))
	require.Len(t, fake.Requests(), 1, "exactly one request per wake")
	log := strings.Join(p.stderrLines(), "\n")
	requireJSONLogs(t, p.stderrLines())
	require.NotContains(t, log, token)
	require.NotContains(t, log, token[len("device-"):])
	require.Contains(t, log, `"token_fp":"`+push.Fingerprint(token)+`"`)
	// Push is said to be on once at start, with the project and no byte of the key.
	require.Equal(t, 1, p.countEvent("push_enabled"))
	on := p.waitEvent(t, "push_enabled", time.Second)
	require.Equal(t, fake.Project, on["fcm_project"])
	require.NotContains(t, log, "PRIVATE KEY")
	require.NotContains(t, log, fake.KeyID)
}

func TestPush_FramesKeepFlowingWhileFCMHangs(t *testing.T) {
	fake := fcmtest.New(t)
	p, addr, maddr := pushRelay(t, fake, "--push-max-in-flight", "2", "--push-timeout", "1m", "--shutdown-timeout", "1s")
	bin := dialWS(t, "ws://"+addr+"/v1/server", http.Header{"X-Pyrycode-Server": {"srv-hang"}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"main_test"}})
	require.Eventually(t, func() bool { b, _ := healthz(t, addr); return b == 1 }, 5*time.Second, 10*time.Millisecond)
	phone := dialWS(t, "ws://"+addr+"/v1/client", http.Header{"X-Pyrycode-Server": {"srv-hang"}, "X-Pyrycode-Token": {tokenCanary}, "User-Agent": {"main_test"}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, phone.Write(ctx, websocket.MessageText, []byte(`{"hello":1}`)))
	_, msg, err := bin.Read(ctx)
	require.NoError(t, err)
	connID := msg[strings.Index(string(msg), "client-") : strings.Index(string(msg), "client-")+23]

	// Ten wakes into a hanging FCM: two hang (the in-flight cap), the
	// rest are dropped at once.
	for i := range 10 {
		require.NoError(t, bin.Write(ctx, websocket.MessageText, []byte(`{"push_wake":{"platform":"fcm","token":"`+fcmtest.TokenHang+fmt.Sprint(i)+`"}}`)))
	}
	require.Eventually(t, func() bool { return fake.InFlight() == 2 }, 5*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		return scrapeMetric(t, maddr, `relay_push_wakes_total{outcome="dropped_inflight"}`) == 8
	}, 5*time.Second, 10*time.Millisecond)

	// While both sends hang, 200 frames each way go through.
	began := time.Now()
	for i := range 200 {
		require.NoError(t, bin.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf(`{"conn_id":%q,"frame":{"n":%d}}`, connID, i))))
		_, m, err := phone.Read(ctx)
		require.NoError(t, err)
		require.JSONEq(t, fmt.Sprintf(`{"n":%d}`, i), string(m))
		require.NoError(t, phone.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf(`{"back":%d}`, i))))
		_, m, err = bin.Read(ctx)
		require.NoError(t, err)
		require.Contains(t, string(m), fmt.Sprintf(`"frame":{"back":%d}`, i))
	}
	require.Less(t, time.Since(began), 10*time.Second)
	require.Equal(t, 2, fake.InFlight(), "the sends were still hanging throughout")
	require.Equal(t, 2.0, scrapeMetric(t, maddr, "relay_push_in_flight"))

	// Shutdown waits for them up to --shutdown-timeout, then aborts them.
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))
	require.Len(t, fake.Requests(), 2)
}

func TestServe_InsecureFCMCredentials_Exit2NamingTheFile(t *testing.T) {
	fake := fcmtest.New(t)
	dir := t.TempDir()
	creds := fake.WriteCredentials(t, dir, nil)
	require.NoError(t, os.Chmod(creds, 0o640))
	r := runRelay(t, relayEnv(t), "serve", "--insecure-listen", "127.0.0.1:0", "--fcm-credentials", creds)
	requireRefusal(t, r, creds, "insecure", "0640")
	require.NotContains(t, r.stderr, "PRIVATE KEY")
	require.NotContains(t, r.stderr, fake.Email)

	notKey := filepath.Join(dir, "not-a-key.json")
	require.NoError(t, os.WriteFile(notKey, []byte(`{"type":"authorized_user","refresh_token":"rt-secret"}`), 0o600))
	r = runRelay(t, relayEnv(t, "RELAY_FCM_CREDENTIALS="+notKey), "serve", "--insecure-listen", "127.0.0.1:0")
	requireRefusal(t, r, notKey, "service-account")
	require.NotContains(t, r.stderr, "rt-secret")
}
