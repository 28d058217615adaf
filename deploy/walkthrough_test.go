package deploy

// The walkthrough of issue 21's "Done when", as tests that follow the
// documents: the .deb install and the configuration file with --check
// (deb_test.go, run by make deb), a SIGHUP reload of a limit through the
// units' own ExecReload lines, /readyz through a NATS outage, a
// Kubernetes-style secret, and the attack timer writing its file as its own
// user (attack_units_test.go).

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// TestWalkthrough_ReadyzThroughNATSOutage: a relay in cluster mode with the
// metrics listener, probed with the command docs/deploy.md gives a health
// check (`relay healthcheck --url http://METRICS/readyz`, only the address
// changed): ready with NATS up, not ready (exit 1) while NATS is down,
// though /livez still answers, and ready again once NATS is back.
func TestWalkthrough_ReadyzThroughNATSOutage(t *testing.T) {
	doc := string(mustRead(t, "../docs/deploy.md"))
	m := regexp.MustCompile("`relay healthcheck --url http://127\\.0\\.0\\.1:9090(/readyz)`").FindStringSubmatch(doc)
	require.NotNil(t, m, "docs/deploy.md gives the health check command")

	ns, err := natstest.Start(t.TempDir(), 0)
	require.NoError(t, err)
	t.Cleanup(ns.Stop)
	addrs := serveRelay(t, "--insecure-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--cluster-nats", ns.URL(), "--instance-id", "walkthrough")
	check := func(path string) int {
		out, err := exec.Command(relayBin, "healthcheck", "--url", "http://"+addrs["metrics"]+path, "--timeout", "2s").CombinedOutput()
		if err == nil {
			return 0
		}
		ee, ok := err.(*exec.ExitError)
		require.True(t, ok, "%v: %s", err, out)
		require.NotEqual(t, 2, ee.ExitCode(), "a usage error: %s", out)
		return ee.ExitCode()
	}
	until := func(path string, code int, why string) {
		t.Helper()
		start := time.Now()
		require.Eventually(t, func() bool { return check(path) == code }, 20*time.Second, 100*time.Millisecond, why)
		t.Logf("%s: healthcheck %s exits %d after %v", why, path, code, time.Since(start).Round(10*time.Millisecond))
	}
	until(m[1], 0, "NATS up")
	ns.Stop()
	until(m[1], 1, "NATS down")
	require.Equal(t, 0, check("/livez"), "the process itself is fine")
	require.NoError(t, ns.Restart())
	until(m[1], 0, "NATS back")
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return b
}

// unitConfig renders deploy/relay.toml's block for unit (modeConfig) as a
// file, each loopback address moved to a free port, plus extra lines.
func unitConfig(t *testing.T, unit string, extra ...string) string {
	t.Helper()
	var b strings.Builder
	keys := []string{}
	conf := modeConfig(t, unit)
	for k := range conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := regexp.MustCompile(`127\.0\.0\.1:\d+`).ReplaceAllStringFunc(conf[k], func(string) string { return freeLoopbackAddr(t) })
		fmt.Fprintf(&b, "%s = %s\n", k, v)
	}
	for _, l := range extra {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// dialBinary claims serverID on the relay at addr from the loopback address
// from and returns the answer's HTTP status (101 when admitted; the socket
// stays open until the test ends).
func dialBinary(t *testing.T, addr, from, serverID string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	c, resp, err := websocket.Dial(ctx, "ws://"+addr+"/v1/server", &websocket.DialOptions{HTTPClient: client, HTTPHeader: http.Header{
		"X-Pyrycode-Server": {serverID}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"deploy-test"}}})
	if err != nil {
		require.NotNil(t, resp, "%v", err)
		return resp.StatusCode
	}
	t.Cleanup(func() { c.CloseNow() })
	return http.StatusSwitchingProtocols
}

// execReload runs a unit's ExecReload lines as systemd does: in order, each
// to its end, stopping at the first that fails (which fails the reload).
func execReload(t *testing.T, lines []string, conf string, pid int) (ran int, out string, err error) {
	t.Helper()
	for _, l := range lines {
		l = strings.ReplaceAll(l, "/usr/bin/relay", relayBin)
		l = strings.ReplaceAll(l, confPath, conf)
		l = strings.ReplaceAll(l, "$MAINPID", strconv.Itoa(pid))
		f := strings.Fields(l)
		cmd := exec.Command(f[0], f[1:]...)
		cmd.Env = append(os.Environ(), "RELAY_PRODUCTION=")
		b, e := cmd.CombinedOutput()
		ran++
		out += string(b)
		if e != nil {
			return ran, out, e
		}
	}
	return ran, out, nil
}

