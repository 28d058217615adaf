package deploy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/cluster"
	"github.com/pyrycode/relay/internal/cluster/natsauth"
	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// TestNATSClusterConf_AsShipped reads deploy/nats-cluster.conf with
// nats-server's own parser, after substituting only the certificate and
// store paths (each substitution must match the count it expects), next to
// a nats-auth.conf written by relay-nats-auth's code: TLS is required of
// clients, routes are mutually authenticated, JetStream is on, there is no
// monitoring port, and only the issued operator is trusted. Then the node
// runs on loopback (listeners and routes moved there, no other change) and
// an instance's credentials connect over TLS while no credentials are
// refused.
func TestNATSClusterConf_AsShipped(t *testing.T) {
	raw, err := os.ReadFile("nats-cluster.conf")
	require.NoError(t, err)
	dir := t.TempDir()
	caFile, certFile, keyFile := writeNATSCerts(t, dir)
	conf := string(raw)
	for _, s := range []struct {
		old, new string
		n        int
	}{
		{`"/etc/nats/tls/server.pem"`, `"` + certFile + `"`, 2},
		{`"/etc/nats/tls/server-key.pem"`, `"` + keyFile + `"`, 2},
		{`"/etc/nats/tls/ca.pem"`, `"` + caFile + `"`, 1},
		{`"/var/lib/nats"`, `"` + filepath.Join(dir, "js") + `"`, 1},
	} {
		require.Equal(t, s.n, strings.Count(conf, s.old), "nats-cluster.conf: %s", s.old)
		conf = strings.ReplaceAll(conf, s.old, s.new)
	}
	is, err := natsauth.New("deploy-test")
	require.NoError(t, err)
	require.NoError(t, is.WriteFiles(dir, "relay", []string{"relay-a"}))
	path := filepath.Join(dir, "nats-cluster.conf")
	require.NoError(t, os.WriteFile(path, []byte(conf), 0o600))
	t.Setenv("NATS_SERVER_NAME", "nats-1")

	opts, err := server.ProcessConfigFile(path)
	require.NoError(t, err)
	require.Equal(t, "nats-1", opts.ServerName)
	require.NotNil(t, opts.TLSConfig, "clients must use TLS")
	require.True(t, opts.Cluster.TLSConfig != nil && opts.Cluster.TLSConfig.ClientCAs != nil, "routes verify each other")
	require.True(t, opts.JetStream)
	require.Equal(t, "relay-nats", opts.Cluster.Name)
	require.Len(t, opts.Routes, 3)
	require.Zero(t, opts.HTTPPort, "no monitoring port")
	require.Len(t, opts.TrustedOperators, 1)

	// One node on loopback: the client listener moves, the routes go (no
	// peers to form a JetStream cluster with), nothing else changes.
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.Cluster, opts.Routes = server.ClusterOpts{}, nil
	opts.NoLog, opts.NoSigs = true, true
	srv, err := server.NewServer(opts)
	require.NoError(t, err)
	go srv.Start()
	require.True(t, srv.ReadyForConnections(10*time.Second))
	t.Cleanup(srv.Shutdown)
	url := "tls://" + srv.Addr().String()

	nc, err := nats.Connect(url, nats.RootCAs(caFile), nats.UserCredentials(filepath.Join(dir, "relay-a.creds")))
	require.NoError(t, err, "an instance's credentials over TLS")
	nc.Close()
	_, err = nats.Connect(url, nats.RootCAs(caFile))
	require.Error(t, err, "no credentials")
	_, err = nats.Connect("nats://"+srv.Addr().String(), nats.UserCredentials(filepath.Join(dir, "relay-a.creds")))
	require.Error(t, err, "the server's certificate is not trusted without the CA")
}

// writeNATSCerts writes a CA and a certificate it issued for 127.0.0.1
// (server and client auth: the routes use it both ways).
func writeNATSCerts(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nats test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats-1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600))
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	return caFile, certFile, keyFile
}

