package tlsconf

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/acme"

	"github.com/pyrycode/relay/internal/acmetest"
)

const testDomain = "relay.example.test"

// ---- certificate cache directory ----

func modeOf(t *testing.T, p string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(p)
	require.NoError(t, err)
	return fi.Mode().Perm()
}

// mkdirMode makes a directory with exactly perm (Mkdir alone is narrowed by umask).
func mkdirMode(t *testing.T, p string, perm fs.FileMode) {
	t.Helper()
	require.NoError(t, os.Mkdir(p, 0o700))
	require.NoError(t, os.Chmod(p, perm))
}

func writeFileMode(t *testing.T, p string, data []byte, perm fs.FileMode) {
	t.Helper()
	require.NoError(t, os.WriteFile(p, data, 0o600))
	require.NoError(t, os.Chmod(p, perm))
}

func TestCheckCacheDir_Missing_CreatedPrivate(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "parent", "certs")
	require.NoError(t, CheckCacheDir(dir))
	fi, err := os.Lstat(dir)
	require.NoError(t, err)
	require.True(t, fi.IsDir())
	require.Equal(t, fs.FileMode(0o700), fi.Mode().Perm())
	require.Equal(t, fs.FileMode(0o700), modeOf(t, filepath.Join(base, "parent")), "new parents are private too")
	// A second run accepts what the first created.
	require.NoError(t, CheckCacheDir(dir))
}

func TestCheckCacheDir_Existing0700_Accepted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	mkdirMode(t, dir, 0o700)
	writeFileMode(t, filepath.Join(dir, "acme_account+key"), []byte("k"), 0o600)
	writeFileMode(t, filepath.Join(dir, testDomain), []byte("c"), 0o400)
	require.NoError(t, CheckCacheDir(dir))
	require.Equal(t, fs.FileMode(0o700), modeOf(t, dir))
}

func TestCheckCacheDir_GroupOrWorldBits_Refused(t *testing.T) {
	for _, perm := range []fs.FileMode{0o750, 0o755, 0o777, 0o770, 0o710, 0o701, 0o705} {
		t.Run(fmt.Sprintf("%#o", perm), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "certs")
			mkdirMode(t, dir, perm)
			err := CheckCacheDir(dir)
			require.ErrorIs(t, err, ErrCacheDirInsecure)
			require.Contains(t, err.Error(), dir)
			require.Contains(t, err.Error(), fmt.Sprintf("mode %#o", perm))
			require.Contains(t, err.Error(), "chmod 700 "+dir)
			require.Equal(t, perm, modeOf(t, dir), "CheckCacheDir must not chmod")
		})
	}
}

func TestCheckCacheDir_Symlink_Refused(t *testing.T) {
	base := t.TempDir()
	realDir := filepath.Join(base, "real")
	mkdirMode(t, realDir, 0o700)
	link := filepath.Join(base, "certs")
	require.NoError(t, os.Symlink(realDir, link))
	err := CheckCacheDir(link)
	require.ErrorIs(t, err, ErrCacheDirInsecure)
	require.Contains(t, err.Error(), link)
	require.Contains(t, err.Error(), "symlink")
	// The resolved path itself is fine.
	require.NoError(t, CheckCacheDir(realDir))
}

func TestCheckCacheDir_DanglingSymlink_RefusedNotFollowed(t *testing.T) {
	base := t.TempDir()
	target := filepath.Join(base, "elsewhere")
	link := filepath.Join(base, "certs")
	require.NoError(t, os.Symlink(target, link))
	require.ErrorIs(t, CheckCacheDir(link), ErrCacheDirInsecure)
	_, err := os.Lstat(target)
	require.ErrorIs(t, err, fs.ErrNotExist, "must not create the link's target")
}

func TestCheckCacheDir_RegularFile_RefusedNotDir(t *testing.T) {
	p := filepath.Join(t.TempDir(), "certs")
	writeFileMode(t, p, []byte("x"), 0o600)
	err := CheckCacheDir(p)
	require.ErrorIs(t, err, ErrCacheDirNotDir)
	require.NotErrorIs(t, err, ErrCacheDirInsecure)
	require.Contains(t, err.Error(), p)
	require.Equal(t, fs.FileMode(0o600), modeOf(t, p))
}

