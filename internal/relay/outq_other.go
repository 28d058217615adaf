//go:build !linux

package relay

import "net"

// unsentBytes cannot tell here: liveness then counts bytes the kernel took.
func unsentBytes(*net.TCPConn) (int64, bool) { return 0, false }

// canCountAcked: ackedBytes cannot tell here, so writes go down in
// progressChunk pieces and a piece taken is the progress.
const canCountAcked = false

func ackedBytes(*net.TCPConn) (int64, bool) { return 0, false }
