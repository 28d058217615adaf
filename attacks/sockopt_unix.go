//go:build unix

package attacks

import "syscall"

// smallBufs sets SO_RCVBUF and SO_SNDBUF before connect, so that a client's
// kernel holds little data in flight and the relay's own queues, not the
// attacker's socket buffers, absorb a backlog.
func smallBufs(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		if serr == nil {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096)
		}
	})
	if err != nil {
		return err
	}
	return serr
}