func TestCheckCacheDir_Empty_Refused(t *testing.T) {
	require.ErrorIs(t, CheckCacheDir(""), ErrCacheDirNotDir)
}

func TestCheckCacheDir_LooseFileInside_Refused(t *testing.T) {
	for _, perm := range []fs.FileMode{0o640, 0o644, 0o604, 0o660, 0o666} {
		t.Run(fmt.Sprintf("%#o", perm), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "certs")
			mkdirMode(t, dir, 0o700)
			writeFileMode(t, filepath.Join(dir, "acme_account+key"), []byte("k"), 0o600)
			loose := filepath.Join(dir, testDomain)
			writeFileMode(t, loose, []byte("key+cert"), perm)
			err := CheckCacheDir(dir)
			require.ErrorIs(t, err, ErrCacheDirInsecure)
			require.Contains(t, err.Error(), loose)
			require.Contains(t, err.Error(), fmt.Sprintf("mode %#o", perm))
			require.Equal(t, perm, modeOf(t, loose), "CheckCacheDir must not chmod")
		})
	}
}

func TestCheckCacheDir_SymlinkInside_Refused(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "certs")
	mkdirMode(t, dir, 0o700)
	outside := filepath.Join(base, "planted")
	writeFileMode(t, outside, []byte("x"), 0o600)
	entry := filepath.Join(dir, testDomain)
	require.NoError(t, os.Symlink(outside, entry))
	err := CheckCacheDir(dir)
	require.ErrorIs(t, err, ErrCacheDirInsecure)
	require.Contains(t, err.Error(), entry)
	require.Contains(t, err.Error(), "symlink")
}

func TestCheckCacheDir_OtherOwner_Refused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown to another uid")
	}
	const nobody = 65534
	t.Run("dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "certs")
		mkdirMode(t, dir, 0o700)
		require.NoError(t, os.Chown(dir, nobody, nobody))
		err := CheckCacheDir(dir)
		require.ErrorIs(t, err, ErrCacheDirInsecure)
		require.Contains(t, err.Error(), dir)
		require.Contains(t, err.Error(), "uid 65534")
	})
	t.Run("entry", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "certs")
		mkdirMode(t, dir, 0o700)
		entry := filepath.Join(dir, "acme_account+key")
		writeFileMode(t, entry, []byte("k"), 0o600)
		require.NoError(t, os.Chown(entry, nobody, nobody))
		err := CheckCacheDir(dir)
		require.ErrorIs(t, err, ErrCacheDirInsecure)
		require.Contains(t, err.Error(), entry)
		st, ok := mustStat(t, entry).Sys().(*syscall.Stat_t)
		require.True(t, ok)
		require.EqualValues(t, nobody, st.Uid, "CheckCacheDir must not chown")
	})
}

func mustStat(t *testing.T, p string) fs.FileInfo {
	t.Helper()
	fi, err := os.Lstat(p)
	require.NoError(t, err)
	return fi
}

// ---- TLS policy over real loopback handshakes ----

type testCerts struct {
	ecdsa, rsa tls.Certificate
	pool       *x509.CertPool
	// PEM encodings of the ECDSA pair, for StaticTLSConfig.
	certPEM, keyPEM []byte
}

var loadTestCerts = sync.OnceValues(func() (*testCerts, error) {
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	tc := &testCerts{pool: x509.NewCertPool()}
	var ecdsaDER []byte
	for _, k := range []crypto.Signer{ek, rk} {
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(time.Now().UnixNano()),
			Subject:               pkix.Name{CommonName: testDomain},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
			DNSNames:              []string{testDomain},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
		if err != nil {
			return nil, err
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		tc.pool.AddCert(leaf)
		c := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k, Leaf: leaf}
		if k == crypto.Signer(ek) {
			tc.ecdsa, ecdsaDER = c, der
		} else {
			tc.rsa = c
		}
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ek)
	if err != nil {
		return nil, err
	}
	tc.certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ecdsaDER})
	tc.keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return tc, nil
})

func certs(t *testing.T) *testCerts {
	t.Helper()
	tc, err := loadTestCerts()
	require.NoError(t, err)
	return tc
}

