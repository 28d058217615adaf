// Package deploy holds the operator files (systemd units, the .deb's
// nfpm.yaml and relay.toml, Grafana dashboard, Prometheus rules and their
// promtool cases, the NATS node's configuration and unit, nginx and HAProxy
// recipes) and the tests that keep them true: the units must pass
// systemd-analyze and score 2.0 or lower, every series the dashboard and
// the rules name must be one the real relay exports, `relay attack` through
// each proxy recipe must pass (proxy_test.go), the package must install
// into a throwaway root (deb_test.go, from make deb), and the documented
// walkthrough steps must work as written (walkthrough_test.go).
package deploy

import (
	"bufio"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// relayBin is the relay built once for this package's tests.
var relayBin string

// testParallel is how many of this package's parallel tests run at once
// unless -parallel says otherwise: the two proxy recipes' tests (about a
// minute each, waiting on the relay's timers through the proxy) and two
// that build or run a tool beside them. go test's default (GOMAXPROCS: 2
// on CI) would run the tools after the proxies.
const testParallel = 4

func TestMain(m *testing.M) {
	flag.Parse()
	parallelSet := false
	flag.Visit(func(f *flag.Flag) { parallelSet = parallelSet || f.Name == "test.parallel" })
	if !parallelSet {
		_ = flag.Set("test.parallel", strconv.Itoa(max(testParallel, runtime.GOMAXPROCS(0))))
	}
	dir, err := os.MkdirTemp("", "relay-deploy-")
	if err != nil {
		panic(err)
	}
	relayBin = filepath.Join(dir, "relay")
	// The shipped build's flags (make build: static, -trimpath), so the
	// packages make build compiled are reused.
	build := exec.Command("go", "build", "-trimpath", "-o", relayBin, "../cmd/relay")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		_ = os.RemoveAll(dir)
		panic("go build ../cmd/relay: " + err.Error())
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// units are the shipped service units and, per unit, how many listeners
// --max-sockets caps (public, plus the ACME port 80 in autocert mode).
var units = map[string]int{
	"relay-autocert.service": 2,
	"relay-static.service":   1,
	"relay-proxy.service":    1,
}

// confPath is the configuration file every relay unit reads (the .deb's
// conffile, deploy/relay.toml).
const confPath = "/etc/relay/relay.toml"

// modeConfig returns the settings deploy/relay.toml gives unit's mode: the
// commented lines of its block ("# --- MODE (UNIT...") uncommented, plus
// the keys set for every mode; key -> raw TOML value.
func modeConfig(t *testing.T, unit string) map[string]string {
	t.Helper()
	b, err := os.ReadFile("relay.toml")
	require.NoError(t, err)
	conf := map[string]string{}
	in, found := false, false
	kv := regexp.MustCompile(`^#?([a-z0-9-]+) = (.+)$`)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "# --- ") {
			in = strings.Contains(line, "("+unit)
			found = found || in
			continue
		}
		if line == "" {
			in = false
			continue
		}
		m := kv.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if in || !strings.HasPrefix(line, "#") {
			conf[m[1]] = m[2]
		}
	}
	require.True(t, found, "deploy/relay.toml has no block for %s", unit)
	return conf
}

// maxExposure is the highest systemd-analyze security score a unit may have
// (its --threshold takes ten times the displayed value).
const maxExposure = 2.0

// directives parses a unit file into key -> values (in order).
func directives(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	d := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		// A trailing backslash continues the value on the next line.
		for strings.HasSuffix(line, "\\") && sc.Scan() {
			line = strings.TrimSuffix(line, "\\") + " " + strings.TrimSpace(sc.Text())
		}
		k, v, ok := strings.Cut(line, "=")
		require.True(t, ok, "%s: not key=value: %q", path, line)
		d[k] = append(d[k], v)
	}
	require.NoError(t, sc.Err())
	return d
}

func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze is required in CI (systemd package)")
		}
		t.Skip("systemd-analyze not installed")
	}
	return p
}

