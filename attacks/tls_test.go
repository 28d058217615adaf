package attacks

import (
	"bytes"
	"context"
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
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// writeSelfSigned writes a certificate for 127.0.0.1 and its key (0600).
func writeSelfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "relay-attacks test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	return certFile, keyFile
}

// TestAttackCommand_TLS runs remote-safe scenarios over WSS against the
// static-certificate mode, verifying the relay with --ca.
func TestAttackCommand_TLS(t *testing.T) {
	t.Parallel()
	require.NoError(t, buildErr, "building the relay")
	dir := t.TempDir()
	certFile, keyFile := writeSelfSigned(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A deep upgrade bucket: this test is about WSS and --ca; waiting out
	// the default rate limit, as an operator's run does, is
	// TestAttackCommand_RemoteMode's part.
	p, err := StartProcess(ctx, builtBinary, "serve", "--tls-cert", certFile, "--tls-key", keyFile, "--https-listen", "127.0.0.1:0",
		"--upgrade-burst", "200")
	if err != nil {
		if p != nil {
			t.Fatalf("start TLS relay: %v\n%s", err, p.LogText())
		}
		t.Fatalf("start TLS relay: %v", err)
	}
	t.Cleanup(func() { p.Stop() })

	var out, errOut bytes.Buffer
	code := Main([]string{"--target", "https://" + p.Addr, "--ca", certFile, "--only", "ATK-OVERSIZE,ATK-CROSS-TENANT,ATK-HEADER-ABUSE,ATK-BODY-LEAK"}, &out, &errOut)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	require.Len(t, regexp.MustCompile(`(?m)^ATK-\S+\s+\S+\s+PASS\s`).FindAll(out.Bytes(), -1), 4, out.String())

	// Without the CA the client refuses the relay's certificate: a setup
	// error, not a finding (exit 3), and the evidence names --ca.
	out.Reset()
	errOut.Reset()
	require.Equal(t, ExitCouldNotRun, Main([]string{"--target", "https://" + p.Addr, "--only", "ATK-CROSS-TENANT"}, &out, &errOut), out.String())
	require.Contains(t, out.String(), "--ca FILE")
}