// tlsServer accepts on loopback with cfg and reports each server-side
// handshake result, so tests can tell a server refusal from a client one.
type tlsServer struct {
	addr    string
	results chan error
}

func startTLSServer(t *testing.T, cfg *tls.Config) *tlsServer {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(t, err)
	s := &tlsServer{addr: ln.Addr().String(), results: make(chan error, 16)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				err := c.(*tls.Conn).HandshakeContext(ctx)
				s.results <- err
				if err == nil {
					// Let the client finish reading the server's flight.
					_, _ = io.Copy(io.Discard, c)
				}
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return s
}

// serverResult returns the server side of the most recent handshake.
func (s *tlsServer) serverResult(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.results:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("server handshake did not finish")
		return nil
	}
}

func (s *tlsServer) dial(t *testing.T, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", s.addr, cfg)
	if err == nil {
		t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

func policyServer(t *testing.T) *tlsServer {
	cfg := ServerTLSConfig()
	tc := certs(t)
	cfg.Certificates = []tls.Certificate{tc.ecdsa, tc.rsa}
	return startTLSServer(t, cfg)
}

func clientConfig(t *testing.T) *tls.Config {
	return &tls.Config{ServerName: testDomain, RootCAs: certs(t).pool}
}

func TestServerTLS_TLS10And11_Refused(t *testing.T) {
	srv := policyServer(t)
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			cfg := clientConfig(t)
			cfg.MinVersion, cfg.MaxVersion = v, v
			_, err := srv.dial(t, cfg)
			require.Error(t, err)
			require.Contains(t, err.Error(), "protocol version not supported")
			serr := srv.serverResult(t)
			require.Error(t, serr)
			require.Contains(t, serr.Error(), "unsupported versions")
		})
	}
}

func TestServerTLS_TLS12And13_Accepted(t *testing.T) {
	srv := policyServer(t)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			cfg := clientConfig(t)
			cfg.MinVersion, cfg.MaxVersion = v, v
			c, err := srv.dial(t, cfg)
			require.NoError(t, err)
			require.NoError(t, srv.serverResult(t))
			require.Equal(t, v, c.ConnectionState().Version)
		})
	}
}

// allowedTLS12Suites is the expected policy, written out independently of
// ServerTLSConfig so a change to the policy has to change this test too.
var allowedTLS12Suites = map[string]bool{
	"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256":       true,
	"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384":       true,
	"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": true,
	"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256":         true,
	"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384":         true,
	"TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256":   true,
}

func dialTLS12Suite(t *testing.T, srv *tlsServer, suite uint16) (clientErr, serverErr error) {
	t.Helper()
	cfg := clientConfig(t)
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	cfg.CipherSuites = []uint16{suite}
	c, err := srv.dial(t, cfg)
	serr := srv.serverResult(t)
	if err == nil {
		require.Equal(t, suite, c.ConnectionState().CipherSuite)
	}
	return err, serr
}

func TestServerTLS_TLS12_CBCOnlyClient_Refused(t *testing.T) {
	srv := policyServer(t)
	cerr, serr := dialTLS12Suite(t, srv, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA)
	require.Error(t, cerr)
	require.ErrorContains(t, serr, "no cipher suite supported by both client and server")
}

func TestServerTLS_TLS12_RSAKeyExchangeOnlyClient_Refused(t *testing.T) {
	srv := policyServer(t)
	cerr, serr := dialTLS12Suite(t, srv, tls.TLS_RSA_WITH_AES_128_GCM_SHA256)
	require.Error(t, cerr)
	require.ErrorContains(t, serr, "no cipher suite supported by both client and server")
}

