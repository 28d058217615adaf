package relay

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// canCountAcked: ackedBytes can tell (on a TCP socket).
const canCountAcked = true

// ackedBytes returns how many bytes the peer's TCP has acknowledged on c
// since the connection began (TCP_INFO's tcpi_bytes_acked, Linux 4.1+),
// and whether it could tell. Unlike the send queue's length this only
// grows, whatever a write in flight hands the kernel meanwhile, and under
// TLS it counts the records as sent. It costs a system call (and no
// garbage): the write watch calls it while a write is in flight, the
// liveness checks (mark, since) once per check.
func ackedBytes(c *net.TCPConn) (int64, bool) {
	if c == nil {
		return 0, false
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	// getsockopt into a local: unix.GetsockoptTCPInfo allocates the
	// struct, and the liveness checks call this once per ping.
	var info unix.TCPInfo
	size := uint32(unix.SizeofTCPInfo)
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	}); err != nil || errno != 0 {
		return 0, false
	}
	return int64(info.Bytes_acked), true
}