// docBlock returns the first ```sh block after marker in a document.
func docBlock(t *testing.T, doc, marker string) string {
	t.Helper()
	b, err := os.ReadFile(doc)
	require.NoError(t, err)
	s := string(b)
	i := strings.Index(s, marker)
	require.GreaterOrEqual(t, i, 0, "%s: no %q", doc, marker)
	s = s[i:]
	i = strings.Index(s, "```sh\n")
	require.GreaterOrEqual(t, i, 0, "%s: no sh block after %q", doc, marker)
	s = s[i+len("```sh\n"):]
	j := strings.Index(s, "```")
	require.GreaterOrEqual(t, j, 0)
	return s[:j]
}

// logCapture is a nats-server logger that keeps every line.
type logCapture struct {
	mu    sync.Mutex
	lines []string
}

func (l *logCapture) add(f string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(f, v...))
}
func (l *logCapture) Noticef(f string, v ...any) { l.add(f, v...) }
func (l *logCapture) Warnf(f string, v ...any)   { l.add(f, v...) }
func (l *logCapture) Fatalf(f string, v ...any)  { l.add(f, v...) }
func (l *logCapture) Errorf(f string, v ...any)  { l.add(f, v...) }
func (l *logCapture) Debugf(f string, v ...any)  { l.add(f, v...) }
func (l *logCapture) Tracef(f string, v ...any)  { l.add(f, v...) }
func (l *logCapture) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}
func (l *logCapture) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

// TestNATSCerts_DocumentedCommandsFormRoutes runs docs/cluster.md's OpenSSL
// block as written (only IP:127.0.0.1 added to each node's names: the
// test's nodes are on loopback), then starts two nodes from
// deploy/nats-cluster.conf with those certificates (listeners and routes
// moved to loopback, JetStream off): their mutually authenticated TLS
// routes form. The same block with serverAuth alone makes certificates
// the routes refuse with "incompatible key usage" (issue 21, defect 7a).
func TestNATSCerts_DocumentedCommandsFormRoutes(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("openssl is required in CI")
		}
		t.Skip("openssl not installed")
	}
	block := docBlock(t, "../docs/cluster.md", "**Certificates.**")
	const san = `"subjectAltName = DNS:$n"`
	require.Equal(t, 1, strings.Count(block, san), "the block names each node by $n")
	block = strings.Replace(block, san, `"subjectAltName = DNS:$n, IP:127.0.0.1"`, 1)

	t.Run("serverAuth and clientAuth: routes form", func(t *testing.T) {
		a, b := natsRoutePair(t, block)
		if !assert.Eventually(t, func() bool { return a.srv.NumRoutes() > 0 && b.srv.NumRoutes() > 0 },
			15*time.Second, 50*time.Millisecond) {
			t.Fatalf("no route between the nodes; logs:\n%s\n%s", a.log, b.log)
		}
	})
	t.Run("serverAuth alone: incompatible key usage", func(t *testing.T) {
		const eku = `"extendedKeyUsage = serverAuth, clientAuth"`
		require.Equal(t, 1, strings.Count(block, eku))
		a, b := natsRoutePair(t, strings.Replace(block, eku, `"extendedKeyUsage = serverAuth"`, 1))
		require.Eventually(t, func() bool {
			return a.log.contains("incompatible key usage") || b.log.contains("incompatible key usage")
		}, 15*time.Second, 50*time.Millisecond, "the routes did not refuse a serverAuth-only certificate")
		require.Zero(t, a.srv.NumRoutes()+b.srv.NumRoutes())
	})
}

type natsNode struct {
	srv *server.Server
	log *logCapture
}