func TestServerTLS_TLS12_ECDHEGCMClient_Accepted(t *testing.T) {
	srv := policyServer(t)
	cerr, serr := dialTLS12Suite(t, srv, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
	require.NoError(t, cerr)
	require.NoError(t, serr)
}

// TestServerTLS_TLS12_EverySuite checks each TLS 1.2-capable suite Go knows,
// secure or not: accepted exactly when it is a forward-secret AEAD suite.
func TestServerTLS_TLS12_EverySuite(t *testing.T) {
	srv := policyServer(t)
	all := append(tls.CipherSuites(), tls.InsecureCipherSuites()...)
	seen := 0
	for _, cs := range all {
		tls12 := false
		for _, v := range cs.SupportedVersions {
			tls12 = tls12 || v == tls.VersionTLS12
		}
		if !tls12 {
			continue
		}
		seen++
		t.Run(cs.Name, func(t *testing.T) {
			cerr, serr := dialTLS12Suite(t, srv, cs.ID)
			if allowedTLS12Suites[cs.Name] {
				require.NoError(t, cerr)
				require.NoError(t, serr)
				return
			}
			require.Error(t, cerr)
			require.ErrorContains(t, serr, "no cipher suite supported by both client and server")
		})
	}
	require.Greater(t, seen, len(allowedTLS12Suites), "Go should know refused suites too")
}

func TestServerTLS_ALPN_HTTP11Only(t *testing.T) {
	srv := policyServer(t)
	cfg := clientConfig(t)
	cfg.NextProtos = []string{"h2", "http/1.1"}
	c, err := srv.dial(t, cfg)
	require.NoError(t, err)
	require.NoError(t, srv.serverResult(t))
	require.Equal(t, "http/1.1", c.ConnectionState().NegotiatedProtocol)

	h2only := clientConfig(t)
	h2only.NextProtos = []string{"h2"}
	_, err = srv.dial(t, h2only)
	require.ErrorContains(t, err, "no application protocol")
	require.Error(t, srv.serverResult(t))
}

// TestServerTLS_HTTPServerHTTP1Only_NoH2 pins the http.Server setting the
// policy relies on: ServeTLS re-adds "h2" unless Protocols excludes it.
func TestServerTLS_HTTPServerHTTP1Only_NoH2(t *testing.T) {
	cfg := ServerTLSConfig()
	cfg.Certificates = []tls.Certificate{certs(t).ecdsa}
	var protos http.Protocols
	protos.SetHTTP1(true)
	hs := &http.Server{TLSConfig: cfg, Protocols: &protos, Handler: http.NotFoundHandler(), ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- hs.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		_ = hs.Close()
		require.ErrorIs(t, <-done, http.ErrServerClosed)
	})

	h2only := clientConfig(t)
	h2only.NextProtos = []string{"h2"}
	_, err = tls.Dial("tcp", ln.Addr().String(), h2only)
	require.ErrorContains(t, err, "no application protocol")

	both := clientConfig(t)
	both.NextProtos = []string{"h2", "http/1.1"}
	c, err := tls.Dial("tcp", ln.Addr().String(), both)
	require.NoError(t, err)
	defer c.Close()
	require.Equal(t, "http/1.1", c.ConnectionState().NegotiatedProtocol)
}

func TestServerTLS_KeyExchange(t *testing.T) {
	srv := policyServer(t)
	t.Run("TLS13 default client gets post-quantum hybrid", func(t *testing.T) {
		c, err := srv.dial(t, clientConfig(t))
		require.NoError(t, err)
		require.NoError(t, srv.serverResult(t))
		require.Equal(t, tls.X25519MLKEM768, c.ConnectionState().CurveID)
	})
	t.Run("P-256 only client accepted", func(t *testing.T) {
		cfg := clientConfig(t)
		cfg.CurvePreferences = []tls.CurveID{tls.CurveP256}
		c, err := srv.dial(t, cfg)
		require.NoError(t, err)
		require.NoError(t, srv.serverResult(t))
		require.Equal(t, tls.CurveP256, c.ConnectionState().CurveID)
	})
	t.Run("P-521 only client refused", func(t *testing.T) {
		cfg := clientConfig(t)
		cfg.CurvePreferences = []tls.CurveID{tls.CurveP521}
		_, err := srv.dial(t, cfg)
		require.Error(t, err)
		require.Error(t, srv.serverResult(t))
	})
}

