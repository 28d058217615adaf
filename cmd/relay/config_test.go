package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// writeTOML writes a configuration file and returns its path.
func writeTOML(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "relay.toml")
	require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
	return p
}

// relay serve --check validates a static-TLS configuration from a file
// without binding its port (held here), prints the effective settings as
// a file that reads back, with where each came from and no URL password,
// and exits 0.
func TestCheck_ValidConfig_PrintsSettings_BindsNothing(t *testing.T) {
	certFile, keyFile := writeCertPair(t)
	held := holdPort(t)
	conf := writeTOML(t, "tls-cert = \""+certFile+"\"\ntls-key = \""+keyFile+"\"\nhttps-listen = \""+held+"\"\nmax-conns = 100\n")
	env := relayEnv(t, "RELAY_MAX_PHONES=8")
	args := []string{"serve", "--check", "--config", conf, "--cluster-nats", "nats://relay:s3cret@127.0.0.1:1", "--log-level", "debug"}
	r := runRelay(t, env, args...)
	require.Equal(t, 0, r.code, r.stderr)
	require.Empty(t, r.stderr)
	require.Contains(t, r.stdout, "relay serve --check: ok (mode static)")
	require.Contains(t, r.stdout, "\nmax-conns = 100  # "+conf+":4\n")
	require.Contains(t, r.stdout, "\nmax-phones = 8  # env\n")
	require.Contains(t, r.stdout, "\nlog-level = 'debug'  # flag\n")
	require.Contains(t, r.stdout, "\n# ping-interval = '30s'  # default\n")
	require.Contains(t, r.stdout, "nats://relay:xxxxx@127.0.0.1:1")
	require.NotContains(t, r.stdout, "s3cret")

	// What it printed is a configuration: checked again, the same settings.
	again := writeTOML(t, r.stdout)
	r2 := runRelay(t, relayEnv(t), "serve", "--check", "--config", again, "--cluster-nats", "nats://127.0.0.1:1")
	require.Equal(t, 0, r2.code, r2.stderr)
	require.Contains(t, r2.stdout, "\nmax-conns = 100  # "+again)
	require.Contains(t, r2.stdout, "\nmax-phones = 8  # "+again)
}

