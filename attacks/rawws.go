package attacks

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
)

// rawWS is a hand-driven WebSocket client for what a well-behaved library
// will not do: send a frame header and then its payload a byte at a time.
type rawWS struct {
	c  net.Conn
	br *bufio.Reader
}

// frameHeader is a masked client frame header (RFC 6455 §5.2):
//
//	byte 0: FIN(1) RSV(3) opcode(4)
//	byte 1: MASK(1) payload len(7)   126 -> 16-bit length follows
//	then:   [2-byte length] 4-byte masking key
func frameHeader(opcode byte, n int, key [4]byte) []byte {
	b := []byte{0x80 | opcode}
	if n < 126 {
		b = append(b, 0x80|byte(n))
	} else {
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	}
	return append(b, key[:]...)
}

func maskKey() [4]byte {
	var k [4]byte
	_, _ = rand.Read(k[:])
	return k
}

// writeMessage sends one whole text message.
func (w *rawWS) writeMessage(p []byte) error {
	k := maskKey()
	out := frameHeader(0x1, len(p), k)
	for i, c := range p {
		out = append(out, c^k[i%4])
	}
	_, err := w.c.Write(out)
	return err
}

// readCloseFrame reads server frames until a close frame (returning its
// status code) or an error (-1).
func (w *rawWS) readCloseFrame() int {
	for {
		var h [2]byte
		if _, err := io.ReadFull(w.br, h[:]); err != nil {
			return -1
		}
		n := int(h[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			if _, err := io.ReadFull(w.br, l[:]); err != nil {
				return -1
			}
			n = int(binary.BigEndian.Uint16(l[:]))
		case 127:
			var l [8]byte
			if _, err := io.ReadFull(w.br, l[:]); err != nil {
				return -1
			}
			n = int(binary.BigEndian.Uint64(l[:]) & (1<<31 - 1))
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(w.br, payload); err != nil {
			return -1
		}
		if h[0]&0x0f == 0x8 {
			if len(payload) < 2 {
				return 1005
			}
			return int(binary.BigEndian.Uint16(payload))
		}
	}
}