func TestServerTLSConfig_FreshCopyEachCall(t *testing.T) {
	a := ServerTLSConfig()
	a.NextProtos[0] = "mutated"
	a.CipherSuites[0] = tls.TLS_RSA_WITH_AES_128_CBC_SHA
	a.CurvePreferences[0] = tls.CurveP521
	b := ServerTLSConfig()
	require.Equal(t, []string{"http/1.1"}, b.NextProtos)
	require.Equal(t, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, b.CipherSuites[0])
	require.Equal(t, tls.X25519MLKEM768, b.CurvePreferences[0])
}

// ---- static certificate mode ----

func writePair(t *testing.T, keyPerm fs.FileMode) (certFile, keyFile string) {
	t.Helper()
	tc := certs(t)
	dir := t.TempDir()
	certFile = filepath.Join(dir, "cert.pem")
	keyFile = filepath.Join(dir, "key.pem")
	writeFileMode(t, certFile, tc.certPEM, 0o644)
	writeFileMode(t, keyFile, tc.keyPEM, keyPerm)
	return certFile, keyFile
}

func TestStaticTLSConfig_ServesPolicy(t *testing.T) {
	for _, perm := range []fs.FileMode{0o600, 0o400, 0o640} {
		t.Run(fmt.Sprintf("key %#o", perm), func(t *testing.T) {
			certFile, keyFile := writePair(t, perm)
			cfg, err := StaticTLSConfig(certFile, keyFile)
			require.NoError(t, err)
			srv := startTLSServer(t, cfg)

			c, err := srv.dial(t, clientConfig(t))
			require.NoError(t, err)
			require.NoError(t, srv.serverResult(t))
			require.Equal(t, "relay.example.test", c.ConnectionState().PeerCertificates[0].Subject.CommonName)

			old := clientConfig(t)
			old.MinVersion, old.MaxVersion = tls.VersionTLS11, tls.VersionTLS11
			_, err = srv.dial(t, old)
			require.Error(t, err)
			require.ErrorContains(t, srv.serverResult(t), "unsupported versions")

			cbc := clientConfig(t)
			cbc.MaxVersion = tls.VersionTLS12
			cbc.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}
			_, err = srv.dial(t, cbc)
			require.Error(t, err)
			require.ErrorContains(t, srv.serverResult(t), "no cipher suite supported")
		})
	}
}

func TestStaticTLSConfig_WorldAccessibleKey_Refused(t *testing.T) {
	for _, perm := range []fs.FileMode{0o644, 0o604, 0o602, 0o666} {
		t.Run(fmt.Sprintf("%#o", perm), func(t *testing.T) {
			certFile, keyFile := writePair(t, perm)
			cfg, err := StaticTLSConfig(certFile, keyFile)
			require.Nil(t, cfg)
			require.ErrorIs(t, err, ErrKeyFileInsecure)
			require.Contains(t, err.Error(), keyFile)
			require.Contains(t, err.Error(), fmt.Sprintf("mode %#o", perm))
			require.Equal(t, perm, modeOf(t, keyFile), "StaticTLSConfig must not chmod")
		})
	}
}

func TestStaticTLSConfig_SymlinkedKey_TargetModeChecked(t *testing.T) {
	certFile, keyFile := writePair(t, 0o600)
	link := filepath.Join(t.TempDir(), "key.pem")
	require.NoError(t, os.Symlink(keyFile, link))
	_, err := StaticTLSConfig(certFile, link)
	require.NoError(t, err)

	require.NoError(t, os.Chmod(keyFile, 0o644))
	_, err = StaticTLSConfig(certFile, link)
	require.ErrorIs(t, err, ErrKeyFileInsecure)
}

func TestStaticTLSConfig_MissingOrBadFiles_Error(t *testing.T) {
	certFile, keyFile := writePair(t, 0o600)
	_, err := StaticTLSConfig(certFile, filepath.Join(t.TempDir(), "nope.pem"))
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, err = StaticTLSConfig(filepath.Join(t.TempDir(), "nope.pem"), keyFile)
	require.ErrorIs(t, err, fs.ErrNotExist)
	// Key and cert swapped: a parse error, not a panic.
	_, err = StaticTLSConfig(keyFile, keyFile)
	require.Error(t, err)
}

// ---- autocert against a real Pebble ----

