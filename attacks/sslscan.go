package attacks

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"time"
)

// sslscan cross-check: a second opinion on the TLS policy from a scanner
// built on OpenSSL, independent of the Go TLS stack that both the relay
// and this package's probes use. A bug shared by Go's client and server
// (say, both silently skipping a version) would fool the probes but not
// sslscan.

// sslscanTimeout bounds the whole scan (about 20-30 sequential handshakes).
const sslscanTimeout = 90 * time.Second

// sslscanArgs trims the scan to protocols and suites: no heartbleed,
// renegotiation, compression, fallback or group probing, so it stays
// within the scenario's stated load.
var sslscanArgs = []string{"--no-colour", "--xml=-", "--no-heartbleed", "--no-renegotiation",
	"--no-compression", "--no-fallback", "--no-groups"}

// sslscanXML is the part of `sslscan --xml=-` (2.x) the cross-check reads:
//
//	<document version="2.0.7">
//	  <ssltest host=... port=...>
//	    <protocol type="tls" version="1.0" enabled="0" />
//	    <cipher status="accepted" sslversion="TLSv1.2" cipher="ECDHE-RSA-AES128-GCM-SHA256" id="0xC02F" ... />
type sslscanXML struct {
	Version string `xml:"version,attr"`
	Tests   []struct {
		Protocols []struct {
			Type    string `xml:"type,attr"`
			Version string `xml:"version,attr"`
			Enabled string `xml:"enabled,attr"`
		} `xml:"protocol"`
		Ciphers []struct {
			Status     string `xml:"status,attr"`
			SSLVersion string `xml:"sslversion,attr"`
			Cipher     string `xml:"cipher,attr"`
		} `xml:"cipher"`
	} `xml:"ssltest"`
}

// sslscanCrossCheck runs sslscan against t when it is on PATH. ran is
// false when it is not (the caller says so in its evidence); err is a
// policy violation sslscan saw, or sslscan failing to scan at all.
func sslscanCrossCheck(ctx context.Context, t *Target) (summary string, ran bool, err error) {
	bin, lerr := exec.LookPath("sslscan")
	if lerr != nil {
		return "sslscan not on PATH: OpenSSL cross-check skipped", false, nil
	}
	sctx, cancel := context.WithTimeout(ctx, sslscanTimeout)
	defer cancel()
	args := append(append([]string(nil), sslscanArgs...), "--sni-name="+t.tlsName(), t.hostPort())
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(sctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if rerr := cmd.Run(); rerr != nil {
		return "", true, fmt.Errorf("sslscan failed: %v: %s", rerr, tail(strings.TrimSpace(stderr.String()), 200))
	}
	summary, err = judgeSSLScan(stdout.Bytes())
	return summary, true, err
}

// judgeSSLScan checks sslscan's XML against the relay's policy: SSLv2,
// SSLv3, TLS 1.0 and 1.1 disabled; TLS 1.2 enabled (proof the scan reached
// the relay at all) with only ECDHE+AEAD suites accepted.
func judgeSSLScan(out []byte) (string, error) {
	var doc sslscanXML
	if err := xml.Unmarshal(out, &doc); err != nil {
		return "", fmt.Errorf("sslscan output is not its XML report: %v", err)
	}
	if len(doc.Tests) != 1 {
		return "", fmt.Errorf("sslscan reported %d tests, want 1 (could it connect?)", len(doc.Tests))
	}
	test := doc.Tests[0]
	enabled := map[string]bool{}
	for _, p := range test.Protocols {
		enabled[p.Type+" "+p.Version] = p.Enabled == "1"
	}
	for _, legacy := range []string{"ssl 2", "ssl 3", "tls 1.0", "tls 1.1"} {
		if enabled[legacy] {
			return "", fmt.Errorf("sslscan: %s is enabled", legacy)
		}
	}
	if !enabled["tls 1.2"] {
		return "", fmt.Errorf("sslscan did not see TLS 1.2 enabled: the scan did not reach the relay, or TLS 1.2 is off")
	}
	var tls12 []string
	for _, c := range test.Ciphers {
		if c.Status != "accepted" && c.Status != "preferred" {
			continue
		}
		switch c.SSLVersion {
		case "TLSv1.3":
			continue // fixed AEAD suites, not configurable
		case "TLSv1.2":
			if !forwardSecretAEAD(c.Cipher) {
				return "", fmt.Errorf("sslscan: TLS 1.2 suite %s accepted (not ECDHE with AES-GCM or ChaCha20-Poly1305)", c.Cipher)
			}
			tls12 = append(tls12, c.Cipher)
		default:
			return "", fmt.Errorf("sslscan: %s suite %s accepted", c.SSLVersion, c.Cipher)
		}
	}
	if len(tls12) == 0 {
		return "", fmt.Errorf("sslscan saw TLS 1.2 enabled but no suite accepted")
	}
	sort.Strings(tls12)
	return fmt.Sprintf("sslscan %s (OpenSSL): SSLv2/SSLv3/TLS 1.0/TLS 1.1 disabled, TLS 1.2 suites only %s",
		doc.Version, strings.Join(tls12, " ")), nil
}

// forwardSecretAEAD reports whether an sslscan (OpenSSL or IANA) suite name
// is ECDHE key exchange with an AEAD cipher.
func forwardSecretAEAD(name string) bool {
	n := strings.ToUpper(strings.ReplaceAll(name, "_", "-"))
	ecdhe := strings.HasPrefix(n, "ECDHE-") || strings.HasPrefix(n, "TLS-ECDHE-")
	aead := strings.Contains(n, "-GCM-") || strings.Contains(n, "CHACHA20-POLY1305")
	return ecdhe && aead
}
