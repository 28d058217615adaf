package metrics

import (
	"runtime"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/buildinfo"
)

// relay_build_info is exported once, value 1, labelled with this build's
// version and toolchain.
func TestBuildInfoGauge(t *testing.T) {
	m := New()
	mfs, err := m.reg.Gather()
	require.NoError(t, err)
	var found *dto.MetricFamily
	for _, mf := range mfs {
		if mf.GetName() == "relay_build_info" {
			found = mf
		}
	}
	require.NotNil(t, found, "relay_build_info not exported")
	require.Len(t, found.Metric, 1)
	labels := map[string]string{}
	for _, l := range found.Metric[0].Label {
		labels[l.GetName()] = l.GetValue()
	}
	require.Equal(t, map[string]string{"version": buildinfo.Get().Version, "goversion": runtime.Version()}, labels)
	require.Equal(t, 1.0, found.Metric[0].GetGauge().GetValue())
}
