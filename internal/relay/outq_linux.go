package relay

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
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

// canCountAcked: ackedBytes can tell (on a TCP socket).
const canCountAcked = true

// ackedBytes returns how many bytes the peer's TCP has acknowledged on c
// since the connection began (TCP_INFO's tcpi_bytes_acked, Linux 4.1+),
// and whether it could tell. Unlike the send queue's length this only
// grows, whatever a write in flight hands the kernel meanwhile, and under
// TLS it counts the records as sent. It costs a system call and garbage:
// only the write watch calls it, while a write is in flight.
func ackedBytes(c *net.TCPConn) (int64, bool) {
	if c == nil {
		return 0, false
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || gerr != nil {
		return 0, false
	}
	return int64(info.Bytes_acked), true
}
