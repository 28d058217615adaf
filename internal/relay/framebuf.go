package relay

import (
	"math/bits"
	"sync"
)

// Frame buffers hold the copies of frames queued for phones, and the
// messages being read (msgReader). They come in size classes, one pool
// each: 16 to 64 bytes in steps of 16, then eight steps per doubling up to
// 16 MiB, so a queued frame's buffer is at most an eighth (or 16 bytes)
// larger than the frame, as Go's own allocator would have made it: the
// byte caps, which charge a frame its length (outItem.cost), still bound
// the memory queued frames hold, however large the buffers earlier traffic
// left in the pools. Steady traffic so allocates no frame buffers, up to
// the largest --max-message-bytes a relay is likely to be given (the
// harness runs 1 MiB; beyond 16 MiB a buffer is made to measure and left
// to the garbage collector).
//
// What the pools hold is at most what was in use at once (the queues'
// caps and one read buffer per reading connection bound that), and a
// pool drops what it holds across two garbage collections: after a burst
// of huge frames their buffers stay one collection longer than garbage
// would, whatever their size, which is why pooling them costs no bound.
const (
	maxSmallFrameClass = 64
	maxFrameClass      = 16 << 20
	frameClasses       = 4 + 8*(24-6)
)

var frameBuffers [frameClasses]sync.Pool

func init() {
	for i := range frameBuffers {
		size := frameClassSize(i)
		frameBuffers[i].New = func() any { b := make([]byte, 0, size); return &b }
	}
}

// frameClass is the index of the smallest class holding n bytes (-1 for
// n > maxFrameClass).
func frameClass(n int) int {
	if n <= maxSmallFrameClass {
		return max(n-1, 0) / 16
	}
	if n > maxFrameClass {
		return -1
	}
	k := bits.Len(uint(n-1)) - 1 // 2^k < n <= 2^(k+1), k >= 6
	step := 1 << (k - 3)
	j := (n - 1<<k + step - 1) / step // 1..8
	return 4 + (k-6)*8 + j - 1
}

// frameClassSize is class i's capacity.
func frameClassSize(i int) int {
	if i < 4 {
		return 16 * (i + 1)
	}
	k, j := (i-4)/8+6, (i-4)%8+1
	return 1<<k + j<<(k-3)
}

// getFrameBuffer returns an empty buffer with room for n bytes: pooled up
// to maxFrameClass, made to measure beyond.
func getFrameBuffer(n int) *[]byte {
	i := frameClass(n)
	if i < 0 {
		b := make([]byte, 0, n)
		return &b
	}
	return frameBuffers[i].Get().(*[]byte)
}

// putFrameBuffer returns a buffer from getFrameBuffer for reuse.
func putFrameBuffer(b *[]byte) {
	c := cap(*b)
	if i := frameClass(c); i >= 0 && frameClassSize(i) == c {
		*b = (*b)[:0]
		frameBuffers[i].Put(b)
	}
}