func newPebbleManager(t *testing.T, pebble *acmetest.Server, cacheDir string) *tlsServer {
	t.Helper()
	m, err := NewAutocertManager(AutocertOptions{
		Domain:       testDomain,
		CacheDir:     cacheDir,
		DirectoryURL: pebble.DirectoryURL,
		HTTPClient:   pebble.HTTPClient,
	})
	require.NoError(t, err)
	return startTLSServer(t, AutocertTLSConfig(m))
}

func TestAutocert_Pebble_IssuesVerifiedCert(t *testing.T) {
	pebble := acmetest.Start(t)
	cacheDir := filepath.Join(t.TempDir(), "certs")
	srv := newPebbleManager(t, pebble, cacheDir)

	c, err := srv.dial(t, &tls.Config{ServerName: testDomain, RootCAs: pebble.RootPool(), NextProtos: []string{"h2", "http/1.1"}})
	require.NoError(t, err)
	require.NoError(t, srv.serverResult(t))
	st := c.ConnectionState()
	require.NotEmpty(t, st.VerifiedChains)
	require.NoError(t, st.PeerCertificates[0].VerifyHostname(testDomain))
	require.Equal(t, "http/1.1", st.NegotiatedProtocol)
	require.GreaterOrEqual(t, st.Version, uint16(tls.VersionTLS12))

	// Not trusted without Pebble's issuance root: the chain really is Pebble's.
	_, err = srv.dial(t, &tls.Config{ServerName: testDomain})
	require.Error(t, err)
	_ = srv.serverResult(t)

	// The cache holds the account key and the cert, all private, and
	// passes the start-up check for the next run.
	require.Equal(t, fs.FileMode(0o700), modeOf(t, cacheDir))
	entries, err := os.ReadDir(cacheDir)
	require.NoError(t, err)
	names := map[string]bool{}
	for _, e := range entries {
		names[e.Name()] = true
		p := filepath.Join(cacheDir, e.Name())
		require.Equal(t, fs.FileMode(0o600), modeOf(t, p), "autocert.DirCache writes 0600: %s", p)
	}
	require.True(t, names[testDomain], "cert cached under the domain name; have %v", names)
	require.True(t, names["acme_account+key"], "account key cached; have %v", names)
	require.NoError(t, CheckCacheDir(cacheDir))

	// A restarted relay serves from the cache without the CA.
	m2, err := NewAutocertManager(AutocertOptions{
		Domain:       testDomain,
		CacheDir:     cacheDir,
		DirectoryURL: "https://127.0.0.1:1/dir", // nothing listens: any CA call fails
		HTTPClient:   pebble.HTTPClient,
	})
	require.NoError(t, err)
	srv2 := startTLSServer(t, AutocertTLSConfig(m2))
	c2, err := srv2.dial(t, &tls.Config{ServerName: testDomain, RootCAs: pebble.RootPool()})
	require.NoError(t, err)
	require.NoError(t, srv2.serverResult(t))
	require.Equal(t, st.PeerCertificates[0].Raw, c2.ConnectionState().PeerCertificates[0].Raw)
}

func TestAutocert_UnlistedServerName_Refused(t *testing.T) {
	pebble := acmetest.Start(t)
	cacheDir := filepath.Join(t.TempDir(), "certs")
	srv := newPebbleManager(t, pebble, cacheDir)

	for _, name := range []string{"evil.example.test", "sub." + testDomain, "relay.example.test.evil.test"} {
		t.Run(name, func(t *testing.T) {
			_, err := srv.dial(t, &tls.Config{ServerName: name, RootCAs: pebble.RootPool()})
			require.Error(t, err)
			require.ErrorContains(t, srv.serverResult(t), "not configured in HostWhitelist")
			_, statErr := os.Lstat(filepath.Join(cacheDir, name))
			require.ErrorIs(t, statErr, fs.ErrNotExist, "no certificate requested for %s", name)
		})
	}
	t.Run("no SNI", func(t *testing.T) {
		_, err := srv.dial(t, &tls.Config{InsecureSkipVerify: true})
		require.Error(t, err)
		require.ErrorContains(t, srv.serverResult(t), "missing server name")
	})
}

