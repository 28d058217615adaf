package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/attacks"
	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// TestClusterFigures measures cluster mode against its own baseline in one
// run: the round trip phone -> relay -> binary -> relay -> phone with the
// phone on the binary's instance (same-instance) and on another instance
// (cross-instance, through NATS), interleaved so load hits both alike; and
// one phone's one-way throughput to its binary, both ways of placing it.
// Not part of `make test` (it is a measurement): `make cluster-figures`.
// The relays are a normal (non-race) build; NATS is embedded in this test.
func TestClusterFigures(t *testing.T) {
	if os.Getenv("RELAY_CLUSTER_FIGURES") == "" {
		t.Skip("set RELAY_CLUSTER_FIGURES=1 (make cluster-figures)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "relay")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/relay")
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	ns, err := natstest.Start(t.TempDir(), 0)
	require.NoError(t, err)
	defer ns.Stop()
	var ins []*instance
	for i := 0; i < 2; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		p, err := attacks.StartProcess(ctx, bin, "serve", "--insecure-listen", "127.0.0.1:0", "--cluster-nats", ns.URL(),
			"--instance-id", fmt.Sprintf("f%d", i), "--log-level", "info", "--upgrade-burst", "100")
		cancel()
		require.NoError(t, err)
		defer p.Stop()
		ins = append(ins, &instance{id: fmt.Sprintf("f%d", i), proc: p, ws: "ws://" + p.Addr})
	}
	sid := newID("fig")
	b := binaryAt(t, ins[0], sid)
	same, cross := phoneAt(t, ins[0], sid), phoneAt(t, ins[1], sid)
	hello(t, b, same)
	hello(t, b, cross)
	// The binary echoes every frame to the phone that sent it.
	echoing := make(chan struct{})
	go func() {
		for {
			select {
			case <-echoing:
				return
			default:
			}
			m, err := b.next(time.Second)
			if err != nil {
				continue
			}
			var e envelope
			if json.Unmarshal(m, &e) == nil && e.Frame != nil {
				_ = b.trySend(map[string]any{"conn_id": e.ConnID, "frame": e.Frame})
			}
		}
	}()
	const rounds = 2000
	var rttSame, rttCross []time.Duration
	for i := 0; i < rounds; i++ {
		for _, c := range []struct {
			p   *conn
			out *[]time.Duration
		}{{same, &rttSame}, {cross, &rttCross}} {
			start := time.Now()
			require.NoError(t, c.p.trySend(map[string]any{"i": i}))
			_, err := c.p.next(5 * time.Second)
			require.NoError(t, err)
			*c.out = append(*c.out, time.Since(start))
		}
	}
	close(echoing)
	time.Sleep(1100 * time.Millisecond) // the echo loop's last read times out

	pad := strings.Repeat("x", 200)
	const frames = 20000
	throughput := func(p *conn) float64 {
		start := time.Now()
		go func() {
			for i := 0; i < frames; i++ {
				if p.trySend(map[string]any{"i": i, "pad": pad}) != nil {
					return
				}
			}
		}()
		for got := 0; got < frames; got++ {
			_, err := b.next(10 * time.Second)
			require.NoError(t, err, "after %d frames", got)
		}
		return frames / time.Since(start).Seconds()
	}
	tSame := throughput(same)
	tCross := throughput(cross)

	pct := func(d []time.Duration, q float64) time.Duration {
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[int(q*float64(len(s)-1))]
	}
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) }
	t.Logf("round trip, %d each, interleaved: same-instance p50 %v p99 %v; cross-instance p50 %v p99 %v; ratio p50 %.2fx p99 %.2fx",
		rounds, pct(rttSame, .5), pct(rttSame, .99), pct(rttCross, .5), pct(rttCross, .99),
		us(pct(rttCross, .5))/us(pct(rttSame, .5)), us(pct(rttCross, .99))/us(pct(rttSame, .99)))
	t.Logf("one phone -> binary, %d frames of ~220 B: same-instance %.0f frames/s, cross-instance %.0f frames/s (%.2fx)",
		frames, tSame, tCross, tCross/tSame)
}
