//go:build unix

package fileowner

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestForeign(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(p, nil, 0o600))
	fi, err := os.Lstat(p)
	require.NoError(t, err)
	_, _, foreign := Foreign(fi)
	require.False(t, foreign, "a file this process created is its own")
	if os.Geteuid() != 0 {
		t.Skip("chown to another uid needs root; the attack suite's ATK-FCM-CREDENTIALS covers it when run as root")
	}
	require.NoError(t, os.Chown(p, 65534, -1))
	fi, err = os.Lstat(p)
	require.NoError(t, err)
	owner, euid, foreign := Foreign(fi)
	require.True(t, foreign)
	require.Equal(t, uint32(65534), owner)
	require.Equal(t, 0, euid)
	require.Equal(t, uint32(65534), fi.Sys().(*syscall.Stat_t).Uid)
}