// relay serve --check refuses what a start refuses, with the same one line
// and exit 2, and creates nothing (a missing certificate cache is fine and
// stays missing).
func TestCheck_RefusesWhatAStartRefuses_CreatesNothing(t *testing.T) {
	certFile, keyFile := writeCertPair(t)
	dir := t.TempDir()
	missingKey := filepath.Join(dir, "missing-key.pem")
	looseKey := filepath.Join(dir, "loose-key.pem")
	data, err := os.ReadFile(keyFile)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(looseKey, data, 0o600))
	require.NoError(t, os.Chmod(looseKey, 0o644))
	looseCache := filepath.Join(dir, "loose-cache")
	require.NoError(t, os.Mkdir(looseCache, 0o700))
	require.NoError(t, os.Chmod(looseCache, 0o755))
	looseCreds := filepath.Join(dir, "loose.creds")
	require.NoError(t, os.WriteFile(looseCreds, []byte("x"), 0o600))
	require.NoError(t, os.Chmod(looseCreds, 0o640))
	static := func(cert, key string) []string {
		return []string{"serve", "--check", "--tls-cert", cert, "--tls-key", key, "--https-listen", "127.0.0.1:0"}
	}
	autocert := func(cache string) []string {
		return []string{"serve", "--check", "--domain", "relay.example.test", "--cert-cache", cache, "--https-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"}
	}
	fileKey := writeTOML(t, "tls-cert = \""+certFile+"\"\ntls-key = \""+missingKey+"\"\nhttps-listen = \"127.0.0.1:0\"\n")
	for name, tc := range map[string]struct {
		env  []string
		args []string
		want []string
	}{
		"key missing":           {nil, static(certFile, missingKey), []string{"--tls-key / RELAY_TLS_KEY: ", "no such file"}},
		"key missing from env":  {[]string{"RELAY_TLS_KEY=" + missingKey}, []string{"serve", "--check", "--tls-cert", certFile, "--https-listen", "127.0.0.1:0"}, []string{"--tls-key / RELAY_TLS_KEY: ", "no such file"}},
		"key missing from file": {nil, []string{"serve", "--check", "--config", fileKey}, []string{"--tls-key / RELAY_TLS_KEY (set in " + fileKey + ":2): ", "no such file"}},
		"cert missing":          {nil, static(filepath.Join(dir, "nope.pem"), keyFile), []string{"--tls-cert / RELAY_TLS_CERT: "}},
		"key world-readable":    {nil, static(certFile, looseKey), []string{"--tls-key / RELAY_TLS_KEY: ", "mode 0644"}},
		"pair swapped":          {nil, static(keyFile, certFile), []string{"--tls-cert / RELAY_TLS_CERT and --tls-key / RELAY_TLS_KEY: ", "swapped"}},
		"cache 0755":            {nil, autocert(looseCache), []string{"--cert-cache / RELAY_CERT_CACHE: ", "mode 0755"}},
		"fcm key missing":       {nil, []string{"serve", "--check", "--insecure-listen", "127.0.0.1:0", "--fcm-credentials", filepath.Join(dir, "k.json")}, []string{"--fcm-credentials / RELAY_FCM_CREDENTIALS: "}},
		"nats creds 0640":       {nil, []string{"serve", "--check", "--insecure-listen", "127.0.0.1:0", "--cluster-nats", "nats://127.0.0.1:1", "--cluster-nats-creds", looseCreds}, []string{"--cluster-nats-creds / RELAY_CLUSTER_NATS_CREDS: ", "mode 0640"}},
		"nats ca not pem":       {nil, []string{"serve", "--check", "--insecure-listen", "127.0.0.1:0", "--cluster-nats", "nats://127.0.0.1:1", "--cluster-nats-ca", looseCreds}, []string{"--cluster-nats-ca / RELAY_CLUSTER_NATS_CA: ", "no PEM certificate"}},
		"acme ca missing":       {nil, append(autocert(filepath.Join(dir, "c1")), "--acme-ca", filepath.Join(dir, "ca.pem")), []string{"--acme-ca / RELAY_ACME_CA: "}},
		"mistyped variable":     {[]string{"RELAY_MAX_CON=5"}, static(certFile, keyFile), []string{"unknown variable RELAY_MAX_CON", "RELAY_MAX_CONNS"}},
		"mode conflict":         {nil, append(static(certFile, keyFile), "--domain", "relay.example.test"), []string{"mutually exclusive"}},
		"unknown key":           {nil, []string{"serve", "--check", "--config", writeTOML(t, "insecure-listen = \"127.0.0.1:0\"\nmax-con = 5\n")}, []string{".toml:2: unknown key max-con"}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := runRelay(t, relayEnv(t, tc.env...), tc.args...)
			requireRefusal(t, r, tc.want...)
			require.Empty(t, r.stdout)
		})
	}
	fresh := filepath.Join(dir, "fresh-cache")
	r := runRelay(t, relayEnv(t), autocert(fresh)...)
	require.Equal(t, 0, r.code, r.stderr)
	_, err = os.Stat(fresh)
	require.True(t, os.IsNotExist(err), "--check created the cache directory")
}

// A start logs each setting that is not its default, once, naming where
// it came from; a setting at its default is not logged.
func TestServe_LogsNonDefaultSettingsOnce(t *testing.T) {
	conf := writeTOML(t, "insecure-listen = \"127.0.0.1:0\"\nmax-conns = 100\nping-interval = \"30s\"\n")
	p := startRelay(t, relayEnv(t, "RELAY_MAX_PHONES=8"), "serve", "--config", conf, "--log-level", "debug")
	p.waitListening(t, "public")
	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))
	requireJSONLogs(t, p.stderrLines())
	got := map[string][2]string{}
	for _, l := range p.stderrLines() {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["event"] == "setting" {
			name := m["setting"].(string)
			_, twice := got[name]
			require.False(t, twice, "%s logged twice", name)
			got[name] = [2]string{m["setting_value"].(string), m["setting_from"].(string)}
		}
	}
	require.Equal(t, map[string][2]string{
		"insecure-listen": {"127.0.0.1:0", conf + ":1"},
		"max-conns":       {"100", conf + ":2"},
		"max-phones":      {"8", "env"},
		"log-level":       {"debug", "flag"},
		"drain-delay":     {"0s", "env"}, // relayEnv's RELAY_DRAIN_DELAY=0s
	}, got, "ping-interval is set to its default: not logged")
	require.False(t, strings.Contains(strings.Join(p.stderrLines(), "\n"), `"setting":"ping-interval"`))
}
