//go:build !unix

package attacks

import "syscall"

func smallBufs(network, address string, c syscall.RawConn) error { return nil }
