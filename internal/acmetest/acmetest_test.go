package acmetest

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestStart_DirectoryServedOverTrustedTLS(t *testing.T) {
	s := Start(t)
	require.True(t, strings.HasPrefix(s.DirectoryURL, "https://127.0.0.1:"), s.DirectoryURL)

	resp, err := s.HTTPClient.Get(s.DirectoryURL)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var dir map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&dir))
	for _, k := range []string{"newAccount", "newNonce", "newOrder"} {
		require.Contains(t, dir, k)
	}

	// A client without the WFE certificate does not trust Pebble.
	_, err = (&http.Client{}).Get(s.DirectoryURL)
	var uae x509.UnknownAuthorityError
	require.ErrorAs(t, err, &uae)
}

func TestStart_RootsPEMIsIssuanceCA(t *testing.T) {
	s := Start(t)
	block, rest := pem.Decode(s.RootsPEM)
	require.NotNil(t, block)
	require.Empty(t, rest)
	root, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	require.True(t, root.IsCA)
	require.Contains(t, root.Subject.CommonName, "Pebble Root CA")
	require.True(t, s.RootPool().Equal(func() *x509.CertPool { p := x509.NewCertPool(); p.AddCert(root); return p }()))
	// The root is not the WFE certificate.
	require.NotEqual(t, s.WFECertPEM, s.RootsPEM)
}

func TestWriteCAFile_WritesWFECert(t *testing.T) {
	s := Start(t)
	p := s.WriteCAFile(t.TempDir())
	require.Equal(t, "pebble-wfe-ca.pem", filepath.Base(p))
	got, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, s.WFECertPEM, got)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(got))
}

func TestStart_PebbleEnvRestored(t *testing.T) {
	t.Setenv("PEBBLE_VA_NOSLEEP", "sentinel")
	for i := 0; i < 3; i++ {
		s := Start(t)
		resp, err := s.HTTPClient.Get(s.DirectoryURL)
		require.NoError(t, err)
		resp.Body.Close()
	}
	require.Equal(t, "sentinel", os.Getenv("PEBBLE_VA_NOSLEEP"))
	_, set := os.LookupEnv("PEBBLE_VA_ALWAYS_VALID")
	require.False(t, set)
}
