package attacks

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// remoteTimers are the tuned timers of the relays below, told to relay
// attack as an operator would (the deployed defaults would make the run
// take minutes); the first eight are a single relay's, the last two the
// cluster's. Ping and pong are long enough against the probe for
// ATK-DEAD-PEER to tell the two apart (it runs its takeover half only
// then).
var remoteTimers = []string{"--ping-interval", "2s", "--pong-timeout", "2s", "--probe-timeout", "1s", "--write-timeout", "1s", "--cluster-lease", "1500ms"}

// startClusterInstance starts one relay of cluster name on the test's NATS
// with the remoteTimers, as a deployment's instance: the test reaches it
// only as `relay attack` would.
func startClusterInstance(t *testing.T, l *Local, name, id string) *Process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"--cluster-nats", natsURL(), "--cluster-name", name, "--instance-id", id, "--upgrade-burst", "200"}, remoteTimers...)
	p, err := l.Start(ctx, args...)
	if err != nil {
		if p != nil {
			t.Fatalf("start %s: %v\n%s", id, err, p.LogText())
		}
		t.Fatalf("start %s: %v", id, err)
	}
	t.Cleanup(func() { p.Stop() })
	return p
}

// TestAttackCommand_RemoteTimers runs the scenarios made remote-safe for
// issue 23 through their remote paths (no local handles) against a plain
// relay with tuned timers, told to relay attack as an operator would.
func TestAttackCommand_RemoteTimers(t *testing.T) {
	t.Parallel()
	require.NoError(t, buildErr, "building the relay")
	l := &Local{Binary: builtBinary, TempDir: t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := l.Start(ctx, append([]string{"--upgrade-burst", "200"}, remoteTimers[:8]...)...)
	require.NoError(t, err)
	t.Cleanup(func() { p.Stop() })
	var out, errOut bytes.Buffer
	args := append([]string{"--target", p.URL.String(), "--only", "ATK-TOKEN-FORWARD,ATK-DEAD-PEER,ATK-SLOW-BINARY", "--json", "--timeout", "4m"}, remoteTimers[:8]...)
	code := Main(args, &out, &errOut)
	var reps []jsonReport
	require.NoError(t, json.Unmarshal(out.Bytes(), &reps), "stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	for _, r := range reps {
		t.Logf("%s %s: %s", r.ID, r.Verdict, r.Evidence)
		require.NotContains(t, r.Evidence, "takeover half not run")
	}
	require.Equal(t, ExitPassed, code, "%s\nrelay log:\n%s", errOut.String(), tail(p.LogText(), 2000))
	require.Len(t, reps, 3)
}

// TestAttackCommand_PeerTarget runs `relay attack` remotely (no local
// handles) against two instances of a local cluster on a real NATS, with
// --peer-target: the cross-instance scenario and the scenarios made
// remote-safe for issue 23 all pass through their remote paths. Then the
// peer is replaced by a relay of another cluster (it cannot route to the
// target's binaries): reported as a finding, exit 1. A peer that is down
// could not run, exit 3.
func TestAttackCommand_PeerTarget(t *testing.T) {
	t.Parallel()
	require.NoError(t, buildErr, "building the relay")
	require.NotEmpty(t, natsURL(), "a NATS server for the cluster")
	l := &Local{Binary: builtBinary, TempDir: t.TempDir()}
	name := "peer" + randHex(4)
	a := startClusterInstance(t, l, name, name+"-a")
	b := startClusterInstance(t, l, name, name+"-b")

	only := "ATK-CLUSTER-CROSS-TENANT,ATK-TOKEN-FORWARD,ATK-DEAD-PEER,ATK-SLOW-BINARY"
	run := func(peer string) (int, []jsonReport, string) {
		var out, errOut bytes.Buffer
		args := append([]string{"--target", a.URL.String(), "--peer-target", peer, "--only", only, "--json", "--timeout", "4m"}, remoteTimers...)
		code := Main(args, &out, &errOut)
		var reps []jsonReport
		require.NoError(t, json.Unmarshal(out.Bytes(), &reps), "stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
		return code, reps, errOut.String()
	}
	code, reps, stderr := run(b.URL.String())
	for _, r := range reps {
		t.Logf("%s %s: %s", r.ID, r.Verdict, r.Evidence)
	}
	require.Equal(t, ExitPassed, code, "%s\nlog a:\n%s\nlog b:\n%s", stderr, tail(a.LogText(), 2000), tail(b.LogText(), 2000))
	require.Len(t, reps, 4)
	for _, r := range reps {
		require.Equal(t, Pass, r.Verdict, "%s: %s", r.ID, r.Evidence)
		if r.ID == "ATK-CLUSTER-CROSS-TENANT" {
			require.Contains(t, r.Evidence, "--target and --peer-target", "the cross-instance scenario ran its remote path")
		}
	}

	// A broken peer: an instance of another cluster, so phones on it never
	// reach the target's binaries.
	other := startClusterInstance(t, l, name+"x", name+"x-a")
	only = "ATK-CLUSTER-CROSS-TENANT"
	code, reps, stderr = run(other.URL.String())
	require.Equal(t, ExitFinding, code, stderr)
	require.Len(t, reps, 1)
	require.Equal(t, Fail, reps[0].Verdict)
	require.Contains(t, reps[0].Evidence, "a phone on the peer instance could not reach its binary on --target")
	t.Logf("broken peer reported: %s", reps[0].Evidence)

	// A peer that is down: could not run.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	down := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close())
	code, reps, _ = run(down)
	require.Equal(t, ExitCouldNotRun, code)
	require.Equal(t, CouldNotRun, reps[0].Verdict)
	require.True(t, strings.Contains(reps[0].Evidence, "peer instance (--peer-target)"), reps[0].Evidence)
}

// TestAttackCommand_NoPeerSkipsCrossInstance: without --peer-target the
// cross-instance scenario says what it needs and skips; the run passes.
func TestAttackCommand_NoPeerSkipsCrossInstance(t *testing.T) {
	t.Parallel()
	target := localTarget(t)
	var out, errOut bytes.Buffer
	require.Equal(t, ExitPassed, Main([]string{"--target", target.Base.String(), "--only", "ATK-CLUSTER-CROSS-TENANT", "--json"}, &out, &errOut), errOut.String())
	var reps []jsonReport
	require.NoError(t, json.Unmarshal(out.Bytes(), &reps))
	require.Equal(t, Skip, reps[0].Verdict)
	require.Contains(t, reps[0].Evidence, "--peer-target")

	require.Equal(t, ExitUsage, Main([]string{"--target", target.Base.String(), "--peer-target", target.Base.String()}, &out, &errOut))
}
