package config

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestClusterCreds_LooseFileRefused: --cluster-nats-creds follows the FCM
// credentials' rule (internal/fileowner): a group or world bit, a symlink
// or a non-regular file refuses the start with one line naming the file and
// the fix; 0600 and 0400 pass.
func TestClusterCreds_LooseFileRefused(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte("creds"), 0o600))
		require.NoError(t, os.Chmod(p, mode))
		return p
	}
	// A symlink is followed (a Kubernetes secret mount): to a loose file it
	// stays refused, to a tight one it passes (below).
	link := filepath.Join(dir, "link.creds")
	require.NoError(t, os.Symlink(write("target.creds", 0o644), link))
	parse := func(creds string) error {
		_, err := Parse([]string{"--insecure-listen", "127.0.0.1:0", "--cluster-nats", "nats://127.0.0.1:4222", "--cluster-nats-creds", creds}, nil, io.Discard)
		return err
	}
	for name, tc := range map[string]struct {
		path string
		want string
	}{
		"0644":      {write("a.creds", 0o644), "has mode 0644; want 0600 or 0400"},
		"0640":      {write("b.creds", 0o640), "has mode 0640"},
		"0604":      {write("c.creds", 0o604), "has mode 0604"},
		"symlink":   {link, "readable by others"},
		"directory": {dir, "is not a regular file"},
	} {
		t.Run(name, func(t *testing.T) {
			err := parse(tc.path)
			require.Error(t, err)
			require.True(t, errors.Is(err, ErrInvalidConfig), "%v", err)
			require.Contains(t, err.Error(), "--cluster-nats-creds / RELAY_CLUSTER_NATS_CREDS: ")
			require.Contains(t, err.Error(), tc.want)
		})
	}
	require.NoError(t, parse(write("ok.creds", 0o600)))
	good := filepath.Join(dir, "good-link.creds")
	require.NoError(t, os.Symlink(write("good-target.creds", 0o400), good))
	require.NoError(t, parse(good), "a symlink to a 0400 file in the relay's own directory")
	require.NoError(t, parse(write("ro.creds", 0o400)))
	if os.Geteuid() == 0 {
		// Another uid's file, however tight its mode (needs root to chown).
		p := write("foreign.creds", 0o600)
		require.NoError(t, os.Chown(p, 65534, -1))
		err := parse(p)
		require.Error(t, err)
		require.Contains(t, err.Error(), "is owned by uid 65534, not the relay's uid 0")
	}
}