// natsRoutePair runs the certificate block in a scratch directory and
// starts nodes nats-1 and nats-2 from deploy/nats-cluster.conf with them.
func natsRoutePair(t *testing.T, block string) (natsNode, natsNode) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", block)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "the documented commands:\n%s", out)
	tls := filepath.Join(dir, "nats-tls")

	raw, err := os.ReadFile("nats-cluster.conf")
	require.NoError(t, err)
	is, err := natsauth.New("deploy-test")
	require.NoError(t, err)
	require.NoError(t, is.WriteFiles(dir, "relay", []string{"relay-a"}))
	ports := make([]int, 2)
	for i := range ports {
		ports[i], err = natstest.FreePort()
		require.NoError(t, err)
	}
	routes := server.RoutesFromStr(fmt.Sprintf("nats-route://127.0.0.1:%d,nats-route://127.0.0.1:%d", ports[0], ports[1]))
	var nodes []natsNode
	for i, name := range []string{"nats-1", "nats-2"} {
		conf := string(raw)
		for old, new := range map[string]string{
			`"/etc/nats/tls/server.pem"`:     `"` + filepath.Join(tls, name, "server.pem") + `"`,
			`"/etc/nats/tls/server-key.pem"`: `"` + filepath.Join(tls, name, "server-key.pem") + `"`,
			`"/etc/nats/tls/ca.pem"`:         `"` + filepath.Join(tls, "ca.pem") + `"`,
			`"/var/lib/nats"`:                `"` + filepath.Join(dir, name+"-js") + `"`,
		} {
			require.Contains(t, conf, old)
			conf = strings.ReplaceAll(conf, old, new)
		}
		path := filepath.Join(dir, name+".conf")
		require.NoError(t, os.WriteFile(path, []byte(conf), 0o600))
		t.Setenv("NATS_SERVER_NAME", name)
		opts, err := server.ProcessConfigFile(path)
		require.NoError(t, err)
		opts.Host, opts.Port = "127.0.0.1", -1
		opts.Cluster.Host, opts.Cluster.Port = "127.0.0.1", ports[i]
		opts.Routes = routes
		opts.JetStream = false
		opts.NoSigs = true
		srv, err := server.NewServer(opts)
		require.NoError(t, err)
		lc := &logCapture{}
		srv.SetLogger(lc, false, false)
		go srv.Start()
		require.True(t, srv.ReadyForConnections(10*time.Second))
		t.Cleanup(srv.Shutdown)
		nodes = append(nodes, natsNode{srv, lc})
	}
	return nodes[0], nodes[1]
}

