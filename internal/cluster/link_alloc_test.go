package cluster

import (
	"errors"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/cluster/natstest"
	"github.com/pyrycode/relay/internal/relay"
)

// A cross-instance frame costs a publish on one instance and a delivery on
// the other; the garbage either leaves behind is collected on the relay's
// CPU, frame after frame (docs/cluster.md, Figures). Allocations are
// counted, not timed, so these hold on a busy machine too.

func allocsFrame() relay.LinkMessage {
	return relay.LinkMessage{Kind: relay.LinkUp, ServerID: "srv-0123456789", ConnID: "client-0123456789abcdef", Seq: 7,
		Frame: []byte(`{"i":1,"pad":"` + strings.Repeat("x", 200) + `"}`)}
}

func TestSend_SteadyTrafficAllocatesNothing(t *testing.T) {
	ns, err := natstest.Start(t.TempDir(), 0)
	require.NoError(t, err)
	defer ns.Stop()
	nc, err := nats.Connect(ns.URL())
	require.NoError(t, err)
	defer nc.Close()
	c := &Cluster{nc: nc, publish: nc.Publish, sub: subjects{"relay", "a"}, m: newMetrics(nil)}
	got, err := nc.SubscribeSync(c.sub.to("b", kindLink))
	require.NoError(t, err)
	m := allocsFrame()
	require.NoError(t, c.Send("b", m))
	msg, err := got.NextMsg(5 * time.Second)
	require.NoError(t, err)
	back, err := decodeLink(msg.Data, nil)
	require.NoError(t, err)
	require.Equal(t, m, back, "what Send publishes decodes to what it was given")

	// Send's own allocations, through a publish that copies as nats.go's
	// does and allocates nothing (nats.go's own are counted by the
	// figures, and vary with its flusher's timing): the encode buffer
	// comes from a pool and the subject is built once per peer. Under the
	// race detector the pool drops a quarter of the buffers put back (a
	// new one is two allocations): about 0.5, where a buffer grown from
	// nil per message (the code before) is 4. The embedded NATS server in
	// this process allocates too, now and then: 0.01 is that noise.
	var sent []byte
	c.publish = func(subject string, data []byte) error {
		if subject != "relay.i.b.m.a" {
			return errors.New("wrong subject " + subject)
		}
		sent = append(sent[:0], data...)
		return nil
	}
	allocs := allocsPer(func() { require.NoError(t, c.Send("b", m)) })
	limit := 0.01
	if raceOn {
		limit = 1
	}
	require.LessOrEqual(t, allocs, limit, "allocations per Send")
	require.Equal(t, msg.Data, sent)
}

// allocsPer is f's average heap allocations over many runs (fractional,
// unlike testing.AllocsPerRun's).
func allocsPer(f func()) float64 {
	const runs = 5000
	f()
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	for i := 0; i < runs; i++ {
		f()
	}
	runtime.ReadMemStats(&b)
	return float64(b.Mallocs-a.Mallocs) / runs
}

func TestDecodeLink_SteadyTrafficAllocatesNothing(t *testing.T) {
	b := encodeLink(nil, allocsFrame())
	var ids interner
	m, err := decodeLink(b, &ids)
	require.NoError(t, err)
	require.Equal(t, allocsFrame(), m)
	require.Same(t, &b[len(b)-len(m.Frame)], &m.Frame[0], "the frame aliases the delivered message: no copy")
	allocs := allocsPer(func() { _, _ = decodeLink(b, &ids) })
	limit := 0.01
	require.LessOrEqual(t, allocs, limit, "allocations per decoded link message (server-id and conn_id interned)")
}

func TestInterner_BoundedAndExact(t *testing.T) {
	var in interner
	a := in.str([]byte("abc"))
	require.Equal(t, "abc", a)
	require.Equal(t, "abd", in.str([]byte("abd")))
	for i := 0; i < 3*maxInterned; i++ {
		require.Equal(t, strconv.Itoa(i), in.str([]byte(strconv.Itoa(i))))
		require.LessOrEqual(t, len(in.m), maxInterned)
	}
	require.Equal(t, "x", (*interner)(nil).str([]byte("x")))
}

func TestLinkSubject_CachedPerPeerAndBounded(t *testing.T) {
	c := &Cluster{sub: subjects{"relay", "a"}}
	for i := 0; i < maxLinkSubjects+50; i++ {
		peer := "p" + strconv.Itoa(i)
		require.Equal(t, "relay.i."+peer+".m.a", c.linkSubject(peer))
		require.Equal(t, "relay.i."+peer+".m.a", c.linkSubject(peer))
	}
	require.Len(t, *c.linkSubjects.Load(), maxLinkSubjects)
}
