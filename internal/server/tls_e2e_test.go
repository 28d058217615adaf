package server

// End-to-end tests of the TLS modes through the relay's own wiring
// (config.Parse -> New -> Listen -> Serve): autocert against a real Pebble
// ACME server, and static certificates. Every handshake goes to the relay's
// own listener, never to a bare tls.Listen with the same policy.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/acmetest"
)

// relayDomain is the name the relay serves in these tests. It never
// resolves: clients dial the listener's loopback address and send this name
// as SNI and Host.
const relayDomain = "relay.example.test"

// tlsRelay is a relay running in a TLS mode, and a client pinned to it.
type tlsRelay struct {
	srv    *Server
	public string // bound public (HTTPS) listener, 127.0.0.1:port
	acme   string // bound port-80 stand-in, autocert mode only
	roots  *x509.CertPool
	cache  string // autocert mode: the certificate cache dir
	logs   *syncBuffer
	client *http.Client // dials public whatever the URL's host; verifies relayDomain
}

// startTLSRelay parses args exactly as `relay serve` would and runs the
// server in-process.
func startTLSRelay(t *testing.T, roots *x509.CertPool, args ...string) *tlsRelay {
	t.Helper()
	srv, cfg, logs := runServer(t, args...)
	r := &tlsRelay{srv: srv, public: srv.Addr("public").String(), roots: roots, cache: cfg.CertCache, logs: logs}
	if a := srv.Addr("acme"); a != nil {
		r.acme = a.String()
	}
	r.client = r.httpsClient(relayDomain)
	return r
}

// startAutocertRelay starts Pebble and a relay in --domain mode against it.
func startAutocertRelay(t *testing.T, opts ...acmetest.Option) *tlsRelay {
	t.Helper()
	pebble := acmetest.Start(t, opts...)
	dir := t.TempDir()
	return startTLSRelay(t, pebble.RootPool(),
		"--domain", relayDomain,
		"--https-listen", "127.0.0.1:0",
		"--http-listen", "127.0.0.1:0",
		"--cert-cache", filepath.Join(dir, "certs"),
		"--acme-directory", pebble.DirectoryURL,
		"--acme-ca", pebble.WriteCAFile(dir),
	)
}

// startStaticRelay starts a relay in --tls-cert/--tls-key mode with a fresh
// self-signed certificate for relayDomain (key file 0600).
func startStaticRelay(t *testing.T) *tlsRelay {
	t.Helper()
	certFile, keyFile, roots := writeSelfSigned(t, relayDomain)
	return startTLSRelay(t, roots,
		"--tls-cert", certFile, "--tls-key", keyFile,
		"--https-listen", "127.0.0.1:0",
	)
}

// tlsConfig is a client configuration that verifies the relay's chain for
// serverName against the test roots.
func (r *tlsRelay) tlsConfig(serverName string) *tls.Config {
	return &tls.Config{ServerName: serverName, RootCAs: r.roots, MinVersion: tls.VersionTLS12}
}

// httpsClient sends every request to the relay's public listener, with
// SNI serverName; the URL's host becomes the Host header only.
func (r *tlsRelay) httpsClient(serverName string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", r.public)
		},
		TLSClientConfig:     r.tlsConfig(serverName),
		TLSHandshakeTimeout: 10 * time.Second, // the first handshake waits for issuance
	}
	return &http.Client{Transport: tr}
}

// handshake dials the public listener with cfg (ServerName and RootCAs
// filled in when empty) and returns the handshake's outcome.
func (r *tlsRelay) handshake(t *testing.T, cfg *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	if cfg.ServerName == "" {
		cfg.ServerName = relayDomain
	}
	if cfg.RootCAs == nil {
		cfg.RootCAs = r.roots
	}
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", r.public, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	return c.ConnectionState(), nil
}

func (r *tlsRelay) dialWS(t *testing.T, path string, hdr http.Header) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "wss://"+relayDomain+path, &websocket.DialOptions{HTTPClient: r.client, HTTPHeader: hdr})
	require.NoError(t, err)
	require.NotNil(t, resp.TLS, "the upgrade did not run over TLS")
	require.NotEmpty(t, resp.TLS.VerifiedChains, "the relay's chain was not verified")
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// exchangeWSS runs one binary<->phone round trip over WSS: the phone's frame
// reaches the binary in an envelope, the binary's reply by conn_id reaches
// the phone as the raw frame.
func (r *tlsRelay) exchangeWSS(t *testing.T, serverID string) {
	t.Helper()
	bin := r.dialWS(t, "/v1/server", binHdr(serverID))
	require.Eventually(t, func() bool { return r.srv.Relay().Stats().Binaries == 1 }, 5*time.Second, 5*time.Millisecond)
	phone := r.dialWS(t, "/v1/client", phoneHdr(serverID))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, phone.Write(ctx, websocket.MessageText, []byte(`{"v":2,"type":"hello"}`)))
	_, msg, err := bin.Read(ctx)
	require.NoError(t, err)
	var env struct {
		ConnID string         `json:"conn_id"`
		Frame  map[string]any `json:"frame"`
	}
	require.NoError(t, jsonUnmarshal(msg, &env))
	require.NotEmpty(t, env.ConnID)
	require.Equal(t, map[string]any{"v": float64(2), "type": "hello"}, env.Frame)

	reply := fmt.Sprintf(`{"conn_id":%q,"frame":{"v":2,"type":"welcome"}}`, env.ConnID)
	require.NoError(t, bin.Write(ctx, websocket.MessageText, []byte(reply)))
	typ, msg, err := phone.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, websocket.MessageText, typ)
	require.JSONEq(t, `{"v":2,"type":"welcome"}`, string(msg))
}

