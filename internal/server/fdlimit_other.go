//go:build !unix

package server

// fdLimit is unknown where there is no RLIMIT_NOFILE.
func fdLimit() (uint64, bool) { return 0, false }