func TestAutocertTLSConfig_PolicyPlusACMEALPN(t *testing.T) {
	m, err := NewAutocertManager(AutocertOptions{Domain: testDomain, CacheDir: filepath.Join(t.TempDir(), "c")})
	require.NoError(t, err)
	cfg := AutocertTLSConfig(m)
	require.Equal(t, []string{"http/1.1", acme.ALPNProto}, cfg.NextProtos)
	require.NotNil(t, cfg.GetCertificate)
	want := ServerTLSConfig()
	require.Equal(t, want.MinVersion, cfg.MinVersion)
	require.Equal(t, want.CipherSuites, cfg.CipherSuites)
	require.Equal(t, want.CurvePreferences, cfg.CurvePreferences)
	// Appending acme-tls/1 must not leak into later policy copies.
	require.Equal(t, []string{"http/1.1"}, ServerTLSConfig().NextProtos)
}

func TestNewAutocertManager_InsecureCacheDir_Refused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	mkdirMode(t, dir, 0o755)
	m, err := NewAutocertManager(AutocertOptions{Domain: testDomain, CacheDir: dir})
	require.Nil(t, m)
	require.ErrorIs(t, err, ErrCacheDirInsecure)
	require.Equal(t, fs.FileMode(0o755), modeOf(t, dir))
}

func TestNewAutocertManager_BadOptions_Refused(t *testing.T) {
	cacheDir := filepath.Join(t.TempDir(), "certs")
	for _, d := range []string{"", "localhost", "relay", "127.0.0.1", "relay.example.test.", ".example.test",
		"relay..test", "-relay.example.test", "relay.example.test:443", "*.example.test", "relay_1.example.test",
		"réլay.example.test", strings.Repeat("a", 64) + ".test"} {
		t.Run("domain "+d, func(t *testing.T) {
			m, err := NewAutocertManager(AutocertOptions{Domain: d, CacheDir: cacheDir})
			require.Nil(t, m)
			require.ErrorIs(t, err, ErrInvalidDomain)
		})
	}
	for _, u := range []string{"http://127.0.0.1:14000/dir", "127.0.0.1:14000/dir", "https:///dir", "::"} {
		t.Run("directory "+u, func(t *testing.T) {
			m, err := NewAutocertManager(AutocertOptions{Domain: testDomain, CacheDir: cacheDir, DirectoryURL: u})
			require.Nil(t, m)
			require.ErrorIs(t, err, ErrInvalidDirectoryURL)
		})
	}
	_, err := os.Lstat(cacheDir)
	require.ErrorIs(t, err, fs.ErrNotExist, "options are validated before the cache dir is created")

	m, err := NewAutocertManager(AutocertOptions{Domain: "Relay.Example.TEST", CacheDir: cacheDir})
	require.NoError(t, err)
	require.NoError(t, m.HostPolicy(context.Background(), testDomain))
	require.Error(t, m.HostPolicy(context.Background(), "other.example.test"))
	require.Nil(t, m.Client, "empty DirectoryURL and HTTPClient leave autocert's Let's Encrypt default")
}

// ---- port-80 challenge handler ----

func challengeServer(t *testing.T) (base, cacheDir string) {
	t.Helper()
	cacheDir = filepath.Join(t.TempDir(), "certs")
	m, err := NewAutocertManager(AutocertOptions{Domain: testDomain, CacheDir: cacheDir})
	require.NoError(t, err)
	hs := httptest.NewServer(ChallengeHandler(m))
	t.Cleanup(hs.Close)
	return hs.URL, cacheDir
}

func doChallenge(t *testing.T, method, url, host string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	req.Host = host
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

func TestChallengeHandler_NonChallenge_404EmptyNoRedirect(t *testing.T) {
	base, _ := challengeServer(t)
	cases := []struct{ method, path, host string }{
		{"GET", "/", testDomain},
		{"GET", "/v1/server", testDomain},
		{"GET", "/healthz?x=1", "evil.example.test"},
		{"HEAD", "/", testDomain},
		{"POST", "/", testDomain},
		{"GET", "/.well-known/acme-challenge", testDomain},
		{"GET", "/.well-known/acme-challenge/unknown", testDomain},
		{"GET", "/.well-known/acme-challenge/unknown", "evil.example.test"},
		{"GET", "/.well-known/acme-challenge/unknown", "evil.example.test:80"},
		{"GET", "/.well-known/acme-challenge/../../etc/passwd", testDomain},
		{"POST", "/.well-known/acme-challenge/unknown", testDomain},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.host+" "+tc.path, func(t *testing.T) {
			resp, body := doChallenge(t, tc.method, base+tc.path, tc.host)
			require.Equal(t, http.StatusNotFound, resp.StatusCode)
			require.Empty(t, body)
			require.Empty(t, resp.Header.Get("Location"))
			require.Empty(t, resp.Header.Get("Content-Type"), "no error text, so no text type")
		})
	}
}