// TestUnits_NATSNodeScored: deploy/relay-nats.service passes
// systemd-analyze verify with ExecStart at a real nats-server (built from
// the version go.mod pins, the one docs/cluster.md tells operators to go
// install), scores at most maxExposure, runs as nats without capabilities
// with JetStream's store_dir as its 0700 state directory, and the
// configuration path it names, holding the shipped nats-cluster.conf,
// passes `nats-server -t` with NATS_SERVER_NAME from its EnvironmentFile.
func TestUnits_NATSNodeScored(t *testing.T) {
	t.Parallel()
	sa := systemdAnalyze(t)
	const name = "relay-nats.service"

	mod, err := os.ReadFile("../go.mod")
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^\s*github\.com/nats-io/nats-server/v2 (v\S+)`).FindSubmatch(mod)
	require.NotNil(t, m, "go.mod requires nats-server")
	version := string(m[1])
	install := docBlock(t, "../docs/cluster.md", "**nats-server.**")
	require.Contains(t, install, "go install github.com/nats-io/nats-server/v2@"+version, "docs/cluster.md installs the version go.mod tests")
	// That version is one the relay accepts, and the paragraph names the floor.
	require.False(t, versionLess(strings.TrimPrefix(version, "v"), cluster.MinServerVersion),
		"docs/cluster.md installs %s, below cluster.MinServerVersion %s", version, cluster.MinServerVersion)
	para := string(mustRead(t, "../docs/cluster.md"))
	para = para[strings.Index(para, "**nats-server.**"):]
	para = para[:strings.Index(para, "```")]
	require.Contains(t, strings.Join(strings.Fields(para), " "), cluster.MinServerVersion+" or later")

	dir := t.TempDir()
	bin := filepath.Join(dir, "nats-server")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/nats-io/nats-server/v2") // make build's flags: the packages it shares with the relay come from its cache
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build nats-server:\n%s", out)
	out, err = exec.Command(bin, "--version").CombinedOutput()
	require.NoError(t, err)
	require.Contains(t, string(out), version)

	d := directives(t, name)
	one := func(k string) string {
		require.Len(t, d[k], 1, "%s: want exactly one %s=", name, k)
		return d[k][0]
	}
	for k, want := range map[string]string{
		"User": "nats", "Group": "nats", "UMask": "0077", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
		"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
		"StateDirectory": "nats", "StateDirectoryMode": "0700", "Restart": "on-failure",
		"RestrictAddressFamilies": "AF_INET AF_INET6", "EnvironmentFile": "/etc/nats/node.env",
		"ExecStart": "/usr/local/bin/nats-server --config /etc/nats/nats-cluster.conf",
	} {
		require.Equal(t, want, one(k), "%s: %s", name, k)
	}
	require.Empty(t, d["AmbientCapabilities"])
	conf, err := os.ReadFile("nats-cluster.conf")
	require.NoError(t, err)
	require.Contains(t, string(conf), `store_dir: "/var/lib/nats"`, "JetStream's store is the unit's state directory")
	require.Contains(t, docBlock(t, "../docs/cluster.md", "**Unit.**"), "NATS_SERVER_NAME=nats-1' | sudo tee /etc/nats/node.env")

	unit := filepath.Join(dir, name)
	b, err := os.ReadFile(name)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/nats-server", bin)), 0o644))
	out, err = exec.Command(sa, "verify", "--no-pager", unit).CombinedOutput()
	require.NoError(t, err, "systemd-analyze verify %s:\n%s", name, out)
	require.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify %s warned", name)
	score, ok, report := exposure(t, sa, name)
	require.True(t, ok, "%s scores %.1f, above %.1f:\n%s", name, score, maxExposure, report)
	t.Logf("%s: exposure %.1f", name, score)

	// The configuration as the unit runs it (paths into the scratch dir).
	caFile, certFile, keyFile := writeNATSCerts(t, dir)
	c := string(conf)
	for old, new := range map[string]string{
		`"/etc/nats/tls/server.pem"`: `"` + certFile + `"`, `"/etc/nats/tls/server-key.pem"`: `"` + keyFile + `"`,
		`"/etc/nats/tls/ca.pem"`: `"` + caFile + `"`, `"/var/lib/nats"`: `"` + filepath.Join(dir, "js") + `"`,
	} {
		c = strings.ReplaceAll(c, old, new)
	}
	is, err := natsauth.New("deploy-test")
	require.NoError(t, err)
	require.NoError(t, is.WriteFiles(dir, "relay", []string{"relay-a"}))
	confPath := filepath.Join(dir, "nats-cluster.conf")
	require.NoError(t, os.WriteFile(confPath, []byte(c), 0o600))
	check := exec.Command(bin, "-t", "--config", confPath)
	check.Env = append(os.Environ(), "NATS_SERVER_NAME=nats-1")
	out, err = check.CombinedOutput()
	require.NoError(t, err, "nats-server -t:\n%s", out)
	require.NoError(t, os.WriteFile(confPath, []byte(strings.Replace(c, "jetstream {", "jetstream {\n  bogus_key: 1", 1)), 0o600))
	check = exec.Command(bin, "-t", "--config", confPath)
	check.Env = append(os.Environ(), "NATS_SERVER_NAME=nats-1")
	out, err = check.CombinedOutput()
	require.Error(t, err, "nats-server -t accepts a configuration with an unknown key, so it proves nothing:\n%s", out)
	require.Contains(t, string(out), "bogus_key")
}

// versionLess compares dotted release numbers (2.9.10 < 2.11.15).
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		x, _ := strconv.Atoi(as[i])
		y, _ := strconv.Atoi(bs[i])
		if x != y {
			return x < y
		}
	}
	return len(as) < len(bs)
}
