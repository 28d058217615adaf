package attacks

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
)

// Weak TLS 1.2 suites: a TLS 1.2 client offering only CBC suites, only
// static-RSA key exchange, or only 3DES gets an alert before any
// ServerHello; a client offering ECDHE with AES-GCM completes. Each weak
// offer carries both the RSA and the ECDSA variant where one exists, so
// whatever key the relay's certificate has, a relay that allowed the suite
// class would find one to pick.
//
// Static RSA key exchange and 3DES exist only for RSA certificates: against
// a relay that serves no RSA certificate their refusal is implied by the
// key type, and the evidence says so. Whether it serves one is asked, not
// read off the first handshake: in autocert mode the relay holds an ECDSA
// and an RSA certificate and picks by the ClientHello (ECDSA when an
// ECDHE-ECDSA suite is offered), so a second control offers ECDHE-RSA
// only. The local suite also serves an RSA-only certificate, so the
// policy itself is what refuses them.
func tlsSuites() Scenario {
	return Scenario{
		ID:      "ATK-TLS-SUITES",
		Title:   "TLS 1.2 offers of only CBC, static-RSA or 3DES suites are refused; ECDHE-GCM completes",
		Threats: []string{"TM-TLS-2"},
		Mode:    RemoteSafe,
		TLSOnly: true,
		Bounds:  "5 sequential TLS handshakes",
		BehindProxy: ProxyNote{TestsProxy, "the proxy terminates TLS, so the suites refused are its configuration " +
			"(nginx: ssl_ciphers, taken from the default server of the address, which must list the relay's internal/tlsconf suites)"},
		Run: runTLSSuites,
	}
}

type suiteOffer struct {
	name   string
	suites []uint16
	rsaKey bool // every suite needs an RSA certificate
}

var weakOffers = []suiteOffer{
	{"CBC (ECDHE-RSA/ECDSA AES128/256-CBC-SHA, -SHA256)", []uint16{
		tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
		tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
		tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,
	}, false},
	{"static RSA key exchange (RSA-AES128/256-GCM)", []uint16{
		tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_256_GCM_SHA384,
	}, true},
	{"3DES (ECDHE-RSA and RSA 3DES-EDE-CBC-SHA)", []uint16{
		tls.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA, tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA,
	}, true},
}

func runTLSSuites(ctx context.Context, t *Target) Result {
	if skip := needHTTPS(t); skip != nil {
		return *skip
	}
	// Positive control first: it also tells which key the certificate has.
	good := t.tlsConfig()
	good.MaxVersion = tls.VersionTLS12
	good.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}
	o, err := t.probeTLS(ctx, good)
	if err != nil {
		return Failf("dial %s: %v", t.hostPort(), err)
	}
	if !o.Completed || o.Version != tls.VersionTLS12 {
		return Failf("TLS 1.2 ECDHE-AES128-GCM handshake (verifying %q): %s", t.tlsName(), o)
	}
	control := fmt.Sprintf("ECDHE-GCM completed (%s, %s certificate)", tls.CipherSuiteName(o.Suite), o.LeafKey)
	// Does the relay serve an RSA certificate to a client that takes only
	// RSA? Then the RSA-only weak offers are refused by its policy.
	rsaOnly := t.tlsConfig()
	rsaOnly.MaxVersion = tls.VersionTLS12
	rsaOnly.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}
	ro, err := t.probeTLS(ctx, rsaOnly)
	if err != nil {
		return Failf("dial %s: %v", t.hostPort(), err)
	}
	key := o.LeafKey
	rsaServed := ro.Completed && strings.HasPrefix(ro.LeafKey, "RSA")
	if rsaServed && ro.LeafKey != o.LeafKey {
		control += fmt.Sprintf(", and with ECDHE-RSA only (%s, %s certificate)", tls.CipherSuiteName(ro.Suite), ro.LeafKey)
		key = o.LeafKey + " and " + ro.LeafKey
	}

	var refused, implied []string
	for _, w := range weakOffers {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, CipherSuites: w.suites,
			ServerName: t.tlsName(), InsecureSkipVerify: true}
		o, err := t.probeTLS(ctx, cfg)
		if err != nil {
			return Failf("dial %s: %v", t.hostPort(), err)
		}
		if !o.refusedWith(-1) {
			return Failf("TLS 1.2 offer of only %s: %s, want an alert before any ServerHello", w.name, o)
		}
		entry := fmt.Sprintf("%s: %s", w.name, alertName(o.Alert))
		if w.rsaKey && !rsaServed {
			implied = append(implied, entry)
			continue
		}
		refused = append(refused, entry)
	}
	ev := fmt.Sprintf("refused by policy: %s; %s", strings.Join(refused, "; "), control)
	if len(implied) > 0 {
		ev += fmt.Sprintf("; also refused, though the %s certificate rules these out by key type alone: %s", key, strings.Join(implied, "; "))
	}
	return Passf("%s", ev)
}