// TestWalkthrough_ReloadALimit: the relay runs as relay-proxy.service runs
// it (its ExecStart; the configuration its block of deploy/relay.toml, on
// free ports, with max-conns = 1), and a second binary is refused 503. The
// file edited to max-conns = 2 and the unit's own ExecReload lines run as
// systemd runs them (relay serve --check, then kill -HUP $MAINPID): the
// relay logs the change and admits the second binary. Then a mistyped key:
// the check exits 2 naming it, so the signal is never sent and the reload
// fails, and the relay keeps max-conns = 2 (a third binary is refused).
func TestWalkthrough_ReloadALimit(t *testing.T) {
	const unit = "relay-proxy.service"
	d := directives(t, unit)
	require.Len(t, d["ExecStart"], 1)
	start := strings.Fields(d["ExecStart"][0])
	require.Equal(t, []string{"/usr/bin/relay", "serve", "--config", confPath}, start)

	conf := filepath.Join(t.TempDir(), "relay.toml")
	body := unitConfig(t, unit)
	// Per address 1 as well (it may not exceed max-conns); each binary
	// comes from an address of its own.
	require.NoError(t, os.WriteFile(conf, []byte(body+"max-conns-per-ip = 1\nmax-conns = 1\n"), 0o644))
	p := startServe(t, []string{"public", "metrics"}, "--config", conf)
	addr := p.addrs["public"]

	require.Equal(t, http.StatusSwitchingProtocols, dialBinary(t, addr, "127.0.0.2", "walk-a"))
	require.Equal(t, http.StatusServiceUnavailable, dialBinary(t, addr, "127.0.0.3", "walk-b"), "max-conns = 1")

	require.NoError(t, os.WriteFile(conf, []byte(body+"max-conns-per-ip = 1\nmax-conns = 2\n"), 0o644))
	ran, out, err := execReload(t, d["ExecReload"], conf, p.cmd.Process.Pid)
	require.NoError(t, err, "systemctl reload of a valid change failed: %s", out)
	require.Equal(t, 2, ran)
	require.Eventually(t, func() bool { return strings.Contains(p.log.String(), `"event":"setting_changed"`) },
		10*time.Second, 20*time.Millisecond, "the relay never logged the changed limit")
	require.Equal(t, http.StatusSwitchingProtocols, dialBinary(t, addr, "127.0.0.3", "walk-b"), "max-conns = 2 after the reload")

	require.NoError(t, os.WriteFile(conf, []byte(body+"max-conns-per-ip = 1\nmax-con = 5\n"), 0o644))
	ran, out, err = execReload(t, d["ExecReload"], conf, p.cmd.Process.Pid)
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "a reload of a file with an unknown key succeeded: %s", out)
	require.Equal(t, 2, ee.ExitCode(), out)
	require.Equal(t, 1, ran, "systemd stops at the failed check: no SIGHUP")
	require.Contains(t, out, "unknown key max-con;", "the refusal names the key")
	require.Equal(t, http.StatusServiceUnavailable, dialBinary(t, addr, "127.0.0.4", "walk-c"), "still max-conns = 2")
	require.NotContains(t, p.log.String(), `"event":"config_reload_refused"`, "the relay was never signalled")
}

// k8sSecretMount lays out dir as docs/deploy.md "Kubernetes secrets" says
// the kubelet mounts a Secret volume: the volume's root 1777, the files in
// a timestamped directory (0755), ..data pointing at it, and each key a
// symlink through ..data (key -> ..data/key), the file at the volume's
// defaultMode. Returns the key's path.
func k8sSecretMount(t *testing.T, dir, key string, content []byte, mode os.FileMode) string {
	t.Helper()
	ts := "..2026_12_07_17_00_00.123456789"
	require.NoError(t, os.Chmod(dir, 0o1777|os.ModeSticky))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, ts), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ts, key), content, mode))
	require.NoError(t, os.Chmod(filepath.Join(dir, ts, key), mode))
	require.NoError(t, os.Symlink(ts, filepath.Join(dir, "..data")))
	require.NoError(t, os.Symlink(filepath.Join("..data", key), filepath.Join(dir, key)))
	return filepath.Join(dir, key)
}

// TestWalkthrough_KubernetesSecret: the FCM key from relay-fakefcm (the
// documented local push set-up) mounted as Kubernetes mounts a Secret with
// the documented defaultMode 0440 (key.json -> ..data/key.json, ..data ->
// ..TIMESTAMP/, the volume's root 1777): the relay
// starts with --fcm-credentials naming the mounted key, and a binary's
// wake reaches the fake FCM. The same mount at Kubernetes' default mode
// (0644, world-readable) is refused (exit 2, naming the flag).
func TestWalkthrough_KubernetesSecret(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "push")
	out, _ := startCmd(t, buildCmd(t, "relay-fakefcm"), "--dir", dir)
	waitFile(t, filepath.Join(dir, "relay-flags"), out)
	flags := strings.Fields(strings.TrimSpace(string(mustRead(t, filepath.Join(dir, "relay-flags")))))
	require.Equal(t, "--fcm-credentials", flags[0])
	key := mustRead(t, flags[1])

	mount := filepath.Join(t.TempDir(), "fcm")
	require.NoError(t, os.Mkdir(mount, 0o755))
	mounted := k8sSecretMount(t, mount, "key.json", key, 0o440)
	flags[1] = mounted
	addrs := serveRelay(t, append([]string{"--insecure-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, flags...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addrs["public"]+"/v1/server", &websocket.DialOptions{HTTPHeader: http.Header{
		"X-Pyrycode-Server": {"walk-k8s"}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"deploy-test"}}})
	require.NoError(t, err)
	defer c.CloseNow()
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(`{"push_wake":{"platform":"fcm","token":"k8s-phone"}}`)))
	require.Eventually(t, func() bool { return strings.Contains(out.String(), `fcm: wake for device token "k8s-phone"`) },
		20*time.Second, 20*time.Millisecond, "the fake FCM never got the wake:\n%s", out)

	// Kubernetes' own default mode, 0644, leaves the key world-readable:
	// refused at start, as a loose file is.
	open := filepath.Join(t.TempDir(), "fcm")
	require.NoError(t, os.Mkdir(open, 0o755))
	flags[1] = k8sSecretMount(t, open, "key.json", key, 0o644)
	cmd := exec.Command(relayBin, append([]string{"serve", "--check", "--insecure-listen", "127.0.0.1:0"}, flags...)...)
	cmd.Env = append(os.Environ(), "RELAY_PRODUCTION=")
	res, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "a world-readable key behind the mount's links was accepted: %s", res)
	require.Equal(t, 2, ee.ExitCode(), "%s", res)
	require.Contains(t, string(res), "--fcm-credentials", "the refusal names the flag")
}
