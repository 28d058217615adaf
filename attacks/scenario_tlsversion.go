package attacks

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
)

// TLS version floor: ClientHellos capped at SSL 3.0, TLS 1.0 and TLS 1.1
// are answered with a protocol_version alert before any ServerHello, while
// TLS 1.2 and 1.3 handshakes complete with a verified certificate. The
// alert must be protocol_version: a relay whose floor was lowered but whose
// TLS 1.2-only suites happen to leave nothing to negotiate answers
// handshake_failure instead, and that is a policy that holds by accident.
// When sslscan is installed it repeats the check from OpenSSL's side.
//
// Go 1.27 removed the tls10server GODEBUG, so a Go server refuses TLS 1.0
// and 1.1 unless its MinVersion is lowered explicitly; what this scenario
// catches is such a lowering (the relay pins MinVersion to TLS 1.2).
func tlsVersion() Scenario {
	return Scenario{
		ID:      "ATK-TLS-VERSION",
		Title:   "SSLv3, TLS 1.0 and TLS 1.1 ClientHellos get protocol_version; TLS 1.2 and 1.3 complete",
		Threats: []string{"TM-TLS-1"},
		Mode:    RemoteSafe,
		TLSOnly: true,
		Bounds:  "5 sequential TLS handshakes; with sslscan installed about 30 more, sequential",
		BehindProxy: ProxyNote{TestsProxy, "the proxy terminates TLS, so the versions refused are its configuration (nginx: ssl_protocols, " +
			"which it takes from the default server of the address); an OpenSSL-based proxy answers an SSL 3.0 ClientHello with " +
			"handshake_failure, as SSL 3.0 has no protocol_version alert (RFC 6101), and this profile accepts that answer for SSL 3.0 only"},
		Run: runTLSVersion,
	}
}

// legacySuites are what a TLS 1.0/1.1 client offers: AES-CBC with ECDHE
// (RSA and ECDSA certificates) and RSA key exchange, so a relay that let
// the version through would find a suite to pick.
var legacySuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
	tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_256_CBC_SHA,
}

func runTLSVersion(ctx context.Context, t *Target) Result {
	if skip := needHTTPS(t); skip != nil {
		return *skip
	}
	where := "the target"
	var seen []string

	o, err := t.probeSSLv3(ctx)
	if err != nil {
		return Failf("dial %s: %v", t.hostPort(), err)
	}
	switch {
	case o.refusedWith(alertProtocolVersion):
		seen = append(seen, "SSLv3")
	case t.Profile == BehindProxy && o.refusedWith(alertHandshakeFailure):
		// OpenSSL downgrades protocol_version to handshake_failure for an
		// SSL 3.0 peer (ssl3_send_alert): SSL 3.0 has no such alert. Go has
		// no SSL 3.0 at all and always answers protocol_version.
		seen = append(seen, "SSLv3 (handshake_failure: SSL 3.0 has no protocol_version alert)")
	default:
		return Failf("SSL 3.0 ClientHello: %s, want a protocol_version alert", o)
	}

	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		// The certificate is not verified here: were the handshake to get
		// that far, the negotiated version is the finding.
		cfg := &tls.Config{MinVersion: v, MaxVersion: v, CipherSuites: legacySuites,
			ServerName: t.tlsName(), InsecureSkipVerify: true}
		o, err := t.probeTLS(ctx, cfg)
		if err != nil {
			return Failf("dial %s: %v", t.hostPort(), err)
		}
		if !o.refusedWith(alertProtocolVersion) {
			return Failf("%s ClientHello: %s, want a protocol_version alert before any ServerHello", tls.VersionName(v), o)
		}
		seen = append(seen, tls.VersionName(v))
	}

	// Each completed handshake is reported with what it negotiated: in
	// autocert mode the relay holds an ECDSA and an RSA certificate and
	// serves the RSA one to a hello offering no ECDHE-ECDSA suite, which a
	// TLS 1.3-only hello is, so one key type cannot stand for both.
	var ok []string
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		cfg := t.tlsConfig()
		cfg.MinVersion, cfg.MaxVersion = v, v
		o, err := t.probeTLS(ctx, cfg)
		if err != nil {
			return Failf("dial %s: %v", t.hostPort(), err)
		}
		if !o.Completed || o.Version != v {
			return Failf("%s handshake (verifying %q): %s", tls.VersionName(v), t.tlsName(), o)
		}
		ok = append(ok, fmt.Sprintf("%s (%s, %s certificate)", tls.VersionName(v), tls.CipherSuiteName(o.Suite), o.LeafKey))
	}

	scan, _, err := sslscanCrossCheck(ctx, t)
	if err != nil {
		return Failf("Go probes passed but %v", err)
	}
	return Passf("%s: %s refused with protocol_version before any ServerHello; %s completed, each certificate verified for %q; %s",
		where, strings.Join(seen, ", "), strings.Join(ok, " and "), t.tlsName(), scan)
}
