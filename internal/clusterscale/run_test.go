package clusterscale

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestMain lets the test binary serve as the model's agent (Config.Exe).
func TestMain(m *testing.M) {
	MaybeAgent()
	os.Exit(m.Run())
}

// TestRun_SmallCell_CountsWhatItClaims runs one small cell end to end and
// checks what the model reports against what must hold whatever the claim
// design: every claim granted, every claim in the bucket, KV writes counted
// by the server and each of them a NATS message, heap measured, every
// redialed server-id of the killed owner granted elsewhere after its
// death and within a few leases.
func TestRun_SmallCell_CountsWhatItClaims(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NATS and two agent processes")
	}
	const lease = time.Second // cluster.MinLease
	rep, err := Run(context.Background(), Config{Instances: []int{2}, ServerIDs: []int{50}, Lease: lease,
		Window: time.Second, Trials: 1, Sample: 3, Latency: 5, Exe: os.Args[0]}, lease)
	require.NoError(t, err)
	require.Len(t, rep.Cells, 1)
	c := rep.Cells[0]
	require.Empty(t, c.Err)
	require.Zero(t, c.ClaimsFailed)
	require.GreaterOrEqual(t, c.BucketKeys, uint64(50), "every claim is in the bucket")
	require.Greater(t, c.BucketBytes, c.BucketKeys*36, "a key holds at least its server-id")
	require.Positive(t, c.KVWrites, "something keeps the claims alive")
	require.GreaterOrEqual(t, c.NATSInPerSec, c.KVWritesPerSec, "every KV write is a message NATS received")
	require.Positive(t, c.HeapPerIDBytes)
	require.Positive(t, c.LatencyP50US)
	require.Zero(t, c.LatencyFailed)
	require.Len(t, c.FailoverMS, 3)
	require.Zero(t, c.FailoverMissed)
	for _, ms := range c.FailoverMS {
		require.Greater(t, ms, 0.0)
		require.Less(t, ms, float64((3*lease + 5*time.Second).Milliseconds()))
	}
}
