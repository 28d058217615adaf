package server

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/attacks"
	"github.com/pyrycode/relay/internal/acmetest"
)

// TestAutocert_AttackTLSReportsWhatWasNegotiated runs `relay attack`'s TLS
// scenarios against a relay in autocert mode (a real Pebble), as an
// operator would after a deploy. Autocert holds an ECDSA and an RSA
// certificate and serves the RSA one to a hello with no ECDHE-ECDSA suite
// (a TLS 1.3-only hello is one): ATK-TLS-VERSION must report each
// handshake's own suite and certificate key, never an ECDSA suite with an
// RSA certificate, and ATK-TLS-SUITES must see that RSA-only offers reach
// an RSA certificate, so their refusal is the relay's policy, not implied
// by the key type.
func TestAutocert_AttackTLSReportsWhatWasNegotiated(t *testing.T) {
	pebble := acmetest.Start(t)
	dir := t.TempDir()
	r := startTLSRelay(t, pebble.RootPool(),
		"--domain", relayDomain,
		"--https-listen", "127.0.0.1:0",
		"--http-listen", "127.0.0.1:0",
		"--cert-cache", filepath.Join(dir, "certs"),
		"--acme-directory", pebble.DirectoryURL,
		"--acme-ca", pebble.WriteCAFile(dir),
	)
	ca := filepath.Join(dir, "roots.pem")
	require.NoError(t, os.WriteFile(ca, pebble.RootsPEM, 0o600))

	var out, errOut bytes.Buffer
	code := attacks.Main([]string{"--target", "https://" + r.public, "--server-name", relayDomain, "--ca", ca,
		"--only", "ATK-TLS-VERSION,ATK-TLS-SUITES", "--json"}, &out, &errOut)
	require.Equal(t, attacks.ExitPassed, code, "stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	var reps []struct{ ID, Verdict, Evidence string }
	require.NoError(t, json.Unmarshal(out.Bytes(), &reps))
	require.Len(t, reps, 2)
	ev := map[string]string{}
	for _, rep := range reps {
		require.Equal(t, "PASS", rep.Verdict, "%s: %s", rep.ID, rep.Evidence)
		ev[rep.ID] = rep.Evidence
		t.Logf("%s: %s", rep.ID, rep.Evidence)
	}
	version := ev["ATK-TLS-VERSION"]
	require.Regexp(t, `TLS 1\.2 \(TLS_ECDHE_ECDSA_WITH_[A-Z0-9_]+, ECDSA P-256 certificate\)`, version)
	require.Regexp(t, `TLS 1\.3 \(TLS_[A-Z0-9_]+, RSA \d+ certificate\)`, version)
	require.NotRegexp(t, `ECDSA_WITH_[A-Z0-9_]+, RSA`, version, "an ECDSA suite reported with an RSA certificate")
	require.NotRegexp(t, regexp.QuoteMeta("completed with a verified"), version)

	suites := ev["ATK-TLS-SUITES"]
	require.Contains(t, suites, "with ECDHE-RSA only")
	require.Regexp(t, `refused by policy: [^;]*CBC[^;]*; static RSA key exchange[^;]*; 3DES`, suites)
	require.NotContains(t, suites, "rules these out by key type alone")
}
