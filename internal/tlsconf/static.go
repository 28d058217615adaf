package tlsconf

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
)

// ErrKeyPairSwapped is returned by LoadKeyPair when the certificate file
// holds a private key and the key file a certificate: the operator swapped
// the two flags. Said as such, instead of a mode complaint about the
// (world-readable) certificate or a PEM parse error.
var ErrKeyPairSwapped = errors.New("tlsconf: certificate and key files are swapped")

// ErrCertFile and ErrKeyFile are wrapped by LoadKeyPair's refusals that
// are about one of the two files (unreadable, not a certificate), so the
// caller can name the flag that gave it; ErrKeyFileInsecure is about the
// key file too. A pair that does not match wraps neither.
var (
	ErrCertFile = errors.New("tlsconf: TLS certificate file")
	ErrKeyFile  = errors.New("tlsconf: TLS key file")
)

// LoadKeyPair reads a static certificate chain and private key: swapped
// files are refused (ErrKeyPairSwapped), then a key file any "other" user
// can access (ErrKeyFileInsecure), then a pair that does not match. The
// returned certificate has Leaf set.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, certErr := os.ReadFile(certFile)
	keyPEM, keyErr := os.ReadFile(keyFile)
	if certErr == nil && keyErr == nil && pemHolds(certPEM, "PRIVATE KEY") && !pemHolds(certPEM, "CERTIFICATE") && pemHolds(keyPEM, "CERTIFICATE") {
		return tls.Certificate{}, fmt.Errorf("%w: %s holds a private key and %s a certificate (--tls-cert takes the chain, --tls-key the key)", ErrKeyPairSwapped, certFile, keyFile)
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%w: %w", ErrKeyFile, err)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		return tls.Certificate{}, fmt.Errorf("%w: %s has mode %#o; want 0600 or 0640 (chmod 600 %s)", ErrKeyFileInsecure, keyFile, perm, keyFile)
	}
	if certErr != nil {
		return tls.Certificate{}, fmt.Errorf("%w: %w", ErrCertFile, certErr)
	}
	if keyErr != nil {
		return tls.Certificate{}, fmt.Errorf("%w: %w", ErrKeyFile, keyErr)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tlsconf: load TLS key pair: %w", err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("%w: parse: %w", ErrCertFile, err)
		}
	}
	return cert, nil
}

// pemHolds reports whether data has a PEM block whose type ends in suffix
// ("PRIVATE KEY" matches RSA, EC and PKCS#8 keys).
func pemHolds(data []byte, suffix string) bool {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false
		}
		if strings.HasSuffix(b.Type, suffix) {
			return true
		}
		if len(bytes.TrimSpace(data)) == 0 {
			return false
		}
	}
}

// StaticCert is an operator-supplied certificate that can be replaced while
// the relay serves: Reload reads the files again and swaps the pair in only
// if it loads, so a bad pair leaves the old one serving. Handshakes after a
// swap get the new pair; established connections are not touched.
type StaticCert struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// NewStaticCert loads the pair once (LoadKeyPair's refusals).
func NewStaticCert(certFile, keyFile string) (*StaticCert, error) {
	s := &StaticCert{certFile: certFile, keyFile: keyFile}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload loads the files again; on error the current pair keeps serving.
func (s *StaticCert) Reload() error {
	c, err := LoadKeyPair(s.certFile, s.keyFile)
	if err != nil {
		return err
	}
	s.cur.Store(&c)
	return nil
}

// Leaf is the serving certificate.
func (s *StaticCert) Leaf() *x509.Certificate { return s.cur.Load().Leaf }

// TLSConfig is ServerTLSConfig serving the current pair.
func (s *StaticCert) TLSConfig() *tls.Config {
	cfg := ServerTLSConfig()
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.cur.Load(), nil }
	return cfg
}
