package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/attacks"
	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// TestCluster_NATSMaxPayloadBelowMessageCap_RefusesToStart: a NATS that
// accepts 128 KiB messages cannot carry the default 256 KiB frames between
// instances, so the relay refuses to start (exit 2) naming both numbers,
// instead of closing every phone that sends a large frame 1011; with
// --max-message-bytes below the server's bound it starts.
func TestCluster_NATSMaxPayloadBelowMessageCap_RefusesToStart(t *testing.T) {
	t.Parallel()
	ns, err := natstest.StartConfig(natstest.Config{Dir: t.TempDir(), MaxPayload: 128 << 10})
	require.NoError(t, err)
	t.Cleanup(ns.Stop)
	refusedStartSaying(t, []string{"NATS max_payload is smaller than a cross-instance frame can be", "NATS accepts 131072 bytes"},
		"--cluster-nats", ns.URL())

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := attacks.StartProcess(ctx, relayBin, "serve", "--insecure-listen", "127.0.0.1:0",
		"--cluster-nats", ns.URL(), "--cluster-lease", lease.String(), "--max-message-bytes", "65536")
	require.NoError(t, err, "a cap below the server's bound starts")
	p.Kill()
}
