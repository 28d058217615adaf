// Package acmetest runs a real Pebble ACME server (Let's Encrypt's test CA)
// in-process on loopback, so autocert tests issue real certificates without
// leaving the machine.
package acmetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
)

// Server is a running Pebble instance, stopped by the test's Cleanup (Start)
// or by Close (Run).
type Server struct {
	// DirectoryURL is the ACME directory, https://127.0.0.1:PORT/dir.
	DirectoryURL string

	// HTTPClient trusts Pebble's own (WFE) TLS certificate; give it to
	// autocert as the ACME client's HTTP client.
	HTTPClient *http.Client

	// WFECertPEM is the self-signed certificate Pebble's ACME listener
	// serves (valid for 127.0.0.1, ::1 and localhost).
	WFECertPEM []byte

	// RootsPEM is the root that Pebble's issued certificates chain to.
	// Clients of a relay using this CA verify against it.
	RootsPEM []byte

	rootPool *x509.CertPool
	close    func() error
}

// RootPool returns a new pool holding RootsPEM.
func (s *Server) RootPool() *x509.CertPool {
	return s.rootPool.Clone()
}

// WriteCAFile writes WFECertPEM to dir/pebble-wfe-ca.pem (mode 0600) and
// returns the path, for a subprocess relay started with --acme-ca FILE.
// It panics on a write error (test helper; dir is normally t.TempDir()).
func (s *Server) WriteCAFile(dir string) string {
	p := filepath.Join(dir, "pebble-wfe-ca.pem")
	if err := os.WriteFile(p, s.WFECertPEM, 0o600); err != nil {
		panic("acmetest: write CA file: " + err.Error())
	}
	return p
}

// envMu serialises the set-construct-restore of Pebble's environment
// variables, which va.New and wfe.New read once, so Start works from
// parallel tests (t.Setenv would forbid t.Parallel).
var envMu sync.Mutex

// pebbleEnv makes Pebble fast and deterministic: no validation requests
// (the test domain does not resolve), no random validation sleeps, no
// deliberately rejected nonces.
var pebbleEnv = map[string]string{
	"PEBBLE_VA_ALWAYS_VALID": "1",
	"PEBBLE_VA_NOSLEEP":      "1",
	"PEBBLE_WFE_NONCEREJECT": "0",
}

// Option changes how Start configures Pebble.
type Option func(*ca.Profile)

// WithCertValidity makes Pebble issue certificates valid for d (whole
// seconds, at least 2) instead of its default 90 days. autocert renews a
// certificate once two thirds of its lifetime have passed (when
// Manager.RenewBefore is zero), so a few seconds' validity drives real
// background renewals within a test, without touching the manager.
func WithCertValidity(d time.Duration) Option {
	return func(p *ca.Profile) {
		// Pebble's NotAfter is NotBefore + (ValidityPeriod - 1) seconds.
		p.ValidityPeriod = uint64(max(d/time.Second, 1)) + 1
	}
}

// Start runs Pebble's CA, VA and WFE on 127.0.0.1:0 with an ECDSA CA and
// returns once the listener accepts connections; the test's Cleanup stops
// it. Pebble's logs go to stderr only when ACMETEST_VERBOSE=1 (its
// goroutines outlive the test otherwise).
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s, err := Run("127.0.0.1:0", opts...)
	if err != nil {
		t.Fatalf("acmetest: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("acmetest: serve: %v", err)
		}
	})
	return s
}

// Run is Start outside a test (cmd/relay-pebble): Pebble's ACME listener
// on addr (a loopback address); Close stops it.
func Run(addr string, opts ...Option) (*Server, error) {
	var logOut io.Writer = io.Discard
	if os.Getenv("ACMETEST_VERBOSE") == "1" {
		logOut = os.Stderr
	}
	logger := log.New(logOut, "pebble ", log.LstdFlags)

	wfeCert, wfeCertPEM, err := selfSigned()
	if err != nil {
		return nil, fmt.Errorf("WFE certificate: %w", err)
	}

	store := db.NewMemoryStore()
	profile := ca.Profile{Description: "default"}
	for _, o := range opts {
		o(&profile)
	}
	profiles := map[string]ca.Profile{"default": profile}
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, profiles)

	envMu.Lock()
	restore := setEnv(pebbleEnv)
	// The ports are unused: PEBBLE_VA_ALWAYS_VALID skips validation.
	validator := va.New(logger, 5002, 5001, false, "", store)
	frontEnd := wfe.New(logger, store, validator, authority,
		[]string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	restore()
	envMu.Unlock()

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           frontEnd.Handler(),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{wfeCert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	done := make(chan error, 1)
	go func() {
		err := srv.ServeTLS(ln, "", "")
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()

	wfePool := x509.NewCertPool()
	wfePool.AppendCertsFromPEM(wfeCertPEM)
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: wfePool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
	}

	root := authority.GetRootCert(0)
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.DER})
	rootPool := x509.NewCertPool()
	rootPool.AddCert(root.Cert)

	return &Server{
		DirectoryURL: "https://" + ln.Addr().String() + wfe.DirectoryPath,
		HTTPClient:   &http.Client{Transport: transport, Timeout: 30 * time.Second},
		WFECertPEM:   wfeCertPEM,
		RootsPEM:     rootPEM,
		rootPool:     rootPool,
		close: func() error {
			transport.CloseIdleConnections()
			_ = srv.Close()
			return <-done
		},
	}, nil
}

// Close stops the ACME listener and returns its serve error, if any.
func (s *Server) Close() error { return s.close() }

// setEnv sets vars and returns a func restoring the previous values.
func setEnv(vars map[string]string) (restore func()) {
	type prev struct {
		val string
		ok  bool
	}
	saved := make(map[string]prev, len(vars))
	for k, v := range vars {
		old, ok := os.LookupEnv(k)
		saved[k] = prev{old, ok}
		_ = os.Setenv(k, v)
	}
	return func() {
		for k, p := range saved {
			if p.ok {
				_ = os.Setenv(k, p.val)
			} else {
				_ = os.Unsetenv(k)
			}
		}
	}
}

// selfSigned makes the P-256 certificate Pebble's ACME listener serves.
func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "acmetest pebble WFE"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, certPEM, nil
}
