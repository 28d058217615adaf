package relay

import (
	"slices"
	"strings"
	"testing"
	"testing/cryptotest"
)

// TestNewConnID_ComesFromCryptoRand is the white-box half of TM-ROUTE-3:
// no black-box statistic can tell conn_ids drawn from crypto/rand from a
// hashed counter or a seeded math/rand, but crypto/rand made deterministic
// (cryptotest.SetGlobalRandom) can. The same seed must give the same
// conn_ids, so nothing but crypto/rand feeds them (a counter or any other
// source differs between the two runs); another seed must give others.
func TestNewConnID_ComesFromCryptoRand(t *testing.T) {
	mint := func(seed uint64) (ids []string) {
		t.Run("", func(t *testing.T) {
			cryptotest.SetGlobalRandom(t, seed)
			for range 4 {
				ids = append(ids, newConnID())
			}
		})
		return ids
	}
	a, again, other := mint(1), mint(1), mint(2)
	for _, id := range a {
		if !strings.HasPrefix(id, connIDPrefix) || len(id) != len(connIDPrefix)+16 {
			t.Fatalf("conn_id %q: want %s + 16 hex digits", id, connIDPrefix)
		}
	}
	if !slices.Equal(a, again) {
		t.Fatalf("the same crypto/rand seed gave different conn_ids %v and %v: something besides crypto/rand feeds newConnID", a, again)
	}
	if slices.Equal(a, other) {
		t.Fatalf("two crypto/rand seeds gave the same conn_ids %v: crypto/rand does not feed newConnID", a)
	}
}
