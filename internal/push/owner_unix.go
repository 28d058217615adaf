//go:build unix

package push

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// checkOwner refuses a file owned by another uid than the process's
// effective uid: its owner could read or replace the key whatever the mode.
func checkOwner(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if euid := os.Geteuid(); int(st.Uid) != euid {
		return fmt.Errorf("%w: %s is owned by uid %d, not the relay's uid %d", ErrCredentialsInsecure, path, st.Uid, euid)
	}
	return nil
}
