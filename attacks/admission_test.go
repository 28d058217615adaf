package attacks

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestAttackCommand_PerIPFloodRemote runs ATK-PER-IP-FLOOD's remote branch
// (what `relay attack` does against a deployment) on a relay with the
// default admission limits.
func TestAttackCommand_PerIPFloodRemote(t *testing.T) {
	t.Parallel()
	target := localTarget(t)
	var out, errOut bytes.Buffer
	code := Main([]string{"--target", target.Base.String(), "--only", "ATK-PER-IP-FLOOD", "--json"}, &out, &errOut)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	var reps []jsonReport
	require.NoError(t, json.Unmarshal(out.Bytes(), &reps))
	require.Len(t, reps, 1)
	require.Equal(t, Pass, reps[0].Verdict, reps[0].Evidence)
	require.Contains(t, reps[0].Evidence, "x 429")
}

// TestRunLoad_Small runs the load harness at a small size: the cap is
// filled exactly, the flood is refused and never admitted, and the pair's
// latencies are measured.
func TestRunLoad_Small(t *testing.T) {
	t.Parallel()
	require.NoError(t, buildErr, "building the relay")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := RunLoad(ctx, LoadConfig{Binary: builtBinary, MaxConns: 100, FloodWorkers: 8, FloodAddrs: 200, FloodFor: time.Second, RTTs: 30})
	require.NoError(t, err)
	var buf bytes.Buffer
	require.NoError(t, RenderLoad(&buf, rep))
	t.Log("\n" + buf.String())
	require.Equal(t, 100, rep.Held)
	require.Zero(t, rep.AdmittedOverCap)
	require.Zero(t, rep.FloodErrors)
	require.Greater(t, rep.Refused503, 0)
	require.Positive(t, rep.RefusedPerSec)
	for _, d := range []time.Duration{rep.IdleP50, rep.IdleP99, rep.AtCapP99, rep.FloodP50, rep.FloodP99} {
		require.Positive(t, d)
	}
	require.LessOrEqual(t, rep.IdleP50, rep.IdleP99)
}

func TestRunLoad_RefusesUnboundedConfig(t *testing.T) {
	for _, cfg := range []LoadConfig{
		{},
		{Binary: "relay", MaxConns: 1 << 20},
		{Binary: "relay", PerAddr: 64},
		{Binary: "relay", FloodFor: time.Hour},
	} {
		_, err := RunLoad(context.Background(), cfg)
		require.ErrorIs(t, err, ErrLoadConfig, "%+v", cfg)
	}
}
