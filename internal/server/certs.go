package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// certExpirySoon: a static certificate closer than this to its NotAfter is
// warned about at start and on reload. Two weeks is time to get a new one.
const certExpirySoon = 14 * 24 * time.Hour

// acmeErrorLogEvery bounds the certificate-failure log lines: autocert
// retries on every handshake for the domain, and a failing CA would
// otherwise write one line per client.
const acmeErrorLogEvery = 10 * time.Second

// certWarnings is the closed set of CertWarning answers, with what an
// operator reads.
var certWarnings = map[string]string{
	"expired":       "the TLS certificate has expired: clients will refuse it",
	"not_yet_valid": "the TLS certificate is not valid yet: clients will refuse it",
	"expires_soon":  "the TLS certificate expires within 14 days",
	"no_names":      "the TLS certificate names no host: clients that verify the name refuse it, and the Host check is off",
}

// servingStatic records the static pair now serving (how: "loaded" at start,
// "reloaded" on SIGHUP): its names become the Host policy, its NotAfter
// the gauge, and an expired, expiring or nameless certificate is warned
// about.
func (s *Server) servingStatic(how string) {
	leaf := s.static.Leaf()
	s.hosts.set(hostsOf(leaf))
	s.metrics.CertNotAfter.Set(float64(leaf.NotAfter.Unix()))
	s.log.Info("TLS certificate "+how, "event", "cert_"+how, "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	if w := certWarning(leaf, time.Now()); w != "" {
		s.log.Warn(certWarnings[w], "event", "cert_warning", "reason", w, "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
}

// certWarning is tlsconf.CertWarning's answer as a label.
func certWarning(leaf *x509.Certificate, now time.Time) string {
	switch {
	case now.After(leaf.NotAfter):
		return "expired"
	case now.Before(leaf.NotBefore):
		return "not_yet_valid"
	case leaf.NotAfter.Sub(now) < certExpirySoon:
		return "expires_soon"
	case len(leaf.DNSNames)+len(leaf.IPAddresses) == 0:
		return "no_names"
	}
	return ""
}

// ReloadCertificate answers SIGHUP. In static-certificate mode it reads
// --tls-cert/--tls-key again: a pair that does not load is refused with
// one log line and the previous pair keeps serving; open connections are
// untouched either way. Other modes log and ignore it. It never fails the
// process.
func (s *Server) ReloadCertificate() {
	if s.static == nil {
		s.log.Info("SIGHUP ignored: only a static certificate (--tls-cert) is reloaded", "event", "reload_ignored", "mode", string(s.cfg.Mode))
		return
	}
	if err := s.static.Reload(); err != nil {
		s.metrics.CertReloads.WithLabelValues("refused").Inc()
		s.log.Error("TLS certificate reload refused; the previous certificate keeps serving", "event", "cert_reload_refused", "error", strings.ReplaceAll(err.Error(), "tlsconf: ", ""))
		return
	}
	s.metrics.CertReloads.WithLabelValues("ok").Inc()
	s.servingStatic("reloaded")
}

// observeAutocert wraps m's cache so that every certificate autocert
// stores (first issuance, and each renewal, which autocert runs in the
// background) is logged with its expiry and sets the NotAfter gauge.
func (s *Server) observeAutocert(m *autocert.Manager) {
	m.Cache = &observedCache{Cache: m.Cache, domain: strings.ToLower(s.cfg.Domain), s: s}
}

type observedCache struct {
	autocert.Cache
	domain string
	s      *Server
	seen   atomic.Bool // a certificate was stored or found in the cache
}

func (c *observedCache) Get(ctx context.Context, key string) ([]byte, error) {
	data, err := c.Cache.Get(ctx, key)
	if err == nil && key == c.domain {
		if leaf := leafOf(data); leaf != nil {
			c.seen.Store(true)
			c.s.metrics.CertNotAfter.Set(float64(leaf.NotAfter.Unix()))
		}
	}
	return data, err
}

func (c *observedCache) Put(ctx context.Context, key string, data []byte) error {
	err := c.Cache.Put(ctx, key, data)
	if key != c.domain { // the account key, or the RSA fallback certificate
		return err
	}
	leaf := leafOf(data)
	if err != nil || leaf == nil {
		c.s.metrics.ACMEErrors.Inc()
		c.s.log.Error("TLS certificate obtained but not cached; it is lost at restart", "event", "cert_cache_failed", "domain", c.domain)
		return err
	}
	how := "obtained"
	if c.seen.Swap(true) {
		how = "renewed"
	}
	c.s.metrics.CertNotAfter.Set(float64(leaf.NotAfter.Unix()))
	c.s.log.Info("TLS certificate "+how, "event", "cert_"+how, "domain", c.domain, "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// leafOf is the first certificate in autocert's cache entry (private key
// PEM, then the chain).
func leafOf(data []byte) *x509.Certificate {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil
		}
		if b.Type == "CERTIFICATE" {
			leaf, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil
			}
			return leaf
		}
	}
}

// autocertGetCertificate counts and logs (at most once per
// acmeErrorLogEvery, with the number of failures in between) the failures
// to get a certificate for the configured domain, with their cause. The
// cause is the CA's or the network's answer: failures for other names
// (autocert's host policy quoting the client's SNI) are neither logged
// nor counted here; net/http counts them as handshake errors.
func (s *Server) autocertGetCertificate(get func(*tls.ClientHelloInfo) (*tls.Certificate, error)) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	domain := strings.ToLower(s.cfg.Domain)
	var last atomic.Int64 // unix nanos of the last failure line
	var suppressed atomic.Int64
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		ours := strings.ToLower(strings.TrimSuffix(hello.ServerName, ".")) == domain
		if !ours {
			// No certificate, and no error: crypto/tls then answers the
			// unrecognized_name alert (RFC 6066 §3) that names the problem;
			// an error from here would be sent as internal_error. autocert
			// would refuse the name anyway (its HostPolicy): it is not asked.
			return nil, nil
		}
		c, err := get(hello)
		challenge := len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto
		switch {
		case err == nil && c != nil && c.Leaf != nil && !challenge:
			s.metrics.CertNotAfter.Set(float64(c.Leaf.NotAfter.Unix()))
		case err != nil && !challenge:
			s.metrics.ACMEErrors.Inc()
			now := time.Now().UnixNano()
			if l := last.Load(); now-l >= int64(acmeErrorLogEvery) && last.CompareAndSwap(l, now) {
				s.log.Error("TLS certificate for the domain could not be obtained", "event", "cert_failed", "domain", domain,
					"error", err.Error(), "count", suppressed.Swap(0))
			} else {
				suppressed.Add(1)
			}
		}
		return c, err
	}
}
