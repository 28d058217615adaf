package natsauth

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
)

// TestWriteFiles: what relay-nats-auth writes is 0600, never overwritten,
// read by nats-server's own parser as an operator with both accounts, and
// each instance's creds carry that instance's permissions.
func TestWriteFiles(t *testing.T) {
	is, err := New("t")
	require.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "auth")
	require.NoError(t, is.WriteFiles(dir, "relay", []string{"relay-a", "relay-b"}))
	for _, f := range []string{"nats-auth.conf", "relay-a.creds", "relay-b.creds"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), f)
	}
	require.Error(t, is.WriteFiles(dir, "relay", []string{"relay-c"}), "an existing nats-auth.conf is not overwritten")

	opts, err := server.ProcessConfigFile(filepath.Join(dir, "nats-auth.conf"))
	require.NoError(t, err)
	require.Len(t, opts.TrustedOperators, 1)
	require.Equal(t, is.sysPub, opts.SystemAccount)

	b, err := os.ReadFile(filepath.Join(dir, "relay-b.creds"))
	require.NoError(t, err)
	tok, err := jwt.ParseDecoratedJWT(b)
	require.NoError(t, err)
	uc, err := jwt.DecodeUserClaims(tok)
	require.NoError(t, err)
	require.Contains(t, uc.Permissions.Pub.Allow, "relay.i.*.*.relay-b")
	require.NotContains(t, uc.Permissions.Pub.Allow, "relay.i.*.*.relay-a")
	require.Equal(t, is.acctPub, uc.Issuer)

	_, err = is.InstanceCreds("relay", "a.b")
	require.Error(t, err, "an id that is not one subject token")
}
