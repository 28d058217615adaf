package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/acmetest"
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

// A background renewal through a real ACME server (Pebble issuing
// five-second certificates, which autocert renews after two thirds of their
// life, as it renews Let's Encrypt's 90-day ones 30 days early) is logged
// as cert_renewed with the domain and the new expiry and nothing else,
// moves the NotAfter gauge to the new certificate, is served to new
// handshakes, and leaves open WebSockets working.
func TestAutocert_Renewal_LoggedGaugeMoves_OpenWebSocketsKeepWorking(t *testing.T) {
	r := startAutocertRelay(t, acmetest.WithCertValidity(5*time.Second))
	st, err := r.handshake(t, r.tlsConfig(relayDomain))
	require.NoError(t, err)
	first := st.PeerCertificates[0]

	// A binary and a phone paired over WSS before the renewal.
	bin := r.dialWS(t, "/v1/server", binHdr("renewal"))
	require.Eventually(t, func() bool { return r.srv.Relay().Stats().Binaries == 1 }, 5*time.Second, 5*time.Millisecond)
	phone := r.dialWS(t, "/v1/client", phoneHdr("renewal"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	roundTrip := func(n int) {
		t.Helper()
		require.NoError(t, phone.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"n":%d}`, n)))
		_, msg, err := bin.Read(ctx)
		require.NoError(t, err)
		var env struct {
			ConnID string         `json:"conn_id"`
			Frame  map[string]any `json:"frame"`
		}
		require.NoError(t, json.Unmarshal(msg, &env))
		require.Equal(t, float64(n), env.Frame["n"])
		require.NoError(t, bin.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"conn_id":%q,"frame":{"n":%d}}`, env.ConnID, n)))
		_, msg, err = phone.Read(ctx)
		require.NoError(t, err)
		require.JSONEq(t, fmt.Sprintf(`{"n":%d}`, n), string(msg))
	}
	roundTrip(1)

	var renewed map[string]any
	require.Eventually(t, func() bool {
		for _, l := range strings.Split(r.logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["event"] == "cert_renewed" {
				renewed = m
				return true
			}
		}
		return false
	}, 15*time.Second, 20*time.Millisecond, "no renewal logged:\n%s", r.logs.String())
	keys := slices.Sorted(maps.Keys(renewed))
	require.Equal(t, []string{"domain", "event", "level", "msg", "not_after", "time"}, keys, "the renewal line carries the names and the expiry only")
	require.Equal(t, relayDomain, renewed["domain"])
	require.Equal(t, "INFO", renewed["level"])
	notAfter, err := time.Parse(time.RFC3339, renewed["not_after"].(string))
	require.NoError(t, err)
	require.True(t, notAfter.After(first.NotAfter), "renewed not_after %v is not after the first certificate's %v", notAfter, first.NotAfter)
	logs := r.logs.String()
	for _, secret := range []string{"PRIVATE KEY", "BEGIN", "MII"} { // no PEM, no base64 DER
		require.NotContains(t, logs, secret)
	}

	// The gauge follows the renewals (autocert keeps renewing these short
	// certificates, so it may already be past the logged one).
	require.GreaterOrEqual(t, testutil.ToFloat64(r.srv.metrics.CertNotAfter), float64(notAfter.Unix()))
	// New handshakes get a renewed certificate.
	st, err = r.handshake(t, r.tlsConfig(relayDomain))
	require.NoError(t, err)
	require.NotEqual(t, first.SerialNumber, st.PeerCertificates[0].SerialNumber)
	require.True(t, st.PeerCertificates[0].NotAfter.After(first.NotAfter))

	// The sockets opened under the first certificate still carry frames.
	roundTrip(2)
	require.Zero(t, testutil.ToFloat64(r.srv.metrics.ACMEErrors))
}
