//go:build unix

package fileowner

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// k8sMount lays out a Kubernetes secret volume as kubelet's atomic writer
// does: the volume's root (a 1777 tmpfs), a timestamped directory with the
// file, ..data -> that directory, and name -> ..data/name. It returns the
// path the relay is given and the real file.
func k8sMount(t *testing.T, name string, mode os.FileMode) (link, real string) {
	t.Helper()
	vol := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.Mkdir(vol, 0o700))
	require.NoError(t, os.Chmod(vol, 0o777|os.ModeSticky))
	ts := "..2026_01_02_03_04_05.123456789"
	require.NoError(t, os.Mkdir(filepath.Join(vol, ts), 0o755))
	real = filepath.Join(vol, ts, name)
	require.NoError(t, os.WriteFile(real, []byte("secret"), 0o600))
	require.NoError(t, os.Chmod(real, mode))
	require.NoError(t, os.Symlink(ts, filepath.Join(vol, "..data")))
	link = filepath.Join(vol, name)
	require.NoError(t, os.Symlink(filepath.Join("..data", name), link))
	return link, real
}

func check(path string) error {
	real, err := Resolve(path)
	if err != nil {
		return err
	}
	fi, err := os.Lstat(real)
	if err != nil {
		return err
	}
	return CheckLinked(real, fi)
}

// The Kubernetes chain is followed to its file and accepted at 0400, 0440
// (the pod's fsGroup) and 0600; a new ..data (the secret rotated) is
// followed too.
func TestResolve_KubernetesSecretMount_Accepted(t *testing.T) {
	for _, mode := range []os.FileMode{0o400, 0o440, 0o600, 0o640} {
		link, real := k8sMount(t, "key.json", mode)
		got, err := Resolve(link)
		require.NoError(t, err)
		require.Equal(t, real, got)
		require.NoError(t, check(link), "%#o", mode)
	}
	link, _ := k8sMount(t, "key.json", 0o400)
	vol := filepath.Dir(link)
	next := filepath.Join(vol, "..2026_02_02_00_00_00.1")
	require.NoError(t, os.Mkdir(next, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(next, "key.json"), []byte("rotated"), 0o400))
	require.NoError(t, os.Remove(filepath.Join(vol, "..data")))
	require.NoError(t, os.Symlink(filepath.Base(next), filepath.Join(vol, "..data")))
	got, err := Resolve(link)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(next, "key.json"), got)
}

// What could let another user read or swap the secret is refused, naming
// the path at fault: a loose file at the end of the chain (a symlink to a
// loose file stays refused), a directory on the way writable by group or
// others without the sticky bit, a loop.
func TestResolve_UnsafeChains_Refused(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode os.FileMode
		want string
	}{
		{"world-readable file", 0o644, "readable by others"},
		{"world-readable 0604", 0o604, "readable by others"},
		{"group-writable file", 0o660, "writable by group or others"},
		{"world-writable file", 0o602, "writable by group or others"},
	} {
		link, _ := k8sMount(t, "key.json", tc.mode)
		err := check(link)
		require.ErrorIs(t, err, ErrUnsafePath, tc.name)
		require.ErrorContains(t, err, tc.want, tc.name)
	}

	// A plain symlink to a loose file elsewhere.
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose.json")
	require.NoError(t, os.WriteFile(loose, []byte("x"), 0o600))
	require.NoError(t, os.Chmod(loose, 0o644))
	require.NoError(t, os.Symlink(loose, filepath.Join(dir, "link.json")))
	require.ErrorContains(t, check(filepath.Join(dir, "link.json")), "readable by others")

	// A group-writable directory on the way: the timestamped one, or the
	// one holding the link when it has no sticky bit.
	link, real := k8sMount(t, "key.json", 0o400)
	require.NoError(t, os.Chmod(filepath.Dir(real), 0o775))
	err := check(link)
	require.ErrorIs(t, err, ErrUnsafePath)
	require.ErrorContains(t, err, "directory "+filepath.Dir(real)+" has mode 0775")
	link, _ = k8sMount(t, "key.json", 0o400)
	require.NoError(t, os.Chmod(filepath.Dir(link), 0o777))
	require.ErrorContains(t, check(link), "has mode 0777: writable by group or others")

	// A loop.
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	require.NoError(t, os.Symlink(b, a))
	require.NoError(t, os.Symlink(a, b))
	require.ErrorContains(t, check(a), "more than 40 symlinks")

	// The end of the chain is a directory.
	require.NoError(t, os.Symlink(dir, filepath.Join(dir, "d")))
	require.ErrorContains(t, check(filepath.Join(dir, "d")), "not a regular file")
}

// Owners: a directory on the way, the file, or a link in the sticky volume
// root owned by another uid is refused (chown needs root).
func TestResolve_ForeignOwners_Refused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another uid needs root")
	}
	link, _ := k8sMount(t, "key.json", 0o400)
	require.NoError(t, os.Lchown(filepath.Join(filepath.Dir(link), "..data"), 65534, -1))

	require.ErrorContains(t, check(link), "owned by uid 65534 in a directory anyone may write")

	link, real := k8sMount(t, "key.json", 0o400)
	require.NoError(t, os.Chown(filepath.Dir(real), 65534, -1))
	require.ErrorContains(t, check(link), "is owned by uid 65534 in a directory anyone may write", "caught as an entry of the sticky root")
	require.NoError(t, os.Chmod(filepath.Dir(link), 0o755)) // no sticky root: the directory's own check
	require.ErrorContains(t, check(link), "directory "+filepath.Dir(real)+" is owned by uid 65534")

	link, real = k8sMount(t, "key.json", 0o400)
	require.NoError(t, os.Chown(real, 65534, -1))
	err := check(link)
	require.ErrorContains(t, err, "is owned by uid 65534; want root or the relay's uid")
	require.True(t, errors.Is(err, ErrUnsafePath))
}
