package relay

import (
	"crypto/rand"
	"encoding/hex"
)

// connIDPrefix + 16 hex digits: 64 bits from crypto/rand, so a binary (or
// anyone else) cannot guess another phone's conn_id.
const connIDPrefix = "client-"

// newConnID mints a phone's conn_id. Uniqueness within a server-id is
// checked by the registry, which retries on the (2^-64) collision.
func newConnID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never returns an error (Go 1.24+).
	return connIDPrefix + hex.EncodeToString(b[:])
}
