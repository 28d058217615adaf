package deploy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/cluster/natsauth"
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
