package attacks

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// tlsTestName is the only name on the TLS relay's certificate: its IP
// address is deliberately not on it, so a Host of 127.0.0.1 is a mismatch
// (ATK-HOST-MISMATCH) and clients must use ServerName.
const tlsTestName = "relay.example.test"

// Key types of the static test certificates. TestScenarios runs every
// TLS scenario against both: RSA, because static-RSA and 3DES suites need
// an RSA certificate, so only against one does ATK-TLS-SUITES show the
// suite policy, not the key type, refusing them; ECDSA, because that is
// what autocert, and so production, serves, and ECDHE-ECDSA suites are
// negotiable only against it.
const (
	keyRSA   = "rsa"
	keyECDSA = "ecdsa"
)

// writeCert writes a self-signed certificate of the given key type for
// name (its own root, so it doubles as the CA file) and its key at 0600.
func writeCert(t *testing.T, dir, name, keyType string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	var signer crypto.Signer
	var keyPEM *pem.Block
	usage := x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign
	switch keyType {
	case keyRSA:
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		require.NoError(t, err)
		signer, keyPEM = key, &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}
		usage |= x509.KeyUsageKeyEncipherment
	case keyECDSA:
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		der, err := x509.MarshalECPrivateKey(key)
		require.NoError(t, err)
		signer, keyPEM = key, &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
	default:
		t.Fatalf("unknown key type %q", keyType)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	certFile, keyFile = filepath.Join(dir, "relay-"+keyType+"-cert.pem"), filepath.Join(dir, "relay-"+keyType+"-key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(keyPEM), 0o600))
	return certFile, keyFile, pool
}

// startTLSRelay starts the binary in static-certificate mode on loopback
// (plus RELAY_ATTACK_EXTRA_FLAGS) and returns the process, the CA file and
// the flags that serve its certificate. It stops when owner ends; a
// failure to start fails t.
func startTLSRelay(t, owner *testing.T, dir, keyType string) (*Process, string, *x509.CertPool, []string) {
	t.Helper()
	require.NoError(t, buildErr, "building the relay")
	certFile, keyFile, pool := writeCert(t, dir, tlsTestName, keyType)
	certFlags := []string{"--tls-cert", certFile, "--tls-key", keyFile}
	args := append(append([]string{"serve"}, certFlags...), "--https-listen", "127.0.0.1:0",
		"--grace-period", "2s", "--probe-timeout", "1s")
	if f := os.Getenv("RELAY_ATTACK_EXTRA_FLAGS"); f != "" {
		args = append(args, strings.Fields(f)...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := StartProcess(ctx, builtBinary, args...)
	if err != nil {
		if p != nil {
			t.Fatalf("start TLS relay: %v\n%s", err, p.LogText())
		}
		t.Fatalf("start TLS relay: %v", err)
	}
	owner.Cleanup(func() { p.Stop() })
	return p, certFile, pool, certFlags
}

// localTLSTarget is a target TLSOnly scenarios run against in
// TestScenarios: https://127.0.0.1:PORT serving a certificate of keyType,
// verified as relay.example.test. It lives as long as owner (t's parent
// test, which outlives t); t is the test a failure to start fails.
func localTLSTarget(t, owner *testing.T, keyType string) *Target {
	t.Helper()
	dir := owner.TempDir()
	p, _, pool, certFlags := startTLSRelay(t, owner, dir, keyType)
	l := &Local{Binary: builtBinary, TestHooks: hooksBinary, TempDir: dir, Main: p, TLSFlags: certFlags}
	if f := os.Getenv("RELAY_ATTACK_EXTRA_FLAGS"); f != "" {
		l.ExtraFlags = strings.Fields(f)
	}
	l.started = append(l.started, p)
	return &Target{Base: &url.URL{Scheme: "https", Host: p.Addr}, ServerName: tlsTestName, RootCAs: pool, Local: l}
}

// TestAttackCommand_TLSScenarios runs the TLS scenarios the way an operator
// would after a deploy: `relay attack --target https://ADDR --ca FILE
// --server-name NAME`, with no local handles. Every remote-safe TLS
// scenario must run and pass; against the plain-HTTP target they skip.
func TestAttackCommand_TLSScenarios(t *testing.T) {
	t.Parallel()
	p, caFile, _, _ := startTLSRelay(t, t, t.TempDir(), keyECDSA)
	var ids []string
	for _, sc := range Catalog() {
		if sc.TLSOnly && sc.Mode == RemoteSafe {
			ids = append(ids, sc.ID)
		}
	}
	require.GreaterOrEqual(t, len(ids), 3)

	var out, errOut bytes.Buffer
	code := Main([]string{"--target", "https://" + p.Addr, "--ca", caFile, "--server-name", tlsTestName,
		"--only", strings.Join(ids, ","), "--json"}, &out, &errOut)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s\nrelay log:\n%s", out.String(), errOut.String(), tail(p.LogText(), 2000))
	var reps []jsonReport
	require.NoError(t, json.Unmarshal(out.Bytes(), &reps))
	require.Len(t, reps, len(ids))
	for _, r := range reps {
		require.Equal(t, Pass, r.Verdict, "%s: %s", r.ID, r.Evidence)
	}

	// Without --server-name the certificate does not verify for 127.0.0.1:
	// a setup error (exit 3), and the evidence names the flag.
	out.Reset()
	errOut.Reset()
	require.Equal(t, ExitCouldNotRun, Main([]string{"--target", "https://" + p.Addr, "--ca", caFile, "--only", "ATK-TLS-VERSION"}, &out, &errOut), out.String())
	require.Contains(t, out.String(), "--server-name NAME")

	// Against plain HTTP the TLS scenarios skip, saying why; the run passes.
	plain := localTarget(t)
	out.Reset()
	errOut.Reset()
	require.Equal(t, 0, Main([]string{"--target", plain.Base.String(), "--only", strings.Join(ids, ","), "--json"}, &out, &errOut), errOut.String())
	require.NoError(t, json.Unmarshal(out.Bytes(), &reps))
	for _, r := range reps {
		require.Equal(t, Skip, r.Verdict, r.ID)
		require.Contains(t, r.Evidence, "https://", r.ID)
	}
}

// TestSSLScanJudge checks the sslscan cross-check on recorded reports, so
// it is exercised (and can fail) even where sslscan is not installed.
func TestSSLScanJudge(t *testing.T) {
	report := func(protocols, ciphers string) []byte {
		return []byte(`<?xml version="1.0" encoding="UTF-8"?><document title="SSLScan Results" version="2.0.7"><ssltest host="127.0.0.1" sniname="relay.example.test" port="443">` +
			protocols + ciphers + `</ssltest></document>`)
	}
	proto := func(v10, v11, v12 string) string {
		return `<protocol type="ssl" version="2" enabled="0" /><protocol type="ssl" version="3" enabled="0" />` +
			`<protocol type="tls" version="1.0" enabled="` + v10 + `" /><protocol type="tls" version="1.1" enabled="` + v11 + `" />` +
			`<protocol type="tls" version="1.2" enabled="` + v12 + `" /><protocol type="tls" version="1.3" enabled="1" />`
	}
	cipher := func(v, name string) string {
		return `<cipher status="accepted" sslversion="` + v + `" bits="128" cipher="` + name + `" id="0x0000" strength="strong" />`
	}
	good := cipher("TLSv1.3", "TLS_AES_128_GCM_SHA256") + cipher("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256") +
		cipher("TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305")

	sum, err := judgeSSLScan(report(proto("0", "0", "1"), good))
	require.NoError(t, err)
	require.Contains(t, sum, "ECDHE-RSA-AES128-GCM-SHA256")

	for name, rep := range map[string][]byte{
		"TLS 1.0 enabled":      report(proto("1", "0", "1"), good),
		"TLS 1.1 enabled":      report(proto("0", "1", "1"), good),
		"TLS 1.2 not reached":  report(proto("0", "0", "0"), ""),
		"no TLS 1.2 suite":     report(proto("0", "0", "1"), cipher("TLSv1.3", "TLS_AES_128_GCM_SHA256")),
		"CBC suite":            report(proto("0", "0", "1"), good+cipher("TLSv1.2", "ECDHE-RSA-AES128-SHA")),
		"RSA key exchange":     report(proto("0", "0", "1"), good+cipher("TLSv1.2", "AES128-GCM-SHA256")),
		"DHE (not ECDHE)":      report(proto("0", "0", "1"), good+cipher("TLSv1.2", "DHE-RSA-AES128-GCM-SHA256")),
		"3DES under IANA name": report(proto("0", "0", "1"), good+cipher("TLSv1.2", "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA")),
		"TLS 1.0 suite listed": report(proto("0", "0", "1"), good+cipher("TLSv1.0", "ECDHE-RSA-AES128-SHA")),
		"not XML":              []byte("sslscan: connection refused"),
		"no test":              []byte(`<document version="2.0.7"></document>`),
	} {
		_, err := judgeSSLScan(rep)
		require.Error(t, err, name)
	}
}
