//go:build !unix

package fileowner

import "io/fs"

// Foreign is false where file ownership is not a uid (Windows ACLs are not
// inspected); the relay's supported targets are unix, and the mode check
// still runs.
func Foreign(fs.FileInfo) (owner uint32, euid int, foreign bool) { return 0, 0, false }
