package cluster_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// TestCluster_ReplicatedClaims_SurviveNATSNodeLoss: a 3-node JetStream
// cluster (routes on loopback), relays with --cluster-replicas 3. The node
// leading the claims stream is killed: a claim made before is still owned
// (a conflicting binary elsewhere gets 4409 and the owner's binary stays),
// a new claim works, and frames flow across instances. With one replica the
// stream lives on one node only, and killing it leaves the cluster without
// a claims bucket: new claims are refused 1013 until it returns.
func TestCluster_ReplicatedClaims_SurviveNATSNodeLoss(t *testing.T) {
	t.Parallel()
	start := time.Now()
	nodes := map[string]*natstest.Server{}
	var urls, routes []string
	var routePorts []int
	for i := 0; i < 3; i++ {
		p, err := natstest.FreePort()
		require.NoError(t, err)
		routePorts = append(routePorts, p)
		routes = append(routes, natstest.RouteURL(p))
	}
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("n%d", i+1)
		ns, err := natstest.StartConfig(natstest.Config{Dir: t.TempDir(), ClusterName: "js", ServerName: name,
			RoutePort: routePorts[i], Routes: routes})
		require.NoError(t, err)
		t.Cleanup(ns.Stop)
		nodes[name] = ns
		urls = append(urls, ns.URL())
	}
	all := strings.Join(urls, ",")
	// JetStream answers once the nodes have elected a meta leader.
	nc, err := nats.Connect(all, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.True(t, pollUntil(30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err == nil
	}), "JetStream cluster ready")
	t.Logf("3-node JetStream cluster ready after %v", time.Since(start).Round(time.Millisecond))

	e := envOn(t, nodes["n1"])
	for _, id := range []string{"a", "b", "c"} {
		// A lease longer than a stream leader election, so that the
		// election cannot expire the claims on its own.
		e.start(id, "--cluster-nats", all, "--cluster-replicas", "3", "--cluster-lease", "6s")
	}
	t.Logf("relays started after %v", time.Since(start).Round(time.Millisecond))
	a, b, c := e.relays[0], e.relays[1], e.relays[2]
	before := newID("r3")
	binA := binaryAt(t, a, before)
	p := phoneAt(t, b, before)
	roundTrip(t, binA, p, hello(t, binA, p))

	t.Logf("relays started, first pair round trip after %v", time.Since(start).Round(time.Millisecond))
	leader := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s, err := js.Stream(ctx, "KV_relay-claims")
		if err != nil {
			return ""
		}
		info := s.CachedInfo()
		if info.Cluster == nil {
			return ""
		}
		require.Equal(t, 3, info.Config.Replicas, "the claims bucket is replicated 3 times")
		return info.Cluster.Leader
	}
	var old string
	require.True(t, pollUntil(10*time.Second, func() bool { old = leader(); return old != "" }))
	nodes[old].Stop()
	killed := time.Now()

	// A new claim works (retrying while relays reconnect: 1013 is "try
	// again"), and frames flow across instances.
	after := newID("r3")
	var binC *conn
	require.True(t, pollUntil(15*time.Second, func() bool {
		bc, code := tryBinary(t, c, after, 300*time.Millisecond)
		if code != 0 && code != 1013 {
			t.Fatalf("new claim after the node loss: close %d", code)
		}
		binC = bc
		return bc != nil
	}), "a new claim after the node loss")
	t.Logf("claims stream leader %s killed; a new claim held %v later (new leader %s)", old, time.Since(killed).Round(time.Millisecond), leader())
	pa := phoneAt(t, a, after)
	roundTrip(t, binC, pa, hello(t, binC, pa))

	// The claim made before is still a's: a binary for it on b is refused
	// 4409 (its owner's binary is live), and a's binary is still open.
	_, code := tryBinary(t, b, before, 300*time.Millisecond)
	require.Equal(t, 4409, int(code), "a conflicting claim for the server-id claimed before the node loss")
	require.True(t, binA.isOpen(0), "the owner's binary kept its slot")
	// The first phone may have been closed 1011 if its home or owner was
	// connected to the killed node (frames in flight could be lost): its
	// close notice may come first.
	pb := phoneAt(t, c, before)
	pb.send(t, map[string]any{"hello": true})
	var id string
	for id == "" {
		env := binA.nextEnvelope(t, 5*time.Second)
		if env.CloseCode == 0 {
			require.JSONEq(t, `{"hello":true}`, string(env.Frame))
			id = env.ConnID
		}
	}
	roundTrip(t, binA, pb, id)
	t.Logf("3-node JetStream, replicas 3, leader killed: whole test %v", time.Since(start).Round(time.Millisecond))
}