// get sends a GET through c and returns status, body and headers.
func get(t *testing.T, c *http.Client, url string) (int, []byte, http.Header) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, body, resp.Header
}

func TestAutocert_PebbleIssues_VerifiedWSSExchange_CertCached(t *testing.T) {
	r := startAutocertRelay(t)

	// The first handshake makes the relay fetch a certificate from Pebble.
	st, err := r.handshake(t, &tls.Config{MinVersion: tls.VersionTLS12})
	require.NoError(t, err, "no verified certificate for %s from the relay", relayDomain)
	leaf := st.PeerCertificates[0]
	require.Contains(t, leaf.DNSNames, relayDomain)
	require.NotEmpty(t, st.VerifiedChains)
	require.NotEqual(t, leaf.Issuer.String(), leaf.Subject.String(), "expected a CA-issued, not self-signed, certificate")

	// Without Pebble's root the same certificate does not verify: the
	// success above is the chain, not a lax client.
	_, err = r.handshake(t, &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12})
	require.Error(t, err)
	var unknown x509.UnknownAuthorityError
	require.ErrorAs(t, err, &unknown)

	r.exchangeWSS(t, "srv-autocert")

	// The issued certificate and the account key are cached, owner-only.
	require.Eventually(t, func() bool {
		_, err := os.Stat(filepath.Join(r.cache, relayDomain))
		return err == nil
	}, 5*time.Second, 10*time.Millisecond, "certificate not written to the cache")
	fi, err := os.Stat(r.cache)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	entries, err := os.ReadDir(r.cache)
	require.NoError(t, err)
	for _, e := range entries {
		efi, err := e.Info()
		require.NoError(t, err)
		require.Zero(t, efi.Mode().Perm()&0o077, "%s is group/world accessible: %v", e.Name(), efi.Mode())
	}
	pemBytes, err := os.ReadFile(filepath.Join(r.cache, relayDomain))
	require.NoError(t, err)
	require.Contains(t, string(pemBytes), "PRIVATE KEY")
	require.Contains(t, string(pemBytes), "CERTIFICATE")
}

// A name the relay does not serve, or no name at all, is refused at the
// handshake with the unrecognized_name alert (RFC 6066), which says what
// is wrong, not internal_error (issue 21, 9e), in TLS 1.3 and 1.2.
func TestAutocert_UnknownSNI_HandshakeRefused(t *testing.T) {
	r := startAutocertRelay(t)
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		_, err := r.handshake(t, &tls.Config{ServerName: "other.example.test", MinVersion: v, MaxVersion: v})
		require.Error(t, err, "the relay completed a handshake for a name it does not serve")
		require.ErrorContains(t, err, "remote error: tls: unrecognized name", "version %#x: the alert the relay sent", v)
	}
	// No SNI at all (a client dialling the address): the same alert.
	d := &net.Dialer{Timeout: 10 * time.Second}
	_, err := tls.DialWithDialer(d, "tcp", r.public, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // no name: nothing to verify
	require.ErrorContains(t, err, "tls: unrecognized name")
	// Its own name still works afterwards.
	_, err = r.handshake(t, &tls.Config{MinVersion: tls.VersionTLS12})
	require.NoError(t, err)
	require.Zero(t, testutil.ToFloat64(r.srv.metrics.ACMEErrors), "a stranger's name is no ACME error")
}

// tlsPolicyCases are run against the relay's public listener in both TLS
// modes. The certificates are ECDSA (autocert's default key, and
// writeSelfSigned's), so the CBC suite offered is the ECDSA one a Go
// server would otherwise pick from its defaults.
var tlsPolicyCases = []struct {
	name    string
	cfg     func() *tls.Config
	refused string // substring of the client's error; "" = accepted
	version uint16 // expected negotiated version when accepted
}{
	{"TLS1.0_refused", func() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10} }, "protocol version", 0},
	{"TLS1.1_refused", func() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS11, MaxVersion: tls.VersionTLS11} }, "protocol version", 0},
	{"TLS1.2_accepted", func() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12} }, "", tls.VersionTLS12},
	{"TLS1.3_accepted", func() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS13, MaxVersion: tls.VersionTLS13} }, "", tls.VersionTLS13},
	{"TLS1.2_CBC_suite_refused", func() *tls.Config {
		return &tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
		}}
	}, "handshake failure", 0},
	{"TLS1.2_GCM_suite_accepted", func() *tls.Config {
		return &tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		}}
	}, "", tls.VersionTLS12},
}