func TestChallengeHandler_KnownToken_Served(t *testing.T) {
	base, cacheDir := challengeServer(t)
	const token, keyAuth = "tok-123_ABC", "tok-123_ABC.thumbprint"
	// autocert.DirCache stores HTTP-01 tokens as "<token>+http-01".
	writeFileMode(t, filepath.Join(cacheDir, token+"+http-01"), []byte(keyAuth), 0o600)

	resp, body := doChallenge(t, "GET", base+"/.well-known/acme-challenge/"+token, testDomain)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, keyAuth, string(body))
	require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))

	resp, body = doChallenge(t, "HEAD", base+"/.well-known/acme-challenge/"+token, testDomain)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Empty(t, body)

	// Only GET and HEAD: the CA never posts to the challenge URL.
	for _, method := range []string{"POST", "PUT", "DELETE", "OPTIONS"} {
		resp, body = doChallenge(t, method, base+"/.well-known/acme-challenge/"+token, testDomain)
		require.Equal(t, http.StatusNotFound, resp.StatusCode, method)
		require.Empty(t, body, method)
	}

	// The same token for a host outside the whitelist is not served.
	resp, body = doChallenge(t, "GET", base+"/.well-known/acme-challenge/"+token, "evil.example.test")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Empty(t, body)
}

func TestChallengeHandler_OversizedToken_404(t *testing.T) {
	base, cacheDir := challengeServer(t)
	writeFileMode(t, filepath.Join(cacheDir, "big+http-01"), []byte(strings.Repeat("x", maxChallengeBody+1)), 0o600)
	resp, body := doChallenge(t, "GET", base+"/.well-known/acme-challenge/big", testDomain)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Empty(t, body)
}

// Swapped flags are named as such, before the (world-readable) chain in
// the key's place draws a chmod complaint.
func TestLoadKeyPair_Swapped_SaysSo(t *testing.T) {
	certFile, keyFile := writePair(t, 0o600)
	_, err := LoadKeyPair(keyFile, certFile) // the cert is 0644
	require.ErrorIs(t, err, ErrKeyPairSwapped)
	require.NotErrorIs(t, err, ErrKeyFileInsecure)
	require.Contains(t, err.Error(), keyFile)
	require.Contains(t, err.Error(), certFile)
	require.NotContains(t, err.Error(), "chmod")

	// Two keys, or two certificates, are not "swapped".
	_, err = LoadKeyPair(keyFile, keyFile)
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrKeyPairSwapped)
}

func TestStaticCert_Reload_SwapsOnlyAGoodPair(t *testing.T) {
	certFile, keyFile := writePair(t, 0o600)
	sc, err := NewStaticCert(certFile, keyFile)
	require.NoError(t, err)
	first := sc.Leaf()

	// A pair that does not match: refused, the old one keeps serving.
	otherCert, otherKey := newPairPEM(t)
	writeFileMode(t, keyFile, otherKey, 0o600)
	require.Error(t, sc.Reload())
	require.Same(t, first, sc.Leaf())

	// A good new pair is served by the next handshake.
	writeFileMode(t, certFile, otherCert, 0o644)
	require.NoError(t, sc.Reload())
	require.NotSame(t, first, sc.Leaf())
	got, err := sc.TLSConfig().GetCertificate(&tls.ClientHelloInfo{})
	require.NoError(t, err)
	require.Equal(t, sc.Leaf().Raw, got.Certificate[0])
}

// newPairPEM is a fresh self-signed ECDSA pair for testDomain.
func newPairPEM(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: testDomain},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{testDomain},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	require.NoError(t, err)
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
}
