package cluster_test

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/cluster"
)

// status is the status of GET url ("" body on error: -1).
func status(url string) int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return -1
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// An instance cut off from NATS can only answer 1013 to a new claim or a
// remote join: /readyz and /healthz answer 503 until NATS is back, so a
// balancer sends phones elsewhere (issue 21, defect 4: /healthz answered
// ok with all of NATS down). /livez keeps answering: the process is fine.
func TestCluster_ReadyzAndHealthzFollowNATS(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1)
	base := "http://" + e.relays[0].proc.Addr
	require.True(t, pollUntil(10*time.Second, func() bool { return status(base+"/readyz") == 200 }), "never ready with NATS up")
	require.Equal(t, 200, status(base+"/healthz"))

	e.nats.Stop()
	require.True(t, pollUntil(10*time.Second, func() bool { return status(base+"/readyz") == 503 }), "/readyz still 200 with NATS down")
	require.Equal(t, 503, status(base+"/healthz"), "/healthz with NATS down")
	require.Equal(t, 200, status(base+"/livez"), "/livez with NATS down")

	require.NoError(t, e.nats.Restart())
	require.True(t, pollUntil(15*time.Second, func() bool { return status(base+"/readyz") == 200 }), "not ready again after NATS came back")
	require.Equal(t, 200, status(base+"/healthz"))
}

// The claims bucket exists as soon as an instance has started, before any
// claim: created on first use, a fresh cluster's first claim paid for the
// stream's creation while a phone joining it was told 4404 (issue 21, 9f).
func TestCluster_ClaimsBucketCreatedAtStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1)
	nc, err := nats.Connect(e.nats.URL())
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, cluster.DefaultName+"-claims")
	require.NoError(t, err, "no claims bucket after start, before any claim")
	keys, err := kv.ListKeys(ctx)
	require.NoError(t, err)
	var held []string
	for k := range keys.Keys() {
		held = append(held, k)
	}
	// Only the instance's session key (session.go): no claim yet.
	require.Equal(t, []string{"i." + e.relays[0].id}, held, "the bucket holds no claim yet")
}
