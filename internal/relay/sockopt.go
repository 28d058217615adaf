package relay

import "net"

// limitSendBuffer sets SO_SNDBUF on the TCP socket under c (unwrapping TLS
// and PROXY-protocol connections). Bytes a stalled peer has not read sit in
// the kernel's send buffer, which Linux otherwise auto-tunes up to 4 MiB per
// socket, outside --phone-queue-bytes and --max-queued-bytes; a fixed buffer
// makes those caps (plus n per socket) the whole memory bound. Setting it
// also turns auto-tuning off for the socket. n <= 0 leaves the OS default.
func limitSendBuffer(c net.Conn, n int) {
	if n <= 0 {
		return
	}
	if tc := tcpConn(c); tc != nil {
		_ = tc.SetWriteBuffer(n)
	}
}

// tcpConn returns the TCP socket under c (unwrapping TLS and PROXY-protocol
// connections), or nil.
func tcpConn(c net.Conn) *net.TCPConn {
	for range 4 { // a relay socket is wrapped at most twice (PROXY, TLS)
		switch v := c.(type) {
		case *net.TCPConn:
			return v
		case interface{ NetConn() net.Conn }: // *tls.Conn
			c = v.NetConn()
		case interface{ Raw() net.Conn }: // *proxyproto.Conn
			c = v.Raw()
		default:
			return nil
		}
	}
	return nil
}
