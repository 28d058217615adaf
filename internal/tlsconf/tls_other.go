//go:build !unix

package tlsconf

import "io/fs"

// checkOwner is a no-op where file ownership is not a uid (Windows ACLs are
// not inspected); the relay's supported targets are unix.
func checkOwner(string, fs.FileInfo) error { return nil }
