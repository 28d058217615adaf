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
	ns, err := natstest.StartConfig(natstest.Config{Dir: t.TempDir(), MaxPayload: 128 << 10})
	require.NoError(t, err)
	t.Cleanup(ns.Stop)
	_, err = build()
	require.NoError(t, err)
	start := func(extra ...string) (*attacks.Process, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return attacks.StartProcess(ctx, relayBin, append([]string{"serve", "--insecure-listen", "127.0.0.1:0",
			"--cluster-nats", ns.URL(), "--cluster-lease", lease.String()}, extra...)...)
	}
	p, err := start()
	if err == nil {
		p.Kill()
		t.Fatalf("relay started against a NATS max_payload below --max-message-bytes:\n%s", tailLines(p.LogText(), 20))
	}
	require.Equal(t, 2, p.ExitCode(), "exit code (2 = refused to start):\n%s", p.LogText())
	require.Contains(t, p.LogText(), "NATS max_payload is smaller than a cross-instance frame can be")
	require.Contains(t, p.LogText(), "NATS accepts 131072 bytes")

	p, err = start("--max-message-bytes", "65536")
	require.NoError(t, err, "a cap below the server's bound starts")
	p.Kill()
}
