//go:build unix

package fileowner

import (
	"io/fs"
	"os"
	"syscall"
)

// Foreign reports whether fi is owned by another uid than the process's
// effective uid, with both uids for the refusal's message.
func Foreign(fi fs.FileInfo) (owner uint32, euid int, foreign bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	euid = os.Geteuid()
	return st.Uid, euid, int(st.Uid) != euid
}