var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: (\d+\.\d+)`)

// exposure runs systemd-analyze security --offline=true on unit and returns
// its score and whether the --threshold check passed.
func exposure(t *testing.T, sa, unit string) (float64, bool, string) {
	t.Helper()
	cmd := exec.Command(sa, "security", "--offline=true", "--no-pager",
		"--threshold="+strconv.Itoa(int(maxExposure*10)), unit)
	out, err := cmd.CombinedOutput()
	m := exposureRE.FindStringSubmatch(string(out))
	require.NotNil(t, m, "no exposure line in:\n%s", out)
	score, perr := strconv.ParseFloat(m[1], 64)
	require.NoError(t, perr)
	return score, err == nil, string(out)
}

// TestUnits_HardenedAndScored: every unit passes systemd-analyze verify
// (its ExecStart pointed at the real binary), scores at most 2.0 in
// systemd-analyze security --offline=true, and carries the directives
// docs/deploy.md promises. A weak unit is scored too, so the gate can fail.
func TestUnits_HardenedAndScored(t *testing.T) {
	sa := systemdAnalyze(t)

	score, ok, _ := exposure(t, sa, filepath.Join("testdata", "weak.service"))
	require.False(t, ok, "the threshold check passed a weak unit (score %.1f)", score)
	require.Greater(t, score, maxExposure)

	defaultSockets := maxSocketsDefault(t)
	for name, cappedListeners := range units {
		t.Run(name, func(t *testing.T) {
			d := directives(t, name)
			one := func(k string) string {
				require.Len(t, d[k], 1, "%s: want exactly one %s=", name, k)
				return d[k][0]
			}
			for k, want := range map[string]string{
				"User": "relay", "Group": "relay", "UMask": "0077", "NoNewPrivileges": "yes",
				"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
				"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
				"ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
				"RestrictNamespaces": "yes", "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes",
				"LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
				"RestrictAddressFamilies": "AF_INET AF_INET6", "RestartPreventExitStatus": "2",
				"Restart": "on-failure",
			} {
				require.Equal(t, want, one(k), "%s: %s", name, k)
			}
			require.Contains(t, d["SystemCallFilter"], "@system-service", name)
			// The mode comes from the configuration file (its block for this
			// unit in deploy/relay.toml); a reload checks it before SIGHUP.
			require.Equal(t, "/usr/bin/relay serve --config "+confPath, one("ExecStart"), name)
			require.Equal(t, []string{"/usr/bin/relay serve --check --config " + confPath, "/bin/kill -HUP $MAINPID"}, d["ExecReload"],
				"%s: systemctl reload checks the file, then signals", name)
			others := []string{}
			for u := range units {
				if u != name {
					others = append(others, u)
				}
			}
			sort.Strings(others)
			require.Equal(t, strings.Join(others, " "), one("Conflicts"), "%s: one mode at a time", name)
			conf := modeConfig(t, name)

			// Capabilities: CAP_NET_BIND_SERVICE only, and only where a port
			// below 1024 is bound.
			bound := one("CapabilityBoundingSet")
			if l, ok := conf["insecure-listen"]; ok {
				require.True(t, strings.HasPrefix(l, `"127.0.0.1:`), "%s: plain HTTP on loopback only: %s", name, l)
				require.Empty(t, bound, "%s binds no privileged port: no capability", name)
				require.Empty(t, d["AmbientCapabilities"], name)
			} else {
				require.Equal(t, "CAP_NET_BIND_SERVICE", bound, name)
				require.Equal(t, "CAP_NET_BIND_SERVICE", one("AmbientCapabilities"), name)
				require.Equal(t, "RELAY_PRODUCTION=1", one("Environment"), "%s: production policy on", name)
			}
			if _, ok := conf["domain"]; ok {
				require.Equal(t, "0700", one("StateDirectoryMode"), name)
				require.Contains(t, one("StateDirectory"), "relay/certs", name)
				require.Equal(t, `"/var/lib/relay/certs"`, conf["cert-cache"], name)
			}
			if k, ok := conf["tls-key"]; ok {
				require.Equal(t, "ssl-cert", one("SupplementaryGroups"), name)
				require.True(t, strings.HasPrefix(k, `"/etc/ssl/private/`), name)
			}

			// The file limit covers every capped listener at its cap at once.
			nofile, err := strconv.Atoi(one("LimitNOFILE"))
			require.NoError(t, err)
			require.Greater(t, nofile, cappedListeners*defaultSockets+64,
				"%s: LimitNOFILE must exceed %d listener(s) x --max-sockets %d plus slack", name, cappedListeners, defaultSockets)

			// systemd-analyze verify, with ExecStart at the real binary.
			tmp := filepath.Join(t.TempDir(), name)
			b, err := os.ReadFile(name)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(tmp, []byte(strings.ReplaceAll(string(b), "/usr/bin/relay", relayBin)), 0o644))
			out, err := exec.Command(sa, "verify", "--no-pager", tmp).CombinedOutput()
			require.NoError(t, err, "systemd-analyze verify %s:\n%s", name, out)
			require.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify %s warned", name)

			score, ok, report := exposure(t, sa, name)
			require.True(t, ok, "%s scores %.1f, above %.1f:\n%s", name, score, maxExposure, report)
			require.LessOrEqual(t, score, maxExposure)
			t.Logf("%s: exposure %.1f", name, score)
		})
	}
}

