package fileowner

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrUnsafePath is wrapped by Resolve's and CheckLinked's refusals: a
// secret reached through symlinks where someone other than root or the
// relay's user could swap a link, a directory or the file, or read it.
var ErrUnsafePath = errors.New("fileowner: unsafe path to a secret")

// maxLinks bounds the symlinks Resolve follows (a loop, or a chain built
// to make the walk slow).
const maxLinks = 40

// Resolve follows the symlinks of path one component at a time, as
// Kubernetes mounts every secret (key -> ..data/key, ..data ->
// ..2026_01_02_03_04_05.678, both links in the volume's directory), and
// returns the file it reaches, with no symlink left in its name. It checks
// every directory the walk takes an entry from (the directory holding path,
// each directory a link leads through, the final file's): owned by root or
// the process's effective uid, and not writable by group or others unless
// it has the sticky bit (a Kubernetes volume's tmpfs root is 1777), in
// which case the entry taken from it must itself be owned by root or that
// uid, since only an entry's owner may replace it there. The directories
// above the one holding path are the operator's choice and not checked.
// Refusals wrap ErrUnsafePath and name the path at fault.
func Resolve(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	dir, rest := filepath.Dir(abs), []string{filepath.Base(abs)}
	links := 0
	for len(rest) > 0 {
		name := rest[0]
		rest = rest[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			dir = filepath.Dir(dir)
			continue
		}
		di, err := os.Stat(dir)
		if err != nil {
			return "", err
		}
		if err := checkDir(dir, di); err != nil {
			return "", err
		}
		entry := filepath.Join(dir, name)
		fi, err := os.Lstat(entry)
		if err != nil {
			return "", err
		}
		if di.Mode()&fs.ModeSticky != 0 && !trustedOwner(fi) {
			owner, _, _ := Foreign(fi)
			return "", fmt.Errorf("%w: %s is owned by uid %d in a directory anyone may write (sticky %s); want root or the relay's uid", ErrUnsafePath, entry, owner, dir)
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if links++; links > maxLinks {
				return "", fmt.Errorf("%w: %s: more than %d symlinks", ErrUnsafePath, path, maxLinks)
			}
			target, err := os.Readlink(entry)
			if err != nil {
				return "", err
			}
			if filepath.IsAbs(target) {
				dir = "/"
			}
			rest = append(strings.Split(filepath.ToSlash(target), "/"), rest...)
		case len(rest) > 0:
			if !fi.IsDir() {
				return "", fmt.Errorf("%w: %s is not a directory", ErrUnsafePath, entry)
			}
			dir = entry
		default:
			return entry, nil
		}
	}
	return dir, nil // path named a directory ("x/.."): the caller's checks refuse it
}

// CheckLinked is the rule for a secret file reached through symlinks
// (Resolve): a regular file, owned by root or the process's effective uid,
// not writable by group or others, and not readable by others. Read by
// its group is allowed: Kubernetes grants a pod's non-root user a secret
// through the pod's fsGroup (mode 0440, group fsGroup, owner root).
func CheckLinked(path string, fi fs.FileInfo) error {
	switch {
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%w: %s is not a regular file", ErrUnsafePath, path)
	case !trustedOwner(fi):
		owner, euid, _ := Foreign(fi)
		return fmt.Errorf("%w: %s is owned by uid %d; want root or the relay's uid %d", ErrUnsafePath, path, owner, euid)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%w: %s has mode %#o: writable by group or others", ErrUnsafePath, path, fi.Mode().Perm())
	case fi.Mode().Perm()&0o004 != 0:
		return fmt.Errorf("%w: %s has mode %#o: readable by others (0400 or 0440 with the pod's fsGroup)", ErrUnsafePath, path, fi.Mode().Perm())
	}
	return nil
}

// checkDir is Resolve's rule for a directory it takes an entry from.
func checkDir(dir string, fi fs.FileInfo) error {
	if !trustedOwner(fi) {
		owner, euid, _ := Foreign(fi)
		return fmt.Errorf("%w: directory %s is owned by uid %d; want root or the relay's uid %d", ErrUnsafePath, dir, owner, euid)
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("%w: directory %s has mode %#o: writable by group or others", ErrUnsafePath, dir, fi.Mode().Perm())
	}
	return nil
}

// trustedOwner: root, or the process's effective uid.
func trustedOwner(fi fs.FileInfo) bool {
	owner, _, foreign := Foreign(fi)
	return !foreign || owner == 0
}
