package cluster

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDocs_PermissionsRecipe: docs/cluster.md's permission list for
// relay-a is exactly what InstancePermissions issues (and what
// cmd/relay-nats-auth writes into each user JWT).
func TestDocs_PermissionsRecipe(t *testing.T) {
	b, err := os.ReadFile("../../docs/cluster.md")
	require.NoError(t, err)
	doc := string(b)
	i := strings.Index(doc, "publish allow:\n")
	require.GreaterOrEqual(t, i, 0, "docs/cluster.md has the permissions block")
	block := doc[i:]
	block = block[:strings.Index(block, "```")]
	var pub, sub []string
	cur := &pub
	for _, line := range strings.Split(block, "\n") {
		switch {
		case line == "publish allow:":
			cur = &pub
		case line == "subscribe allow:":
			cur = &sub
		case strings.HasPrefix(line, "  "):
			*cur = append(*cur, strings.TrimSpace(line))
		}
	}
	p := InstancePermissions("relay", "relay-a")
	require.Equal(t, p.Publish, pub)
	require.Equal(t, p.Subscribe, sub)
}
