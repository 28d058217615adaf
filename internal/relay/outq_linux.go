package relay

import (
	"net"
	"syscall"
	"unsafe"
)

// unsentBytes returns the bytes in c's kernel send queue that the peer has
// not acknowledged yet (SIOCOUTQ), and whether it could tell.
func unsentBytes(c *net.TCPConn) (int64, bool) {
	if c == nil {
		return 0, false
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	var n int32
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&n)))
	}); err != nil || errno != 0 {
		return 0, false
	}
	return int64(n), true
}