// maxSocketsDefault reads --max-sockets' default from the binary's help.
func maxSocketsDefault(t *testing.T) int {
	t.Helper()
	out, _ := exec.Command(relayBin, "serve", "-h").CombinedOutput()
	m := regexp.MustCompile(`(?s)-max-sockets \S+\s.*?\(default (\d+)\)`).FindSubmatch(out)
	require.NotNil(t, m, "no --max-sockets default in relay serve -h:\n%s", out)
	n, err := strconv.Atoi(string(m[1]))
	require.NoError(t, err)
	return n
}

// TestUnits_HeadersAndDocsTellTheTruth: a unit's header comment may not
// say the certificate is read once when the unit reloads it (ExecReload),
// must mention SIGHUP when it does, and a unit that needs a supplementary
// group names the Debian package that creates it, in its header and in
// docs/deploy.md.
func TestUnits_HeadersAndDocsTellTheTruth(t *testing.T) {
	deployMD, err := os.ReadFile("../docs/deploy.md")
	require.NoError(t, err)
	for name := range units {
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(name)
			require.NoError(t, err)
			var header strings.Builder
			for _, line := range strings.Split(string(b), "\n") {
				if !strings.HasPrefix(line, "#") {
					break
				}
				header.WriteString(strings.TrimPrefix(line, "#") + " ")
			}
			h := strings.Join(strings.Fields(header.String()), " ")
			d := directives(t, name)
			if len(d["ExecReload"]) > 0 {
				require.NotContains(t, h, "read once", "%s reloads (ExecReload) but its header says read once", name)
				require.Contains(t, h, "SIGHUP", "%s: the header says what a reload does", name)
			}
			for _, g := range d["SupplementaryGroups"] {
				require.Contains(t, h, "apt-get install "+g, "%s: the header names the package that creates group %s", name, g)
				require.Contains(t, string(deployMD), "`apt-get install "+g, "docs/deploy.md: %s needs group %s", name, g)
			}
		})
	}
}

// TestMakeImage_SaysItInstallsBuildah: `make image` installs buildah with
// apt-get when it is missing; the target's help, its own output before the
// install, and README's table say so.
func TestMakeImage_SaysItInstallsBuildah(t *testing.T) {
	mk, err := os.ReadFile("../Makefile")
	require.NoError(t, err)
	m := regexp.MustCompile(`(?ms)^## image:(.*?)^image:`).FindSubmatch(mk)
	require.NotNil(t, m, "no ## image: help in the Makefile")
	require.Contains(t, strings.Join(strings.Fields(strings.ReplaceAll(string(m[1]), "##", "")), " "), "apt-get install buildah")
	r := regexp.MustCompile(`(?ms)^buildah:\n(.*?)\n\n`).FindSubmatch(mk)
	require.NotNil(t, r, "no buildah target")
	recipe := string(r[1])
	say, install := strings.Index(recipe, "echo"), strings.Index(recipe, "apt-get install")
	require.True(t, say >= 0 && say < install, "the buildah target says what it installs before apt-get runs:\n%s", recipe)
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	require.Regexp(t, "(?m)^\\| `sbom`, `image`.*apt-get install buildah", string(readme))
}

// TestDocs_RelayDirInEveryMode: deploy.md's first step, common to every
// mode, creates /var/lib/relay (0700, the relay's user) before anything is
// put in it: the autocert cache, and the push key, which every mode may
// use (issue 21, defect 8a: only the autocert steps created it).
func TestDocs_RelayDirInEveryMode(t *testing.T) {
	steps := indentedBlock(t, "../docs/deploy.md", "Create an unprivileged user")
	idx := func(prefix string) int {
		for i, l := range steps {
			if strings.HasPrefix(l, prefix) {
				return i
			}
		}
		return -1
	}
	mk := idx("install -d -m 0700 -o relay -g relay /var/lib/relay")
	require.GreaterOrEqual(t, mk, 0, "the common steps create /var/lib/relay: %q", steps)
	require.Equal(t, "install -d -m 0700 -o relay -g relay /var/lib/relay", steps[mk])
	require.Greater(t, idx("install -d -m 0700 -o relay -g relay /var/lib/relay/certs"), mk)
	key := indentedBlock(t, "../docs/deploy.md", "Install it readable by the relay's user only")
	require.Regexp(t, `^install -m 0600 -o relay -g relay \S+ /var/lib/relay/[^/]+$`, key[0], "the push key goes straight into /var/lib/relay")
}
