package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// writeCert writes a self-signed P-256 pair valid from notBefore to
// notAfter for names (key 0600).
func writeCert(t *testing.T, names []string, notBefore, notAfter time.Time) (certFile, keyFile string, leaf *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "relay test"},
		NotBefore:    notBefore, NotAfter: notAfter,
		DNSNames: names,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
	leaf, err = x509.ParseCertificate(der)
	require.NoError(t, err)
	return certFile, keyFile, leaf
}

// A static certificate that is expired, expiring within two weeks, not yet
// valid or nameless still starts (an operator may need to serve it), but
// with a warning; its NotAfter is exported either way.
func TestStaticCert_StartWarnings_NotAfterGauge(t *testing.T) {
	now := time.Now()
	names := []string{relayDomain}
	for _, tc := range []struct {
		name      string
		names     []string
		nb, na    time.Time
		wantEvent string
	}{
		{"valid", names, now.Add(-time.Hour), now.Add(90 * 24 * time.Hour), ""},
		{"expired", names, now.Add(-48 * time.Hour), now.Add(-time.Hour), "expired"},
		{"expires_soon", names, now.Add(-time.Hour), now.Add(3 * 24 * time.Hour), "expires_soon"},
		{"not_yet_valid", names, now.Add(time.Hour), now.Add(90 * 24 * time.Hour), "not_yet_valid"},
		{"no_names", nil, now.Add(-time.Hour), now.Add(90 * 24 * time.Hour), "no_names"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certFile, keyFile, leaf := writeCert(t, tc.names, tc.nb, tc.na)
			srv, _, logs := runServer(t, "--tls-cert", certFile, "--tls-key", keyFile, "--https-listen", "127.0.0.1:0")
			require.Equal(t, float64(leaf.NotAfter.Unix()), testutil.ToFloat64(srv.metrics.CertNotAfter))
			require.Contains(t, logs.String(), `"event":"cert_loaded"`)
			if tc.wantEvent == "" {
				require.NotContains(t, logs.String(), `"cert_warning"`)
				return
			}
			require.Contains(t, logs.String(), `"level":"WARN"`)
			require.Contains(t, logs.String(), `"event":"cert_warning","reason":"`+tc.wantEvent+`"`)
		})
	}
}

// Issuance through a real ACME server (Pebble) is logged with the expiry and
// sets the gauge.
func TestAutocert_Issuance_LoggedWithExpiry_Gauge(t *testing.T) {
	r := startAutocertRelay(t)
	require.Zero(t, testutil.ToFloat64(r.srv.metrics.CertNotAfter))
	st, err := r.handshake(t, r.tlsConfig(relayDomain))
	require.NoError(t, err)
	leaf := st.PeerCertificates[0]
	require.Eventually(t, func() bool { return strings.Contains(r.logs.String(), `"event":"cert_obtained"`) }, 10*time.Second, 10*time.Millisecond)
	require.Contains(t, r.logs.String(), `"not_after":"`+leaf.NotAfter.UTC().Format(time.RFC3339)+`"`)
	require.Equal(t, float64(leaf.NotAfter.Unix()), testutil.ToFloat64(r.srv.metrics.CertNotAfter))
	require.Zero(t, testutil.ToFloat64(r.srv.metrics.ACMEErrors))
}

// A CA that refuses is counted and logged at error level with its answer;
// a handshake for another name is neither (it never reaches the CA).
func TestAutocert_CAFailure_LoggedWithCause_Counted(t *testing.T) {
	ca := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"type":"urn:ietf:params:acme:error:malformed","detail":"ca-refusal-canary"}`))
	}))
	t.Cleanup(ca.Close)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Certificate().Raw}), 0o644))
	r := startTLSRelay(t, nil,
		"--domain", relayDomain, "--https-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--cert-cache", filepath.Join(dir, "certs"), "--acme-directory", ca.URL+"/dir", "--acme-ca", caFile)

	_, err := r.handshake(t, &tls.Config{ServerName: "other.example.test", InsecureSkipVerify: true}) //nolint:gosec // never verified: it must fail
	require.Error(t, err)
	require.Zero(t, testutil.ToFloat64(r.srv.metrics.ACMEErrors), "another name is not an ACME failure")

	for range 3 {
		_, err = r.handshake(t, &tls.Config{ServerName: relayDomain, InsecureSkipVerify: true}) //nolint:gosec // never verified: it must fail
		require.Error(t, err)
	}
	require.Equal(t, 3.0, testutil.ToFloat64(r.srv.metrics.ACMEErrors))
	logs := r.logs.String()
	require.Equal(t, 1, strings.Count(logs, `"event":"cert_failed"`), "rate-limited to one line per %v:\n%s", acmeErrorLogEvery, logs)
	require.Contains(t, logs, `"level":"ERROR"`)
	require.Contains(t, logs, "ca-refusal-canary", "the cause is logged")
	require.NotContains(t, logs, "other.example.test")
}
