package server

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"

	"github.com/pyrycode/relay/internal/config"
	"github.com/pyrycode/relay/internal/tlsconf"
)

// hostPolicy is the set of Host values the public listener answers in TLS
// modes; anything else gets 421 (misdirected request) with an empty body.
// nil accepts every Host (insecure mode: a proxy in front owns the names).
type hostPolicy map[string]bool

// hostGate holds the current hostPolicy: a reloaded static certificate
// brings its own names.
type hostGate struct{ p atomic.Pointer[hostPolicy] }

func (g *hostGate) set(hp hostPolicy) { g.p.Store(&hp) }

// reasonHostMismatch is the refusal reason (log line, and a label of
// relay_requests_rejected_total) of a request answered 421.
const reasonHostMismatch = "host_mismatch"

// wrap answers 421 to a Host off the policy and calls refused for it (the
// Host itself is client text and is never logged).
func (g *hostGate) wrap(h http.Handler, refused func(*http.Request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := g.p.Load()
		if p == nil || *p == nil {
			h.ServeHTTP(w, r)
			return
		}
		if !(*p)[hostName(r.Host)] {
			emptyStatus(w, http.StatusMisdirectedRequest)
			refused(r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// hostName is the Host header without its port, in the form hostsOf
// stores: lower case without a trailing dot, an IP address in its
// canonical form and without brackets, whether or not a port follows
// (`[::1]` and `[::1]:443` are the same host).
func hostName(host string) string {
	if hh, _, err := net.SplitHostPort(host); err == nil {
		host = hh
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.String()
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}

// setupTLS prepares the TLS configuration for the chosen mode before any
// port is bound, so a bad key, an insecure certificate cache or an invalid
// domain refuses the start (exit 2).
func (s *Server) setupTLS() error {
	switch s.cfg.Mode {
	case config.ModeStatic:
		sc, err := tlsconf.NewStaticCert(s.cfg.TLSCert, s.cfg.TLSKey)
		if err != nil {
			return nameStatic(s.cfg, err)
		}
		s.static = sc
		s.tlsConfig = sc.TLSConfig()
		s.servingStatic("loaded")
	case config.ModeAutocert:
		opts := autocertOptions(s.cfg)
		if s.cfg.ACMECA != "" {
			client, err := clientTrusting(s.cfg.ACMECA)
			if err != nil {
				return s.cfg.NameFile(err, "acme-ca")
			}
			opts.HTTPClient = client
		}
		m, err := tlsconf.NewAutocertManager(opts)
		if err != nil {
			return nameAutocert(s.cfg, err)
		}
		s.observeAutocert(m)
		s.tlsConfig = tlsconf.AutocertTLSConfig(m)
		s.tlsConfig.GetCertificate = s.autocertGetCertificate(m.GetCertificate)
		s.hosts.set(hostPolicy{strings.ToLower(s.cfg.Domain): true})
		s.acmeHandler = tlsconf.ChallengeHandler(m)
	}
	return nil
}

// hostsOf accepts the certificate's DNS and IP names; a certificate with no
// names (unusual, warned about at start) leaves the Host unchecked.
func hostsOf(leaf *x509.Certificate) hostPolicy {
	if leaf == nil || len(leaf.DNSNames)+len(leaf.IPAddresses) == 0 {
		return nil
	}
	hp := hostPolicy{}
	for _, n := range leaf.DNSNames {
		hp[strings.ToLower(n)] = true
	}
	for _, ip := range leaf.IPAddresses {
		hp[ip.String()] = true
	}
	return hp
}

// clientTrusting returns an HTTP client for the ACME server that trusts the
// system roots plus the CA in file (a test ACME server such as Pebble).
func clientTrusting(file string) (*http.Client, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("ACME CA file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ACME CA file: %s holds no PEM certificate", file)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}, nil
}
