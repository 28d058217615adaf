package cluster

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/relay"
)

// TestLinkPayload_BoundsTheLargestLinkMessage: a link message with the
// longest server-id, a conn_id, a token of maxToken bytes and a frame of
// maxMessage bytes, with the largest seq and code, fits LinkPayload.
func TestLinkPayload_BoundsTheLargestLinkMessage(t *testing.T) {
	const maxMessage, maxToken = 256 << 10, 16 << 10
	m := relay.LinkMessage{Kind: relay.LinkUp, ServerID: strings.Repeat("s", 128), ConnID: strings.Repeat("c", 64),
		Seq: ^uint64(0), Code: 4999, Notify: true, Token: strings.Repeat("t", maxToken), Frame: make([]byte, maxMessage)}
	require.LessOrEqual(t, int64(len(encodeLink(nil, m))), LinkPayload(maxMessage, maxToken))
	m.Token = ""
	require.LessOrEqual(t, int64(len(encodeLink(nil, m))), LinkPayload(maxMessage, 0))
}