func runTLSPolicy(t *testing.T, r *tlsRelay) {
	// Warm up: in autocert mode the first handshake issues the certificate.
	_, err := r.handshake(t, &tls.Config{MinVersion: tls.VersionTLS12})
	require.NoError(t, err)
	for _, tc := range tlsPolicyCases {
		t.Run(tc.name, func(t *testing.T) {
			st, err := r.handshake(t, tc.cfg())
			if tc.refused != "" {
				require.Error(t, err, "handshake accepted (version %#x, suite %s)", st.Version, tls.CipherSuiteName(st.CipherSuite))
				require.Contains(t, err.Error(), tc.refused)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.version, st.Version)
			if st.Version == tls.VersionTLS12 {
				name := tls.CipherSuiteName(st.CipherSuite)
				require.True(t, strings.HasPrefix(name, "TLS_ECDHE_") &&
					(strings.Contains(name, "_GCM_") || strings.Contains(name, "CHACHA20")),
					"TLS 1.2 suite %s is not forward-secret AEAD", name)
			}
		})
	}
}

func TestAutocert_TLSPolicy_OnRelayListener(t *testing.T) {
	runTLSPolicy(t, startAutocertRelay(t))
}

func TestStatic_TLSPolicy_OnRelayListener(t *testing.T) {
	runTLSPolicy(t, startStaticRelay(t))
}

// runHostPolicy: SNI is always relayDomain; only the Host header varies.
func runHostPolicy(t *testing.T, r *tlsRelay) {
	for _, tc := range []struct {
		host   string
		status int
	}{
		{relayDomain, http.StatusOK},
		{strings.ToUpper(relayDomain) + ":443", http.StatusOK},
		{"other.example.test", http.StatusMisdirectedRequest},
		{"127.0.0.1", http.StatusMisdirectedRequest},
		{relayDomain + ".evil.test", http.StatusMisdirectedRequest},
	} {
		t.Run(tc.host, func(t *testing.T) {
			status, body, _ := get(t, r.client, "https://"+tc.host+"/healthz")
			require.Equal(t, tc.status, status)
			if tc.status != http.StatusOK {
				require.Empty(t, body)
			} else {
				require.Contains(t, string(body), `"status":"ok"`)
			}
		})
	}
	// The upgrade paths are behind the same check: a binary that names
	// another host never reaches the registry.
	t.Run("upgrade_other_host", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, "wss://other.example.test/v1/server", &websocket.DialOptions{HTTPClient: r.client, HTTPHeader: binHdr("srv-host")})
		if c != nil {
			_ = c.CloseNow()
		}
		require.Error(t, err)
		require.NotNil(t, resp)
		require.Equal(t, http.StatusMisdirectedRequest, resp.StatusCode)
		require.Zero(t, r.srv.Relay().Stats().Binaries)
	})
}

func TestAutocert_HostMismatch_421EmptyBody(t *testing.T) {
	runHostPolicy(t, startAutocertRelay(t))
}

func TestStatic_HostFromCertNames_421ForOthers_WSSWorks(t *testing.T) {
	r := startStaticRelay(t)
	runHostPolicy(t, r)
	r.exchangeWSS(t, "srv-static")
}

func TestAutocert_ChallengeListener_OnlyChallenges_404NoRedirect(t *testing.T) {
	r := startAutocertRelay(t)
	require.NotEmpty(t, r.acme)
	plain := &http.Client{
		// A redirect must be seen, not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	for _, tc := range []struct {
		name, method, path, host string
	}{
		{"root", "GET", "/", relayDomain},
		{"root_foreign_host", "GET", "/", "other.example.test"},
		{"unknown_challenge_token", "GET", fmt.Sprintf("/.well-known/acme-challenge/%x", token), relayDomain},
		{"challenge_prefix_only", "GET", "/.well-known/acme-challenge/", relayDomain},
		{"healthz_not_served", "GET", "/healthz", relayDomain},
		{"binary_endpoint_not_served", "GET", "/v1/server", relayDomain},
		{"phone_endpoint_not_served", "GET", "/v1/client", relayDomain},
		{"post", "POST", "/", relayDomain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, tc.method, "http://"+r.acme+tc.path, nil)
			require.NoError(t, err)
			req.Host = tc.host
			for k, v := range binHdr("srv") {
				req.Header[k] = v
			}
			resp, err := plain.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, http.StatusNotFound, resp.StatusCode)
			require.Empty(t, body)
			require.Empty(t, resp.Header.Get("Location"), "the port-80 listener redirects")
		})
	}
	require.Zero(t, r.srv.Relay().Stats().Binaries)
}

// writeSelfSigned writes a self-signed P-256 certificate for name to a temp
// dir (key 0600) and returns the paths and a pool trusting it.
func writeSelfSigned(t *testing.T, name string) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{name},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile = filepath.Join(dir, "cert.pem")
	keyFile = filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots
}
